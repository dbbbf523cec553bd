"""``rtkrun report``: sort every run directory under ``runs`` into the tables it feeds and write
them (CSV, Markdown, LaTeX) with their figures into ``out``. Rows come only from run
directories; failed or unfinished jobs are listed as such."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rtkrun import runs as run_files
from rtkrun.errors import RtkrunError
from rtkrun.report import TABLES
from rtkrun.report.output import write_docs_page, write_table
from rtkrun.report.rows import commands_that_made, damage, find_runs, run_config
from rtkrun.rundir import provenance

log = logging.getLogger("rtkrun")


def command_line() -> str:
    """``rtkrun report`` with this job's overrides, as typed (for a docs page's header)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra job (tests)
        overrides = []
    return " ".join(["rtkrun report", *overrides])


def report(run, run_dir: Path) -> dict[str, Any]:
    roots = [Path(r) for r in ([run.runs] if isinstance(run.runs, str) else list(run.runs))]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise RtkrunError(f"runs={missing[0]} is not a directory; pass runs=<dir> or runs=[<dir>,<dir>]")
    out = Path(run.out)
    feeds: dict[Any, list[Path]] = {table: [] for table in TABLES}
    damaged, skipped = [], 0
    configured = find_runs(roots)
    # directories a script wrote without a Hydra config (T7's step searches)
    bare = sorted({p.parent for root in roots for p in root.rglob("metrics.json")} - set(configured))
    for found in configured + bare:
        cfg = None
        if found in configured:
            reason = damage(found)
            if reason is not None:
                log.warning("%s is damaged and left out of the tables: %s", found, reason)
                damaged.append({"directory": str(found), "problem": reason})
                continue
            cfg = run_config(found)
        table = next((t for t in TABLES if t.matches(found, cfg)), None)
        if table is not None:
            feeds[table].append(found)
        elif cfg is not None:
            skipped += 1
    written: dict[str, Any] = {}
    for table, run_dirs in sorted(feeds.items(), key=lambda kv: kv[0].NAME):  # T1_T2 … T8
        if run_dirs:
            written.update(table.write(run_dirs, out))
    if damaged:
        write_table(damaged, ["directory", "problem"], out / "damaged", "Run directories left out: damaged files")
    if not written:
        raise RtkrunError(f"no run directories under {', '.join(map(str, roots))} feed a table (T1–T8)")
    if run.docs is not None:
        stems = [out / name for name in written if "/" not in name]
        figures = [p.with_suffix(".png") for p in stems if p.with_suffix(".png").exists()]
        made_by = commands_that_made([p for dirs in feeds.values() for p in dirs])
        write_docs_page(run.docs, command_line(), [p.with_suffix(".md") for p in stems], figures, made_by)
        log.info("docs page %s", run.docs)
    metrics = {"status": "complete", **provenance(run), "out": str(out), "skipped": skipped}
    metrics["damaged"] = len(damaged)
    metrics.update({f"rows/{k}": v for k, v in written.items()})
    run_files.write_json(run_dir / "metrics.json", metrics)
    log.info("tables %s written to %s", ", ".join(k for k in written if "/" not in k), out.resolve())
    return metrics
