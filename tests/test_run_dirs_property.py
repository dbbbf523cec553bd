"""The run-directory property under random use: random sequences of train / sample / evaluate /
report over a few shared directories, each command possibly killed at any of its file writes.
After every step, every directory holds one command's one experiment (``run.json`` agrees with
``metrics.json``), and every complete ``metrics.json`` matches what a clean run of its recorded
config writes, or names (``input_sha1``) the older checkpoint it was measured on.

A kill is simulated in process: the k-th atomic write raises instead of writing. Every file
rtkrun keeps is written through ``runs.atomic_write_bytes``, so this is what SIGKILL between two
writes leaves; ``tests/test_crash.py`` kills real processes at random moments."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from rtkrun import runs
from rtkrun.commands.run import run_command
from tests.conftest import rtkrun_in_process

N = ["n_samples=60", "batch_size=60"]
EV = ["evaluation.n_samples=60", "evaluation.batch_size=60", "evaluation.n_projections=16", "~evaluation.samplers"]
DIRS = ("D0", "D1", "D2")
# What may legitimately differ between two clean runs of one config: times, code versions.
NOT_COMPARED = ("seconds", "train/seconds_this_session", "rtkrun/git_commit")


NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)  # each example runs real commands: shrinking is slow


class Killed(BaseException):
    """A process killed between two writes (not an Exception: nothing may catch it)."""


def command_line(kind: str, variant: int, target: str, other: str, root: Path) -> list[str]:
    if kind == "train":
        steps = ("trainer.max_steps=20", "trainer.max_steps=30")[variant % 2]
        extra = ["+evaluation.samplers.ddim3={name:ddim,steps:3}"] if variant >= 2 else []
        return [
            "train",
            steps,
            *EV,
            "+evaluation.samplers.ddim2={name:ddim,steps:2}",
            *extra,
            f"hydra.run.dir={target}",
        ]
    if kind == "sample":
        model = [f"ckpt={other}"] if (root / other / "checkpoints" / "last.pt").exists() else ["model=mog_oracle"]
        return ["sample", *model, f"sampler.steps={2 + variant % 2}", *N, "evaluation.n_projections=16",
                f"hydra.run.dir={target}"]  # fmt: skip
    if kind == "evaluate":
        return ["evaluate", f"samples={other}", "evaluation.n_projections=16", f"hydra.run.dir={target}"]
    return ["report", "runs=.", f"out=tables{variant % 2}", f"hydra.run.dir={target}"]


STEP = st.tuples(
    st.sampled_from(("train", "sample", "evaluate", "report")),
    st.integers(0, 3),  # variant of the command's settings
    st.integers(0, len(DIRS) - 1),  # the directory written
    st.integers(0, len(DIRS) - 1),  # the directory read (checkpoint or samples)
    st.one_of(st.none(), st.integers(1, 6)),  # killed at this atomic write, or not at all
)


def clean_metrics(record: dict, root: Path, cache: dict) -> dict:
    """The metrics a clean run of a recorded config writes (run once per config, in process)."""
    key = repr(record["config"])
    if key not in cache:
        old = os.getcwd()
        os.chdir(root)  # recorded inputs are relative to where the command ran
        try:
            cache[key] = run_command(OmegaConf.create(record["config"]), root / f"_clean{len(cache)}")
        finally:
            os.chdir(old)
    return cache[key]


def measured_on_current_input(metrics: dict, root: Path) -> bool:
    if metrics.get("input_sha1") is None:
        return True
    source = root / (metrics.get("ckpt") or metrics["samples"])
    path = source / "checkpoints" / "last.pt" if metrics.get("ckpt") and source.is_dir() else source
    return path.exists() and runs.file_digest(path, "sha1") == metrics["input_sha1"]


def check_directories(root: Path, cache: dict) -> None:
    for name in DIRS:
        d = root / name
        metrics = runs.read_json_object(d / "metrics.json")
        if metrics is None:
            continue
        record = runs.read_json(d / "run.json")
        assert metrics["command"] == record["command"]  # one command's one experiment
        if metrics.get("status") != "complete" or record["command"] == "report":
            continue
        if not measured_on_current_input(metrics, root):
            continue  # measured on an older input, and says so: re-running recomputes it
        clean = clean_metrics(record, root, cache)
        for k, v in metrics.items():
            if k in NOT_COMPARED or k.endswith("/seconds") or k in ("ckpt", "samples"):
                continue
            w = clean.get(k)
            if isinstance(v, float) and isinstance(w, float):
                assert math.isclose(v, w, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(v) and math.isnan(w)), (d, k, v, w)
            else:
                assert v == w, (d, k, v, w)


def run_sequence(steps, root: Path, monkeypatch) -> None:
    real_write, cache = runs.atomic_write_bytes, {}
    for kind, variant, target, source, kill_at in steps:
        args = command_line(kind, variant, DIRS[target], DIRS[source], root)
        writes = []

        def write(path, data, fix=None, _kill=kill_at, _writes=writes):
            _writes.append(path)
            if _kill is not None and len(_writes) == _kill:
                raise Killed
            return real_write(path, data, fix)

        monkeypatch.setattr(runs, "atomic_write_bytes", write)
        try:
            rtkrun_in_process(*args, cwd=root)  # a refusal (exit 2) is a fine outcome
        except Killed:
            pass
        finally:
            monkeypatch.setattr(runs, "atomic_write_bytes", real_write)
        check_directories(root, cache)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, phases=NO_SHRINK, suppress_health_check=list(HealthCheck))
@given(st.lists(STEP, min_size=2, max_size=6))
def test_random_command_sequences_keep_every_directory_true(tmp_path_factory, monkeypatch, steps):
    run_sequence(steps, tmp_path_factory.mktemp("seq"), monkeypatch)


@settings(max_examples=2, deadline=None, derandomize=True, phases=NO_SHRINK, suppress_health_check=list(HealthCheck))
@given(st.lists(STEP, min_size=3, max_size=3))
def test_random_command_sequences_keep_every_directory_true_quick(tmp_path_factory, monkeypatch, steps):
    run_sequence(steps, tmp_path_factory.mktemp("seq"), monkeypatch)
