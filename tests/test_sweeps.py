"""Sweeps: one job directory per override set, a re-launched sweep skips finished jobs, and
`rtkrun report` turns the sweep into T1/T2; through Hydra's basic launcher, and (``-m slow``)
submitit's local executor, the same code path as SLURM without a cluster."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

SWEEP = [
    "-m",
    "model=mog_oracle",
    "sampler=rtk_mala",
    "sampler.step_size=0.25,0.5",
    "sampler.segments=2",
    "sampler.inner_steps=2",
    "n_samples=200",
    "batch_size=200",
    "evaluation.w2_max_n=200",
    "evaluation.mmd_max_n=200",
]


@pytest.mark.parametrize(
    "launcher",
    [
        [],  # Hydra's basic launcher, in this process
        # submitit's local executor, one process per job (30 s; its plumbing also runs by default
        # in tests/test_ddp.py::test_the_launcher_s_tasks_form_one_data_parallel_job)
        pytest.param(["hydra/launcher=local"], marks=pytest.mark.slow),
    ],
)
def test_a_sweep_is_idempotent_and_reported(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    sweep_args = [*SWEEP, *launcher]
    proc = run_cli("sample", *sweep_args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [j.name.split("sampler.step_size-")[1].split("+")[0] for j in jobs] == ["0.25", "0.5"]
    first = {j: (j / "metrics.json").read_text() for j in jobs}
    assert all(json.loads(m)["config_sha1"] for m in first.values())
    # Re-launching the same sweep skips the finished jobs: their files are left as they were.
    proc = run_cli("sample", *sweep_args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {j: (j / "metrics.json").read_text() for j in jobs} == first
    assert all("skipped" in (j / "sample.log").read_text() for j in jobs)
    out = tmp_path / "tables"
    proc = run_cli("report", f"runs={sweep}", f"out={out}", f"hydra.run.dir={tmp_path / 'report'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (out / "T1_T2.md").read_text()
    assert table.count("| rtk_mala |") == 2 and "step_size=0.25" in table and "step_size=0.5" in table
    # the swept step size pivoted into columns (T2's layout), with its own figure
    pivot = (out / "T1_T2_step_size.md").read_text().splitlines()
    header = pivot[4]
    assert "| step_size=0.25 | step_size=0.5 |" in header and len(pivot) == 7, pivot  # one row: both runs
    row = dict(zip(header.strip("|").split(" | "), pivot[6].strip("|").split(" | ")))
    runs_w2 = sorted(json.loads((j / "metrics.json").read_text())["sample/sliced_w2"] for j in jobs)
    assert sorted(float(row[f"step_size={v}"]) for v in ("0.25", "0.5")) == pytest.approx(runs_w2, rel=1e-3)
    assert (out / "T1_T2_step_size.png").stat().st_size > 0


def test_seeds_name_their_own_job_directories(tmp_path):
    sweep = tmp_path / "seeds"
    proc = run_cli(
        "sample", "-m", "model=mog_oracle", "sampler.steps=5", "seed=0,1", "n_samples=100", "batch_size=100",
        "evaluation.w2_max_n=100", "evaluation.mmd_max_n=100", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/metrics.json"))
    assert seeds == [0, 1]  # before, seed was left out of the directory name and both jobs shared one


@pytest.mark.slow
def test_a_timed_out_job_is_requeued_and_resumes_to_the_uninterrupted_result(tmp_path):
    """submitit's local executor sends SIGUSR2 30 s before a one-minute limit; the trainer
    checkpoints at the next step, submitit requeues the job, and the new process resumes."""
    import torch

    from rtkrun import runs

    train = ["trainer.max_steps=3000", "trainer.ckpt_every=100000", "trainer.log_every=1000",
             "trainer.deterministic=true", "~evaluation.samplers"]  # fmt: skip
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", "hydra/launcher=local", "hydra.launcher.timeout_min=1", *train, "seed=3",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = [p.parent for p in sweep.glob("*/metrics.json")]
    log = (job / "train.log").read_text()
    assert "SIGUSR2 at step" in log and "resumed from" in log, log[-2000:]
    straight = tmp_path / "straight"
    proc = run_cli("train", *train, "seed=3", f"hydra.run.dir={straight}", cwd=tmp_path, timeout=900, process=True)
    assert proc.returncode == 0, proc.stderr
    a, b = runs.load_checkpoint(job), runs.load_checkpoint(straight)
    assert a["step"] == b["step"] == 3000
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
