from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from rtkrun.paths import CONF_DIR

RTKRUN = str(Path(sys.executable).parent / "rtkrun")  # the installed console script


def compose_cfg(command: str, overrides: list[str] | None = None, return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(command, overrides=overrides or [], return_hydra_config=return_hydra_config)


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 300, process: bool = False
) -> subprocess.CompletedProcess:
    """``rtkrun *args``: in this process by default (the same ``cli.main``, without paying the
    torch import again), or as the installed console script with ``process=True`` (for tests of
    the script itself, of signals, or of settings read when a process starts)."""
    if not process:
        return rtkrun_in_process(*args, cwd=cwd, env=env)
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([RTKRUN, *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout)


# Under pytest-xdist (the default: two workers on the 2-core machine) each worker keeps to one
# core, so the two never fight over threads; a serial run (`pytest -n 0`) uses both.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:  # and the rtkrun and torchrun processes the tests start
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(THREADS)
    yield


def _session_dir(tmp_path_factory, name: str) -> Path:
    """A directory shared by the whole session, xdist workers included."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """An RTKRUN_CACHE for the tests that only use the cache: the fixtures' FID reference
    statistics and training SMILES are then computed once per session (writes are atomic, so
    workers may race). Tests of the cache itself keep their own."""
    return _session_dir(tmp_path_factory, "rtkrun_cache")


@pytest.fixture(scope="session")
def real_qm9_table(tmp_path_factory):
    """All 130,831 characterised QM9 molecules from qm9pack, parsed once per test session into
    a private cache (about 11 s). Under pytest-xdist the workers share that cache: the first
    parses it under a lock, the others then read the checked .npz."""
    import fcntl

    from rtkrun.data import qm9

    cache = _session_dir(tmp_path_factory, "qm9_cache")
    with pytest.MonkeyPatch.context() as mp, open(cache / ".lock", "w") as lock:
        mp.setenv("RTKRUN_CACHE", str(cache))
        fcntl.flock(lock, fcntl.LOCK_EX)
        return qm9.load_table(qm9.QM9Config())


def rtkrun_in_process(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``rtkrun *args`` in this process (no torch import to pay): the same ``cli.main`` the
    console script runs, with its exit status, stdout and stderr, run from ``cwd``. Run-directory
    locks the call took are released afterwards, as the end of a process would."""
    import contextlib
    import io

    from rtkrun import cli, runs

    out, err, code = io.StringIO(), io.StringIO(), 0
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    # what a run may change process-wide (trainer.deterministic, seeding), restored afterwards
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    rng = torch.get_rng_state()
    os.environ.update({"HYDRA_FULL_ERROR": "0", **(env or {})})
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        HydraConfig.instance().cfg = None  # as outside Hydra: the next direct call sees no overrides
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
        for key in list(runs._HELD_LOCKS):
            runs.unlock_run_dir(key)
    return subprocess.CompletedProcess(["rtkrun", *args], code, out.getvalue(), err.getvalue())
