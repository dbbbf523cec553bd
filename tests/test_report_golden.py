"""Golden files for the rendering of T1/T2, T4 and T5: fixed run directories in, the Markdown and
LaTeX tables out, compared byte for byte. Regenerate after an intended change with
``RTKRUN_UPDATE_GOLDEN=1 pytest tests/test_report_golden.py`` and review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rtkrun.commands.report import report
from rtkrun.config import validate
from tests.conftest import compose_cfg

GOLDEN = Path(__file__).parent / "golden"


def _run(root: Path, name: str, cfg: dict, metrics: dict | None) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))


def _fixture_runs(root: Path) -> None:
    mog = {"name": "mog", "dim": 2}
    _run(
        root, "mog/ddim", {"command": "sample", "seed": 0, "ckpt": None, "dataset": mog,
                            "model": {"name": "mog_oracle"}, "sampler": {"name": "ddim", "steps": 10, "eta": 0.0}},
        {"status": "complete", "nfe": 10, "nfe_budget": None, "seconds": 0.25, "dataset/dim": 2,
         "sample/sliced_w2": 0.1234, "sample/baseline/sliced_w2": 0.1, "sample/mode_tv": 0.05, "sample/n": 2000},
    )  # fmt: skip
    _run(
        root, "mog/mala_failed", {"command": "sample", "seed": 0, "ckpt": None, "dataset": mog,
                                   "model": {"name": "mog_oracle"}, "sampler": {"name": "rtk_mala", "energy": "exact"}},
        None,
    )  # fmt: skip
    _run(
        root, "mog/mala_exact", {"command": "sample", "seed": 0, "ckpt": None, "dataset": mog,
                                  "model": {"name": "mog_oracle"}, "sampler": {"name": "rtk_mala", "energy": "exact"}},
        {"status": "complete", "nfe": 111, "nfe_budget": 120, "seconds": 1.5, "dataset/dim": 2,
         "stats/acceptance": [0.6, 0.5], "stats/energy_evals": 420,
         "sample/sliced_w2": 0.11, "sample/baseline/sliced_w2": 0.1, "sample/mode_tv": 0.02, "sample/n": 2000},
    )  # fmt: skip
    _run(
        root, "mog/flow_oracle", {"command": "sample", "seed": 0, "ckpt": None, "dataset": mog,
                                   "model": {"name": "mog_flow_oracle", "ode_steps": 100},
                                   "sampler": {"name": "dddm", "levels": 1, "iterations": 1}},
        {"status": "complete", "nfe": 1, "nfe_budget": 1, "seconds": 2.0, "dataset/dim": 2,
         "sample/sliced_w2": 0.12, "sample/baseline/sliced_w2": 0.1, "sample/n": 2000},
    )  # fmt: skip
    qm9 = {"name": "qm9", "source": "qm9pack", "split": "train"}
    _run(
        root, "qm9/sample_dddm", {"command": "sample", "seed": 0, "ckpt": "train", "dataset": {"name": "mog"},
                                   "sampler": {"name": "dddm", "levels": 1, "iterations": 2}},
        {"status": "complete", "nfe": 2, "seconds": 3.0, "dataset/name": "qm9",
         "sample/atom_stability": 0.9512, "sample/mol_stability": 0.6, "sample/validity": 0.8,
         "sample/valid_x_unique": 0.79, "sample/novelty": 0.5, "sample/n_molecules": 1000},
    )  # fmt: skip
    _run(
        root, "qm9/train", {"command": "train", "seed": 1, "dataset": qm9, "model": {"name": "egnn"},
                             "evaluation": {"samplers": {"ddpm1000": {"name": "ddpm", "steps": 1000}}}},
        {"status": "complete", "dataset/name": "qm9", "eval/ddpm1000/nfe": 1000, "eval/ddpm1000/seconds": 150.0,
         "eval/ddpm1000/atom_stability": 0.987, "eval/ddpm1000/mol_stability": 0.82, "eval/ddpm1000/validity": 0.919,
         "eval/ddpm1000/valid_x_unique": 0.907, "eval/ddpm1000/novelty": 0.6, "eval/ddpm1000/n_molecules": 200},
    )  # fmt: skip
    _run(
        root, "qm9/data", {"command": "evaluate", "seed": 0, "dataset": qm9, "samples": "data"},
        {"status": "complete", "samples": "data:train", "dataset/name": "qm9", "evaluate/atom_stability": 0.994,
         "evaluate/mol_stability": 0.9545, "evaluate/validity": 0.9772, "evaluate/valid_x_unique": 0.9772,
         "evaluate/n_molecules": 10000},
    )  # fmt: skip
    _run(
        root, "cifar/sample_dddm", {"command": "sample", "seed": 0, "ckpt": "train", "dataset": {"name": "mog"},
                                     "sampler": {"name": "dddm", "levels": 1, "iterations": 1, "clip": 1.0}},
        {"status": "complete", "nfe": 1, "seconds": 12.5, "dataset/name": "cifar10", "sample/fid": 31.25,
         "sample/fid_n": 2000, "sample/fid_reference_n": 50000},
    )  # fmt: skip
    _run(root, "qm9/sample_unfinished", {"command": "sample", "seed": 0, "dataset": qm9,
                                         "sampler": {"name": "ddim", "steps": 50}}, None)  # fmt: skip


@pytest.mark.parametrize("name", ["T1_T2.md", "T1_T2.tex", "T4.md", "T4.tex", "T5.md"])
def test_rendering_matches_the_golden_files(tmp_path, name):
    _fixture_runs(tmp_path / "runs")
    run = validate(compose_cfg("report", [f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'tables'}"]))
    report(run, tmp_path / "report")
    got = (tmp_path / "tables" / name).read_text()
    if os.environ.get("RTKRUN_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(got)
    assert got == (GOLDEN / name).read_text()
