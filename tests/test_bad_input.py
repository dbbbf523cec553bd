"""Bad input the other test files do not reach: an unwritable output directory, a checkpoint
from an incompatible rtkrun version, and a sampler that does not fit the model. Each stops
with one line, a non-zero exit and no traceback."""

from __future__ import annotations

import os

import pytest
import torch

from rtkrun import runs
from tests.conftest import run_cli

TINY = ["trainer.max_steps=20", "~evaluation.samplers"]


def _one_line_error(proc, fragment: str) -> None:
    assert proc.returncode != 0
    assert fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.skipif(os.geteuid() == 0 and not os.environ.get("RTKRUN_TEST_AS_ROOT"), reason="root ignores modes")
def test_unwritable_output_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = run_cli("train", *TINY, f"hydra.run.dir={locked / 'run'}", cwd=tmp_path)
        _one_line_error(proc, "choose a writable hydra.run.dir")
    finally:
        locked.chmod(0o700)


def test_read_only_checkpoint_directory_as_root_too(tmp_path):
    """Root ignores permission bits, so make the checkpoint path a directory's name clash:
    writing ``checkpoints/last.pt`` where ``checkpoints`` is a file fails like a full disk."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a directory")
    proc = run_cli("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _one_line_error(proc, "cannot write")
    assert (run_dir / "checkpoints").read_text() == "not a directory"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bad_input")
    proc = run_cli("train", *TINY, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "run"


def test_checkpoint_from_an_incompatible_version(trained, tmp_path):
    run_dir = trained
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    state["format"] = runs.CHECKPOINT_FORMAT + 1
    old = tmp_path / "future.pt"
    torch.save(state, old)
    proc = run_cli("sample", f"ckpt={old}", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    _one_line_error(proc, f"this rtkrun reads format {runs.CHECKPOINT_FORMAT}")


def test_sampler_that_does_not_fit_the_model(trained, tmp_path):
    run_dir = trained
    proc = run_cli(
        "sample", f"ckpt={run_dir}", "sampler=rtk_mala", "sampler.energy=exact", "n_samples=8", "batch_size=8",
        f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    _one_line_error(proc, "sampler.energy=exact needs a model with log_prob")
    assert not (tmp_path / "s" / "metrics.json").exists()


def test_atomically_written_files_get_the_umask_mode_not_mkstemp_private(tmp_path):
    # Results are shared on clusters: a metrics.json readable only by its writer was a bug.
    old = os.umask(0o022)
    try:
        runs.atomic_write_bytes(tmp_path / "a.json", b"{}")
        os.umask(0o007)
        runs.atomic_write_bytes(tmp_path / "b.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o660
