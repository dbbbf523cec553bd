"""CIFAR-10 end to end through the real console script on the tests' fixture: train a small DDDM
U-Net with the smoke trainer, then sample it with DDPM, DDIM, DDDM (1 and 2 steps) and RTK-MALA,
each scored by FID with the real Inception extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cifar_fixture import build_cifar10_fixture
from tests.conftest import run_cli

EVAL = ["evaluation.n_samples=6", "evaluation.batch_size=6", "evaluation.fid_batch_size=24"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_cache):
    cwd = tmp_path_factory.mktemp("cifar_cli")
    root = build_cifar10_fixture(cwd / "data", per_batch=4)  # 20 training images: the FID reference
    env = {"RTKRUN_CACHE": str(shared_cache)}
    run_dir = cwd / "train"
    proc = run_cli(
        "train",
        "dataset=cifar10",
        f"dataset.root={root}",
        "trainer=smoke",
        "model=dddm_unet_small",
        *EVAL,
        f"hydra.run.dir={run_dir}",
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd, run_dir, env


def test_train_on_the_fixture_writes_fid_and_pictures(setup):
    _, run_dir, _ = setup
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 6 and metrics["status"] == "complete"
    for label, nfe in (("dddm1", 1), ("dddm2", 2), ("ddim35", 35)):
        assert metrics[f"eval/{label}/nfe"] == nfe
        assert metrics[f"eval/{label}/fid_n"] == 6 and metrics[f"eval/{label}/fid_reference_n"] == 20
        assert np.isfinite(metrics[f"eval/{label}/fid"]) and metrics[f"eval/{label}/fid"] > 0
        assert metrics[f"eval/{label}/fid_extractor_sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
        assert (run_dir / "samples" / f"{label}.png").read_bytes()[:4] == b"\x89PNG"
        with np.load(run_dir / "samples" / f"{label}.npz") as f:
            assert f["x0"].shape == (6, 3, 32, 32)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["samples_per_s"] > 0 for r in records)


@pytest.mark.parametrize(
    "sampler,nfe",
    [
        pytest.param(["sampler=ddpm", "sampler.steps=4"], 4, marks=pytest.mark.slow),  # = DDIM with eta 1
        (["sampler=ddim", "sampler.steps=3"], 3),
        (["sampler=dddm", "sampler.clip=1.0"], 1),
        (["sampler=dddm", "sampler.iterations=2", "sampler.clip=1.0"], 2),
        # 1 + per segment: the score after the jump, the curvature probe, 1 warm-up and 1 MALA step
        (["sampler=rtk_mala", "sampler.segments=2", "sampler.warmup_steps=1", "sampler.inner_steps=1"], 9),
    ],
)
def test_every_sampler_runs_on_images(setup, sampler, nfe):
    cwd, run_dir, env = setup
    out = cwd / f"sample_{'_'.join(sampler).replace('=', '-')}"
    proc = run_cli(
        "sample", f"ckpt={run_dir}", *sampler, "n_samples=4", "batch_size=4", f"hydra.run.dir={out}", cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == nfe and metrics["sample/fid_n"] == 4 and np.isfinite(metrics["sample/fid"])
    assert metrics["dataset/name"] == "cifar10" and metrics["dataset/dim"] == 3072
    assert (out / "samples" / "samples.png").is_file()


def test_evaluate_rescores_saved_images(setup):
    cwd, run_dir, env = setup
    out = cwd / "evaluate"
    proc = run_cli("evaluate", f"samples={run_dir / 'samples' / 'dddm1.npz'}", f"hydra.run.dir={out}", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rescored = json.loads((out / "metrics.json").read_text())["evaluate/fid"]
    original = json.loads((run_dir / "metrics.json").read_text())["eval/dddm1/fid"]
    assert rescored == pytest.approx(original, rel=1e-6)


def test_missing_dataset_is_one_line(tmp_path):
    proc = run_cli("train", "dataset=cifar10", f"dataset.root={tmp_path}", "trainer=smoke", cwd=tmp_path)
    assert proc.returncode == 2
    assert "CIFAR-10 not found" in proc.stderr and "dataset.download=true" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (Path(tmp_path) / "outputs").exists() or not list((Path(tmp_path) / "outputs").rglob("last.pt"))


@pytest.mark.slow  # 40 s; the matrix-free CLI path runs by default on the MoG and on QM9 (d = 261)
def test_diagnose_runs_matrix_free_on_images(setup):
    cwd, run_dir, env = setup
    out = cwd / "diagnose"
    proc = run_cli(
        "diagnose",
        f"ckpt={run_dir}",
        "diagnostics.n_points=2",
        "diagnostics.noise_levels=[0.5]",
        "diagnostics.iters=4",
        "diagnostics.probes=2",
        "diagnostics.restarts=1",
        "diagnostics.ascent_steps=2",
        "sampler.levels=1",
        "sampler.iterations=1",
        f"hydra.run.dir={out}",
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["estimator"] == "lanczos" and metrics["dataset/dim"] == 3072 and metrics["points"] == 4
    lines = (out / "diagnostics" / "points.csv").read_text().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        assert all(np.isfinite(float(row[k])) for k in ("L", "sigma_min", "R", "B_sq", "true", "margin"))
        assert float(row["L"]) > 0 and float(row["frobenius_sq"]) >= 0
