"""The real console script: commands, help, completion, sweeps, and one-line errors that leave
existing run files untouched."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtkrun.cli import path_tag
from tests.conftest import run_cli

TINY_TRAIN = [
    "trainer.max_steps=60",
    "trainer.log_every=20",
    "evaluation.n_samples=300",
    "evaluation.batch_size=300",
    "evaluation.w2_max_n=200",
    "evaluation.mmd_max_n=200",
]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cli")
    run_dir = cwd / "run"
    proc = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={run_dir}", cwd=cwd, process=True)  # the console script
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(run_dir.resolve()) in proc.stdout  # says where its run directory is
    return run_dir


def test_help_lists_commands(tmp_path):
    proc = run_cli("--help", cwd=tmp_path, process=True)
    assert proc.returncode == 0
    for command in ("train", "sample", "evaluate"):
        assert command in proc.stdout
    module = subprocess.run([sys.executable, "-m", "rtkrun", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert module.returncode == 0 and "commands:" in module.stdout
    per_command = run_cli("sample", "sampler=dddm", "--help", cwd=tmp_path)
    assert per_command.returncode == 0, per_command.stderr
    assert "  sampler       dddm | ddim | ddpm | pf_ode | rtk_mala | rtk_uld" in per_command.stdout
    assert re.search(r"sampler\.iterations +1 +M per level", per_command.stdout), per_command.stdout
    assert not (tmp_path / "outputs").exists()  # help runs nothing
    wrong = run_cli("sample", "sampler.stepz=3", "--help", cwd=tmp_path)
    assert wrong.returncode == 2 and "unknown config key 'sampler.stepz'" in wrong.stderr


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli("sample", "model=mog_oracle", "sampler.steps=7", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "name: mog_oracle" in proc.stdout and "steps: 7" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_bash_completion_after_the_command_word(tmp_path):
    line = "rtkrun train dataset."
    proc = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.returncode == 0, proc.stderr
    assert "dataset.dim=" in proc.stdout
    line = "rtkrun sample sampler="
    proc = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert "sampler=ddim" in proc.stdout and "sampler=ddpm" in proc.stdout
    line = "rtkrun sa"
    proc = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.stdout.split() == ["sample"]


def test_train_writes_a_complete_run_directory(trained):
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "train.log",
        "metrics.json",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "samples/ddim50.npz",
        "samples/ddim50.png",
        "samples/ddpm200.npz",
    ):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["train/steps"] == 60
    assert metrics["eval/ddim50/nfe"] == 50 and metrics["eval/ddpm200/nfe"] == 200
    assert {"seed", "rtkrun/version", "rtkrun/git_commit", "versions/torch", "versions/numpy"} <= set(metrics)
    steps = [json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 60]


def test_finished_run_is_not_retrained(trained):
    before = snapshot(trained / "checkpoints")
    proc = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={trained}", cwd=trained.parent)
    assert proc.returncode == 0, proc.stderr
    assert "already complete" in proc.stdout
    assert snapshot(trained / "checkpoints") == before


def test_sample_sweep_makes_one_job_directory_per_override(trained, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "sample",
        "-m",
        "sampler=ddim",
        "sampler.steps=5,10,20",
        f"ckpt={trained}",
        "n_samples=200",
        "batch_size=200",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # Named after the job's overrides (hydra.* excluded), the checkpoint by a tag (conf/hydra_base.yaml).
    tag = path_tag(str(trained))
    assert tag.startswith("run-") and len(tag) == len("run-") + 8
    assert jobs == [f"batch_size-200+n_samples-200+sampler.steps-{k}+sampler-ddim+ckpt-{tag}" for k in (10, 20, 5)]
    for job, steps in zip(jobs, (10, 20, 5)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["nfe"] == steps and metrics["status"] == "complete"


def test_oracle_samples_without_checkpoint_and_evaluate_rescores(tmp_path):
    run_dir = tmp_path / "oracle"
    proc = run_cli(
        "sample",
        "model=mog_oracle",
        "sampler=ddim",
        "sampler.steps=100",
        "n_samples=2000",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["nfe"] == 100
    assert metrics["sample/sliced_w2"] < 1.5 * metrics["sample/baseline/sliced_w2"] + 0.02
    with np.load(run_dir / "samples" / "samples.npz") as f:
        assert f["x0"].shape == (2000, 2)
    eval_dir = tmp_path / "eval"
    proc = run_cli("evaluate", f"samples={run_dir}", f"hydra.run.dir={eval_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rescored = json.loads((eval_dir / "metrics.json").read_text())
    assert rescored["evaluate/sliced_w2"] == pytest.approx(metrics["sample/sliced_w2"], rel=1e-9)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["trainer.lrr=1"], "unknown config key 'trainer.lrr', did you mean 'trainer.lr'"),
        (["datset=qm9"], "unknown config key 'datset', did you mean 'dataset'"),
        (["dataset=qm8"], "dataset=qm8 does not exist, did you mean 'qm9'"),
        (["dataset.dim=two"], "bad value for 'dataset.dim'"),
        (["dataset.dim=-1"], "dataset.dim must be >= 1"),
        (["trainer.lr=0.5"], "already holds a run with trainer.lr=0.002"),
    ],
)
def test_bad_train_input_is_one_line_and_touches_nothing(trained, args, fragment):
    before = snapshot(trained)
    proc = run_cli("train", *TINY_TRAIN, *args, f"hydra.run.dir={trained}", cwd=trained.parent)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert snapshot(trained) == before


def test_missing_and_corrupt_checkpoints(trained, tmp_path):
    proc = run_cli("sample", f"ckpt={tmp_path / 'nope.pt'}", cwd=tmp_path)
    assert proc.returncode != 0 and "checkpoint not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((trained / "checkpoints" / "last.pt").read_bytes()[:5000])
    proc = run_cli("sample", f"ckpt={corrupt}", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "is unreadable" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    proc = run_cli("sample", f"ckpt={trained}", "dataset.radius=5", cwd=tmp_path)
    assert proc.returncode != 0 and "fixes dataset, model and schedule" in proc.stdout + proc.stderr


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    import os
    import signal
    import time

    run_dir = tmp_path / "busy"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    first = subprocess.Popen(
        [sys.executable, "-m", "rtkrun", "train", "trainer.max_steps=1000000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        # Hydra opens train.log before it writes .hydra/ (config, hydra, overrides in that order):
        # wait for the last file and a stable snapshot, or a loaded machine catches it mid-write.
        hydra_files = None
        while time.time() < deadline:
            if (run_dir / ".hydra" / "overrides.yaml").exists():
                seen = snapshot(run_dir / ".hydra")
                time.sleep(0.5)
                if snapshot(run_dir / ".hydra") == seen:
                    hydra_files = seen
                    break
            time.sleep(0.2)
        assert hydra_files is not None, "the first run never wrote .hydra/"
        # Stopped, it still holds the lock (a flock belongs to the open file, not to a running
        # process) and no longer takes a core from the other tests.
        first.send_signal(signal.SIGSTOP)
        assert (run_dir / ".rtkrun.lock").read_text().strip() == str(first.pid)
        second = run_cli("train", "trainer.max_steps=1000000", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert second.returncode == 2
        assert f"is in use by another rtkrun process (pid {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert snapshot(run_dir / ".hydra") == hydra_files  # the running job's record is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the lock with the killed process: the directory is usable again
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from rtkrun.runs import lock_run_dir; lock_run_dir(__import__('pathlib').Path({str(run_dir)!r}))",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr


def test_job_directory_names_hold_no_equals_or_commas_and_stay_apart():
    from rtkrun.cli import job_dirname

    assert job_dirname("dddm_variant-paper+seed-1", ["dddm_variant=paper", "seed=1"]) == "dddm_variant-paper+seed-1"
    odd = job_dirname("dataset.weights-[1,2]+hydra/launcher-slurm", [])
    assert "=" not in odd and "," not in odd and "/" not in odd and odd.startswith("dataset.weights-_1_2_+hydra_")
    assert odd != job_dirname("dataset.weights-[1_2]+hydra/launcher-slurm", [])  # sanitised names keep a digest
    assert job_dirname("", []) == "job"
