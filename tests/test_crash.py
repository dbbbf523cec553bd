"""Crash safety: `rtkrun train` killed with SIGKILL at random moments (start-up, training,
checkpointing, sampling, writing metrics) never leaves a torn file, and re-running the same
command resumes and ends bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rtkrun import runs
from tests.conftest import rtkrun_in_process

STEPS = 400
TRAIN = [
    f"trainer.max_steps={STEPS}",
    "trainer.ckpt_every=40",
    "trainer.log_every=40",
    "trainer.deterministic=true",
    "evaluation.n_samples=400",
    "evaluation.batch_size=400",
    "evaluation.w2_max_n=200",
    "evaluation.mmd_max_n=200",
    *(f"~evaluation.samplers.{s}" for s in ("ddpm200", "dddm1", "dddm2", "dddm_sc10")),  # DDIM-50 is compared
]


def _command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "rtkrun", "train", *TRAIN, f"hydra.run.dir={run_dir}"]


def _check_nothing_torn(run_dir: Path) -> None:
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        json.loads(metrics.read_text())  # valid JSON whenever present
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.exists():
        lines = jsonl.read_text().splitlines()
        for line in lines[:-1]:
            json.loads(line)  # only the line being appended at the kill may be partial
    ckpt = runs.checkpoint_path(run_dir)
    if ckpt.exists():
        assert runs.load_checkpoint(ckpt)["step"] > 0


def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> list[float]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    reference = tmp_path / "straight"
    started = time.time()
    subprocess.run(_command(reference), cwd=tmp_path, env=env, check=True, capture_output=True)
    full = time.time() - started
    rng = random.Random(seed)
    run_dir = tmp_path / "killed"
    moments = []
    for _ in range(kills):
        # Anywhere in what is left of the job (start-up included): each resume has less to do.
        ckpt = runs.checkpoint_path(run_dir)
        left = 1.0 - runs.load_checkpoint(ckpt)["step"] / STEPS if ckpt.exists() else 1.0
        moment = rng.uniform(0.5, max(1.0, full * max(left, 0.2)))
        proc = subprocess.Popen(
            _command(run_dir), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            moments.append(moment)
        _check_nothing_torn(run_dir)
    # The last resume runs in this process (no second torch import): a kill leaves nothing a
    # fresh process, or this one, would read differently.
    done = rtkrun_in_process("train", *TRAIN, f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["train/steps"] == STEPS
    a, b = runs.load_checkpoint(run_dir), runs.load_checkpoint(reference)
    assert a["step"] == b["step"] == STEPS
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after {len(moments)} kills"
    assert torch.equal(a["buffer"], b["buffer"])
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["eval/ddim50/sliced_w2"] == expected["eval/ddim50/sliced_w2"]
    return moments


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    moments = kill_and_resume(tmp_path, kills=1, seed=3)  # at 24 % of a run (50 kills under -m slow)
    assert len(moments) == 1  # the kill landed before the job finished


@pytest.mark.slow
def test_sigkill_fifty_times(tmp_path):
    moments = kill_and_resume(tmp_path, kills=50, seed=0)
    print(f"{len(moments)} of 50 kills landed mid-run; every resume ended bit-identical")


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from rtkrun.commands.run import run_command
    from rtkrun.errors import RtkrunError
    from tests.conftest import compose_cfg

    no_eval = ["~evaluation.samplers"]
    common = ["trainer.ckpt_every=50", "trainer.log_every=50", *no_eval]
    run_dir = tmp_path / "run"
    run_command(compose_cfg("train", [*common, "trainer.max_steps=100"]), run_dir)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.os, "fsync", disk_full)
    with pytest.raises(RtkrunError, match="No space left on device; the previous file is unchanged"):
        run_command(compose_cfg("train", [*common, "trainer.max_steps=200"]), run_dir)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    assert runs.load_checkpoint(run_dir)["step"] == 100
    assert not [p for p in run_dir.rglob("*.tmp")]  # the half-written temporary file is removed


def test_a_config_record_torn_by_a_kill_does_not_block_the_resume(tmp_path):
    """Hydra writes .hydra/config.yaml in place, so a kill can tear it; the checkpoint (written
    atomically) then says what the run was, and with no checkpoint there is nothing to protect."""
    from tests.conftest import run_cli

    args = ["trainer.max_steps=20", "~evaluation.samplers"]
    fresh = tmp_path / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("command: train\nseed: 0\ndataset: {name: mo")
    proc = run_cli("train", *args, f"hydra.run.dir={fresh}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (fresh / ".hydra" / "config.yaml").write_text("command: tr")
    proc = run_cli("train", "trainer.max_steps=30", "~evaluation.samplers", f"hydra.run.dir={fresh}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert runs.load_checkpoint(fresh)["step"] == 30
    (fresh / ".hydra" / "config.yaml").write_text("command: tr")
    proc = run_cli("train", "trainer.max_steps=30", "trainer.lr=0.5", "~evaluation.samplers",
                   f"hydra.run.dir={fresh}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "already holds a run with trainer.lr=0.002" in proc.stderr


def test_sigterm_saves_a_checkpoint_at_the_step_and_the_rerun_resumes_bit_identically(tmp_path):
    """Preemption (SIGTERM; SIGUSR2 on SLURM): stop at the next step boundary with a checkpoint of
    that step, exit 143 with one line, and resume to the same weights as an uninterrupted run."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    args = ["trainer.max_steps=100000", "trainer.ckpt_every=100000", "trainer.log_every=50",
            "trainer.deterministic=true", "~evaluation.samplers"]  # fmt: skip
    run_dir = tmp_path / "preempted"
    command = [sys.executable, "-m", "rtkrun", "train", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    step = runs.load_checkpoint(run_dir)["step"]
    assert step >= 50 and step % 100000 != 0  # saved at the stop, not on the schedule
    # Resume to a fixed length and compare with a run that was never stopped.
    # (in this process: the resume needs no signal, and a process start costs seconds)
    total = f"trainer.max_steps={step + 37}"
    straight = tmp_path / "straight"
    for target in (run_dir, straight):
        done = rtkrun_in_process("train", *args, total, f"hydra.run.dir={target}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    a, b = runs.load_checkpoint(run_dir), runs.load_checkpoint(straight)
    assert a["step"] == b["step"] == step + 37
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key])
    assert torch.equal(a["buffer"], b["buffer"])
