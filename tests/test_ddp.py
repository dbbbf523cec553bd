"""Data-parallel training under torchrun on the CPU (gloo, 2 processes): the same global batch
gives the same loss curve, weights and DDPM buffer as one process; gradient accumulation is
equivalent to one big batch; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
TRAIN = [
    "trainer.max_steps=30",
    "trainer.log_every=5",
    "trainer.batch_size=256",
    "trainer.ckpt_every=15",
    "evaluation.n_samples=100",
    "evaluation.batch_size=100",
    "evaluation.w2_max_n=100",
    "evaluation.mmd_max_n=100",
    "~evaluation.samplers",  # the comparison is of training; sampling is tested elsewhere
]
ENV = {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "rtkrun", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=300,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    one = run_cli("train", *TRAIN, f"hydra.run.dir={cwd / 'one'}", cwd=cwd, env=ENV)
    assert one.returncode == 0, one.stderr
    two = torchrun("train", *TRAIN, f"hydra.run.dir={cwd / 'two'}", cwd=cwd)
    assert two.returncode == 0, two.stdout + two.stderr
    accum = run_cli("train", *TRAIN, "trainer.grad_accum=4", f"hydra.run.dir={cwd / 'accum'}", cwd=cwd, env=ENV)
    assert accum.returncode == 0, accum.stderr
    return cwd


def test_two_processes_match_one_at_the_same_global_batch(runs):
    one, two = runs / "one", runs / "two"
    assert len(losses(one)) == 6
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    a = torch.load(one / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(two / "checkpoints" / "last.pt", weights_only=False)
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    # the DDDM buffer: every estimate written by either rank, at the global index
    assert torch.allclose(a["buffer"], b["buffer"], atol=1e-5)
    assert json.loads((two / "metrics.json").read_text())["train/processes"] == 2


def test_gradient_accumulation_equals_one_big_batch(runs):
    assert losses(runs / "accum") == pytest.approx(losses(runs / "one"), rel=1e-5)


def test_torchrun_needs_a_shared_run_directory(tmp_path):
    proc = torchrun("train", *TRAIN, cwd=tmp_path)
    assert proc.returncode != 0
    assert "pass hydra.run.dir=<dir>" in proc.stderr
