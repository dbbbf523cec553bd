"""`rtkrun train dataset=qm9`, `sample` with every sampler and `evaluate`, end to end through the
real CLI on a small figshare-format fixture of real molecules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.conftest import run_cli
from tests.qm9_fixture import build_qm9_fixture, first_real_molecules

SAMPLERS = ("ddpm20", "ddim10", "dddm2", "rtk_mala")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_cache):
    cwd = tmp_path_factory.mktemp("qm9_cli")
    tarball = build_qm9_fixture(cwd / "qm9", first_real_molecules(300))
    env = {"RTKRUN_CACHE": str(shared_cache)}
    data = ["dataset=qm9", "dataset.source=figshare", f"dataset.root={tarball}"]
    run_dir = cwd / "train"
    proc = run_cli(
        "train",
        *data,
        "trainer=smoke",
        "model=egnn_small",
        "evaluation=qm9_smoke",
        f"hydra.run.dir={run_dir}",
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd, run_dir, env


def _check_sdf(path, node_mask, x0):
    from rdkit import Chem

    mols = list(Chem.SDMolSupplier(str(path), sanitize=False))
    assert len(mols) == len(node_mask)
    for mol, mask, x in zip(mols, node_mask, x0):
        assert mol.GetNumAtoms() == mask.sum()
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), x[mask, :3], atol=1e-3)


def test_train_samples_molecules_with_every_sampler(setup):
    _, run_dir, _ = setup
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["train/steps"] == 6
    for label in SAMPLERS:
        for key in ("atom_stability", "mol_stability", "validity", "uniqueness", "valid_x_unique", "novelty"):
            assert 0.0 <= metrics[f"eval/{label}/{key}"] <= 1.0, (label, key)
        assert metrics[f"eval/{label}/n_molecules"] == 16 and metrics[f"eval/{label}/nonfinite"] == 0
        with np.load(run_dir / "samples" / f"{label}.npz") as f:
            x0, mask = f["x0"], f["node_mask"]
        assert x0.shape == (16, 29, 9) and mask.shape == (16, 29) and mask.dtype == bool
        assert (x0[~mask] == 0).all()
        com = (x0[..., :3] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        assert np.abs(com).max() < 1e-4  # samples stay in the zero-CoM space
        _check_sdf(run_dir / "samples" / f"{label}.sdf", mask, x0)
        assert (run_dir / "samples" / f"{label}.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["eval/dddm2/nfe"] == 2 and metrics["eval/ddim10/nfe"] == 10


@pytest.mark.parametrize(
    "sampler,nfe",
    [
        (["sampler=ddpm", "sampler.steps=4"], 4),
        (["sampler=dddm", "sampler.iterations=3"], 3),
        (["sampler=pf_ode", "sampler.nfe=6"], 5),  # Heun: 2 per step, 1 on the last
        (["sampler=rtk_uld", "sampler.nfe=12"], 12),  # 1 segment: jump score, probe, 4 warm-up + 5 BAOAB steps
    ],
)
def test_sample_and_evaluate_a_checkpoint(setup, sampler, nfe):
    cwd, run_dir, env = setup
    out = cwd / f"sample_{sampler[0].split('=')[1]}"
    proc = run_cli(
        "sample", f"ckpt={run_dir}", *sampler, "n_samples=6", "batch_size=4", f"hydra.run.dir={out}", cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == nfe and metrics["sample/n_molecules"] == 6 and metrics["dataset/name"] == "qm9"
    recorded = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())  # what ran, not the defaults
    assert (recorded["dataset"]["name"], recorded["model"]["name"]) == ("qm9", "egnn")
    rescored_dir = cwd / f"evaluate_{sampler[0].split('=')[1]}"
    proc = run_cli("evaluate", f"samples={out}", f"hydra.run.dir={rescored_dir}", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rescored = json.loads((rescored_dir / "metrics.json").read_text())
    for key in ("atom_stability", "mol_stability", "validity", "valid_x_unique"):
        assert rescored[f"evaluate/{key}"] == metrics[f"sample/{key}"]


def test_diagnose_runs_on_molecules(setup):
    cwd, run_dir, env = setup
    out = cwd / "diagnose"
    proc = run_cli(
        "diagnose", f"ckpt={run_dir}", "diagnostics.n_points=2", "diagnostics.noise_levels=[0.5]",
        "diagnostics.iters=4", "diagnostics.probes=2", "diagnostics.restarts=1", "diagnostics.ascent_steps=2",
        "sampler=dddm", "sampler.levels=1", "sampler.iterations=1", f"hydra.run.dir={out}", cwd=cwd, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["estimator"] == "lanczos" and metrics["dataset/dim"] == 29 * 9 and metrics["points"] == 4
    rows = (out / "diagnostics" / "points.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all("nan" not in r for r in rows)
    # The exact (per-sample vmap) path cannot carry a batch's node mask: one clear line, not a crash.
    proc = run_cli("diagnose", f"ckpt={run_dir}", "diagnostics.estimator=exact", f"hydra.run.dir={cwd / 'exact'}",
                   cwd=cwd, env=env)  # fmt: skip
    assert proc.returncode == 2 and "use diagnostics.estimator=lanczos" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_row_and_report_build_t4(setup):
    cwd, run_dir, env = setup
    data_dir = cwd / "runs" / "data"
    tarball = cwd / "qm9" / "dsgdb9nsd.xyz.tar.bz2"
    proc = run_cli(
        "evaluate", "samples=data", "dataset=qm9", "dataset.source=figshare", f"dataset.root={tarball}",
        "evaluation.n_samples=50", f"hydra.run.dir={data_dir}", cwd=cwd, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scores = json.loads((data_dir / "metrics.json").read_text())
    assert scores["samples"] == "data:train" and scores["evaluate/n_molecules"] == 50
    assert scores["evaluate/validity"] > 0.9  # real molecules
    out = cwd / "tables"
    proc = run_cli("report", f"runs=[{cwd / 'runs'},{run_dir}]", f"out={out}", f"hydra.run.dir={cwd / 'report'}",
                   cwd=cwd, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (out / "T4.md").read_text()
    assert "rtkrun: data:train" in table and "rtkrun: train/dddm2" in table and "EDM paper: data (quoted)" in table
    assert table.count("\n| rtkrun: train/") == 4


def test_cfg_job_with_a_checkpoint_shows_the_checkpoint_s_groups(setup):
    cwd, run_dir, env = setup
    proc = run_cli("sample", f"ckpt={run_dir}", "sampler=ddim", "--cfg", "job", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert (shown["dataset"]["name"], shown["model"]["name"], shown["sampler"]["name"]) == ("qm9", "egnn", "ddim")
    assert shown["dataset"]["source"] == "figshare"  # the checkpoint's own dataset settings
