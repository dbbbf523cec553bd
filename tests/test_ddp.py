"""Data parallelism on the CPU (gloo, 2 processes), under torchrun and as the two tasks of a
submitit job: the same global batch gives the same loss curve, weights and DDDM buffer as one
process; gradient accumulation is equivalent to one big batch; sampling (rtkrun sample, and the
evaluation after train) splits the sample indices and gives the one-process samples bit for bit;
rank 0 alone writes."""

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
# The two-process training run also evaluates one sampler, split over its ranks (one torchrun
# start-up, about 17 CPU-seconds, serves both tests).
SPLIT_EVALUATION = [
    "+evaluation.samplers.ddpm5={name:ddpm,steps:5}",
    "evaluation.n_samples=12",
    "evaluation.batch_size=3",
    "evaluation.fixed_point_points=0",
]


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
    two = torchrun("train", *TRAIN, *SPLIT_EVALUATION, f"hydra.run.dir={cwd / 'two'}", cwd=cwd)
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
    # torchrun's variables, in process: the check reads them before anything starts (a real
    # torchrun start-up, three torch imports, would only repeat the fixture's)
    variables = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    proc = run_cli("train", *TRAIN, cwd=tmp_path, env=variables)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "under torchrun pass hydra.run.dir=<dir>" in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # the split itself is checked on the fixture's run by the evaluation test below
def test_sampling_split_over_two_processes_gives_the_one_process_samples(tmp_path):
    """`torchrun … rtkrun sample`: each rank draws a contiguous block of the indices (here with
    the same batch boundaries as one process) and rank 0 gathers, scores and writes. DDPM draws
    fresh noise at every step, so any mix-up of the per-sample streams would show."""
    import numpy as np

    args = ["model=mog_oracle", "sampler=ddpm", "sampler.steps=20", "n_samples=12", "batch_size=3"]
    args += ["evaluation.w2_max_n=12", "evaluation.mmd_max_n=12"]
    one = run_cli("sample", *args, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path, env=ENV)
    assert one.returncode == 0, one.stderr
    two = torchrun("sample", *args, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    with (
        np.load(tmp_path / "one" / "samples" / "samples.npz") as a,
        np.load(tmp_path / "two" / "samples" / "samples.npz") as b,
    ):
        assert a["x0"].shape == (12, 2) and np.array_equal(a["x0"], b["x0"])
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert {k: v for k, v in m1.items() if k.startswith("sample/")} == {
        k: v for k, v in m2.items() if k.startswith("sample/")
    }


def test_evaluation_after_training_is_split_over_the_processes(runs, tmp_path):
    """`torchrun … rtkrun train`: every rank samples a block of each evaluation sampler and rank 0
    scores; the samples are those one process draws from the same checkpoint. DDPM draws fresh
    noise at every step, so any mix-up of the per-sample streams would show."""
    import numpy as np

    two = runs / "two"
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["eval/ddpm5/nfe"] == 5 and metrics["train/processes"] == 2
    again = run_cli(
        "sample", f"ckpt={two}", "sampler=ddpm", "sampler.steps=5", "n_samples=12", "batch_size=3",
        f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path, env=ENV,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    with (
        np.load(two / "samples" / "ddpm5.npz") as a,
        np.load(tmp_path / "one" / "samples" / "samples.npz") as b,
    ):
        assert a["x0"].shape == (12, 2) and np.array_equal(a["x0"], b["x0"])


def test_a_slurm_task_of_a_multi_task_job_takes_torchrun_s_variables():
    """Inside a submitit job with two tasks (SLURM's variables), adopt_launcher_tasks exports
    what torchrun would set, so the job takes torchrun's code path; outside one it does nothing.
    The whole path, two local tasks training together, is the slow test below."""
    from rtkrun.distributed import adopt_launcher_tasks

    saved = dict(os.environ)  # restored whole: a leaked WORLD_SIZE would send later runs to a process group
    try:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "SUBMITIT_EXECUTOR"):
            os.environ.pop(key, None)
        adopt_launcher_tasks()  # not in a submitit job
        assert "WORLD_SIZE" not in os.environ
        os.environ.update({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2"})
        os.environ.update({"SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "1"})
        os.environ.update({"SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "node07"})
        adopt_launcher_tasks()
        exported = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        assert exported == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node07"}
        assert int(os.environ["MASTER_PORT"]) > 1024
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow  # submitit's local executor and two training tasks; the mapping itself is tested above
def test_the_launcher_s_tasks_form_one_data_parallel_job(runs, tmp_path):
    """`hydra/launcher=local` (submitit's local executor) with tasks_per_node=2: the two tasks take
    their ranks from submitit's job environment (on SLURM: SLURM's variables; the slurm_ddp
    preset) and train as torchrun's two processes do, to the one-process run's losses."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10",
        *TRAIN, "seed=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = [p.parent for p in sweep.glob("*/metrics.json")]
    assert json.loads((job / "metrics.json").read_text())["train/processes"] == 2
    assert losses(job) == pytest.approx(losses(runs / "one"), rel=1e-5)
