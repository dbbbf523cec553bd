"""The table collector reads run directories only and never drops a failed job."""

import csv
import json

import pytest
from omegaconf import OmegaConf

from rtkrun.report.output import write_table
from rtkrun.report.rows import find_runs
from rtkrun.report.t1_t2 import SAMPLE_COLUMNS, sample_row, sort_rows
from rtkrun.samplers import SAMPLERS, settings_for


def fake_run(root, name, sampler, metrics=None):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {
        "command": "sample",
        "seed": 0,
        "ckpt": None,
        "dataset": {"name": "mog", "dim": 2},
        "model": {"name": "mog_oracle"},
        "sampler": sampler,
    }
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_rows_come_from_run_directories_and_failures_are_kept(tmp_path):
    fake_run(
        tmp_path,
        "a",
        {"name": "rtk_mala", "energy": "exact", "target": "score"},
        {
            "status": "complete",
            "nfe": 16,
            "seconds": 1.5,
            "dataset/dim": 2,
            "sample/sliced_w2": 0.1,
            "sample/baseline/sliced_w2": 0.08,
            "stats/acceptance": [0.5, 0.7],
        },
    )
    fake_run(tmp_path, "b", {"name": "ddim", "eta": 0.0})
    rows = sort_rows([sample_row(p) for p in find_runs([tmp_path])])
    assert [r["sampler"] for r in rows] == ["ddim", "rtk_mala"]
    assert rows[0]["status"] == "failed or unfinished"
    done = rows[1]
    assert (done["nfe"], done["sliced_w2"], done["acceptance"], done["variant"]) == (16, 0.1, 0.6, "energy=exact")
    write_table(rows, SAMPLE_COLUMNS, tmp_path / "T", "title", "note")
    md = (tmp_path / "T.md").read_text().splitlines()
    assert md[0] == "# title" and md[4].startswith("| model | dim | sampler | variant | nfe_budget | nfe |")
    assert "| oracle" not in md[6] and "failed or unfinished" in md[6]
    assert len((tmp_path / "T.csv").read_text().splitlines()) == 3


def test_nfe_budget_fits_every_sampler():
    for name, (schema, _, _) in SAMPLERS.items():
        for nfe in (3, 10, 100):
            s = settings_for(schema(nfe=nfe))
            expected = {
                "ddim": s.get("steps"),
                "ddpm": s.get("steps"),
                "pf_ode": 2 * s.get("steps", 0) - 1,
                "dddm": s.get("levels", 0) * s.get("iterations", 0),
                # the first x0_hat; per segment the score at the jump, the curvature probe and the steps
                "rtk_mala": s.get("segments", 0) * (2 + s.get("warmup_steps", 0) + s.get("inner_steps", 0)) + 1,
                "rtk_uld": s.get("segments", 0) * (2 + s.get("warmup_steps", 0) + s.get("inner_steps", 0)) + 1,
            }[name]
            assert expected <= nfe, (name, nfe, s)
            assert expected >= 0.75 * nfe, (name, nfe, s)


