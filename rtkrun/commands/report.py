"""``rtkrun report``: sort every run directory under ``runs`` into the tables it feeds and write
them (CSV, Markdown, LaTeX) with their figures into ``out``. Rows come only from run
directories; failed or unfinished jobs are listed as such."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtkrun import runs as run_files
from rtkrun.errors import RtkrunError
from rtkrun.report import (
    SAMPLE_COLUMNS,
    SAMPLE_NOTE,
    T3_COLUMNS,
    T3_NOTE,
    T4_COLUMNS,
    T5_COLUMNS,
    T6_COLUMNS,
    T7_COLUMNS,
    dataset_of,
    diagnose_rows,
    find_runs,
    fit_exponent,
    is_t7_run,
    plot_quality_vs_nfe,
    sample_row,
    sort_rows,
    t4_quoted_rows,
    t4_rows,
    t5_quoted_rows,
    t5_rows,
    t6_row,
    t7_row,
    write_table,
)
from rtkrun.report_t8 import SUMMARY_METRIC, T8_COLUMNS, T8_NOTE, is_t8_run, plot_t8, t8_rows, t8_summary
from rtkrun.rundir import provenance

log = logging.getLogger("rtkrun")


def damage(run_dir: Path) -> str | None:
    """Why a run directory cannot be read (a torn ``.hydra/config.yaml`` or ``metrics.json``,
    as a kill during a write leaves them), or None."""
    try:
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception as e:  # YAML and OmegaConf raise many types for a torn file
        return f".hydra/config.yaml is unreadable ({type(e).__name__})"
    if not isinstance(cfg, DictConfig):
        return ".hydra/config.yaml is not a mapping"
    try:
        run_files.read_json_object(run_dir / "metrics.json")
    except run_files.DamagedFile as e:
        return str(e).removeprefix(f"{run_dir}/")
    return None


def _kind(run_dir: Path) -> str:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    command = cfg.get("command")
    if command == "train" and is_t8_run(OmegaConf.to_container(cfg, resolve=False)):
        return "T8"  # a training study on any dataset
    if command in ("sample", "train", "evaluate"):
        dataset = dataset_of(run_dir)
        if dataset in ("qm9", "cifar10"):
            return {"qm9": "T4", "cifar10": "T5"}[dataset]
    if command == "train":
        trainer, model = cfg.get("trainer") or {}, cfg.get("model") or {}
        return "T6" if trainer.get("fixed_t") is not None and model.get("name") == "mog_student" else "other"
    return {"sample": "T1_T2", "diagnose": "T3"}.get(command, "other")


def report(run, run_dir: Path) -> dict[str, Any]:
    roots = [Path(r) for r in ([run.runs] if isinstance(run.runs, str) else list(run.runs))]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise RtkrunError(f"runs={missing[0]} is not a directory; pass runs=<dir> or runs=[<dir>,<dir>]")
    out = Path(run.out)
    groups: dict[str, list[Path]] = {"T1_T2": [], "T3": [], "T4": [], "T5": [], "T6": [], "T8": [], "other": []}
    damaged = []
    for found in find_runs(roots):
        reason = damage(found)
        if reason is not None:
            log.warning("%s is damaged and left out of the tables: %s", found, reason)
            damaged.append({"directory": str(found), "problem": reason})
            continue
        groups[_kind(found)].append(found)
    t7_dirs = sorted({p.parent for root in roots for p in root.rglob("metrics.json") if is_t7_run(p.parent)})
    written: dict[str, Any] = {}
    if groups["T1_T2"]:
        rows = sort_rows([sample_row(p) for p in groups["T1_T2"]])
        write_table(rows, SAMPLE_COLUMNS, out / "T1_T2", "T1/T2: samplers on the mixture of Gaussians", SAMPLE_NOTE)
        plot_quality_vs_nfe([r for r in rows if r.get("status") == "complete"], out / "T1_T2.png")
        written["T1_T2"] = len(rows)
    if groups["T3"]:
        rows = [row for p in groups["T3"] for row in diagnose_rows(p)]
        write_table(rows, T3_COLUMNS, out / "T3", "T3: regularity of the learned DDDM map", T3_NOTE)
        written["T3"] = len(rows)
    if groups["T4"]:
        rows = [row for p in groups["T4"] for row in t4_rows(p)] + t4_quoted_rows()
        note = "Percent. Rows marked (quoted) are the EDM and GeoBFN papers' numbers, not measured here."
        write_table(rows, T4_COLUMNS, out / "T4", "T4: QM9 samplers", note)
        written["T4"] = len(rows)
    if groups["T5"]:
        rows = [row for p in groups["T5"] for row in t5_rows(p)] + t5_quoted_rows()
        note = "FID against the training set, n stated. Rows marked (quoted) are published numbers (50k samples)."
        write_table(rows, T5_COLUMNS, out / "T5", "T5: CIFAR-10 samplers", note)
        written["T5"] = len(rows)
    if groups["T6"]:
        rows = []
        for p in groups["T6"]:
            try:
                rows.append(t6_row(p))
            except (OSError, ValueError, KeyError, IndexError):
                rows.append({"label": p.name, "run_dir": str(p), "init": "failed or unfinished"})
        write_table(rows, T6_COLUMNS, out / "T6", "T6: learning regimes of the tanh student")
        written["T6"] = len(rows)
    if t7_dirs:
        rows = [t7_row(p) for p in t7_dirs]
        grids = sorted({r["grid"] for r in rows})
        fits = {g: fit_exponent([r for r in rows if r["grid"] == g]) for g in grids}
        note = "Fitted exponents (steps ∝ d^k): " + ", ".join(
            f"{g} {k:.2f}" if k is not None else f"{g} n/a" for g, k in fits.items()
        )
        write_table(rows, T7_COLUMNS, out / "T7", "T7: DDPM steps vs dimension with the exact score", note)
        written["T7"] = len(rows)
        written.update({f"T7/exponent/{g}": k for g, k in fits.items()})
    t8 = [row for p in groups["T8"] for row in t8_rows(p)]
    for kind, stem, title, metric_name in (
        ("mog", "T8", "the DDDM training study", "sliced W2 ÷ true-vs-true baseline"),
        ("qm9", "T8_qm9", "the DDDM training study on QM9", "atom stability (%)"),
    ):
        rows = [r for r in t8 if r["kind"] == kind]
        if not rows:
            continue
        write_table(rows, T8_COLUMNS[kind], out / stem, f"{stem}: {title}", T8_NOTE[kind])
        summary, columns = t8_summary(rows, SUMMARY_METRIC[kind])
        note = f"{metric_name[0].upper()}{metric_name[1:]} per evaluation sampler; every number of {stem}.md."
        heading = f"{stem} summary: {metric_name} by variant and epoch"
        write_table(summary, columns, out / f"{stem}_summary", heading, note)
        plot_t8(rows, out / f"{stem}.png", metric=SUMMARY_METRIC[kind])
        written[stem] = len(rows)
    if damaged:
        write_table(damaged, ["directory", "problem"], out / "damaged", "Run directories left out: damaged files")
    if not written:
        raise RtkrunError(f"no run directories under {', '.join(map(str, roots))} feed a table (T1–T8)")
    metrics = {"status": "complete", **provenance(run), "out": str(out), "skipped": len(groups["other"])}
    metrics["damaged"] = len(damaged)
    metrics.update({f"rows/{k}": v for k, v in written.items()})
    run_files.write_json(run_dir / "metrics.json", metrics)
    log.info("tables %s written to %s", ", ".join(k for k in written if "/" not in k), out.resolve())
    return metrics