def test_report_command_sorts_runs_into_tables(tmp_path):
    import json as _json

    from tests.conftest import run_cli

    root = tmp_path / "runs"
    proc = run_cli(
        "train",
        "experiment=t6_mog",
        "trainer.max_steps=3",
        "trainer.batch_size=500",
        f"hydra.run.dir={root / 't6' / 'large'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    t7 = root / "t7" / "d8_uniform"
    t7.mkdir(parents=True)
    for d, steps in ((8, 16), (32, 32)):
        job = root / "t7" / f"d{d}_uniform"
        job.mkdir(parents=True, exist_ok=True)
        (job / "metrics.json").write_text(
            _json.dumps({"dim": d, "grid": "uniform", "steps": steps, "curve": {"16": 1.5}, "n": 100})
        )
    failed = root / "sweep" / "job0" / ".hydra"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text(
        "command: sample\nseed: 0\nmodel: {name: mog_oracle}\ndataset: {dim: 2}\nsampler: {name: ddim, steps: 5}\n"
    )
    out = tmp_path / "tables"
    proc = run_cli("report", f"runs={root}", f"out={out}", f"hydra.run.dir={tmp_path / 'report'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("T6", "T7", "T1_T2"):
        for suffix in (".csv", ".md", ".tex"):
            assert (out / f"{name}{suffix}").is_file(), name + suffix
    assert "large" in (out / "T6.md").read_text()
    assert "failed or unfinished" in (out / "T1_T2.md").read_text()  # never silently dropped
    assert "ddpm uniform at horizon n/a: 0.50" in (out / "T7.md").read_text()  # 16 → 32 steps over 8 → 32: d^(1/2)
    assert "\\begin{tabular}" in (out / "T6.tex").read_text()
    metrics = _json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["rows/T6"] == 1 and metrics["rows/T7"] == 2 and metrics["rows/T1_T2"] == 1
    missing = run_cli("report", f"runs={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_sort_rows_orders_numbers_inside_labels_by_value():
    from rtkrun.report.rows import natural_key

    base = {"model": "mog_oracle", "dim": 2, "sampler": "ddim"}
    rows = [{**base, "variant": v} for v in ("steps=10", "steps=5", "steps=100", "steps=20")]
    rows += [{**base, "sampler": "rtk_mala", "variant": f"step_size={h}"} for h in ("0.1", "0.05", "1e-3", "0.5")]
    rows.append({**base, "dim": 16, "variant": "steps=5"})
    ordered = [(r["dim"], r["variant"]) for r in sort_rows(rows)]
    assert ordered == [
        (2, "steps=5"),
        (2, "steps=10"),
        (2, "steps=20"),
        (2, "steps=100"),
        (2, "step_size=1e-3"),
        (2, "step_size=0.05"),
        (2, "step_size=0.1"),
        (2, "step_size=0.5"),
        (16, "steps=5"),
    ]
    assert natural_key("a2b") < natural_key("a10b") and natural_key("") == ()


def test_baselines_are_kept_per_sample_size():
    from rtkrun.report.output import baseline_levels

    rows = [
        {"n": 10000, "baseline/sliced_w2": 0.04},
        {"n": 2000, "baseline/sliced_w2": 0.1},
        {"n": 2000, "baseline/sliced_w2": 0.12},
        {"n": 2000},
    ]
    assert baseline_levels(rows, "sliced_w2") == {2000: pytest.approx(0.11), 10000: 0.04}


def test_mog_descriptions_carry_the_off_mode_fraction():
    from rtkrun.data.mog import MogDataset

    line = MogDataset.describe({"sliced_w2": 0.5, "baseline/sliced_w2": 0.1, "mode_tv": 0.2, "off_mode": 0.375})
    assert line == "sliced W2 0.5 (true vs true 0.1), mode TV 0.2, off-mode 37.5 %"


def test_docs_and_configs_point_only_inside_the_repository():
    """A clone has no ../shared: README, docs, configs, code and scripts cite docs/ instead, and
    every relative Markdown link in README and docs/ resolves."""
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    files = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "conf").rglob("*.yaml")]
    files += [*(root / "rtkrun").rglob("*.py"), *(root / "scripts").glob("*.py")]
    for path in files:
        text = path.read_text()
        for outside in ("REFERENCE.md", "PAPER_TABLES.md", "DESIGN.md", "../shared"):
            assert outside not in text, (path, outside)
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)\)", text):
                if "://" not in target:
                    assert (path.parent / target).exists(), (path, target)


def test_rows_are_labelled_by_the_settings_the_runs_used(tmp_path):
    """T1/T2 labels come from metrics.json's effective settings: a budget that cut DDDM's levels
    shows the levels that ran, and a swept setting keeps its label where it equals the default
    (RTK-MALA's step_size 0.5), while an unswept default stays out of the label."""
    from tests.conftest import run_cli

    small = ["n_samples=200", "batch_size=200", "evaluation.w2_max_n=200", "evaluation.mmd_max_n=200"]
    root = tmp_path / "runs"
    for step in ("0.25", "0.5"):
        proc = run_cli(
            "sample", "model=mog_oracle", "sampler=rtk_mala", f"sampler.step_size={step}", "sampler.nfe=20", *small,
            f"hydra.run.dir={root / f'rtk_{step}'}", cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "sample", "model=mog_flow_oracle", "model.ode_steps=10", "sampler=dddm", "sampler.levels=5", "sampler.nfe=2",
        *small, f"hydra.run.dir={root / 'dddm'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "tables"
    assert run_cli("report", f"runs={root}", f"out={out}", cwd=tmp_path).returncode == 0
    rows = {r["run_dir"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out / "T1_T2.csv"))}
    assert rows["dddm"]["variant"] == "levels=2"  # the budget of 2 NFE ran 2 levels, not the 5 asked for
    assert rows["rtk_0.25"]["variant"] == "step_size=0.25" and rows["rtk_0.5"]["variant"] == "step_size=0.5"
