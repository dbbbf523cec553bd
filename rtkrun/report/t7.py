"""T7: the DDPM steps a dimension needs with the exact score, from the step-search directories
``scripts/make_t7.py`` writes (``metrics.json`` with the search's curve), with the fitted exponent
of steps ∝ d^k per grid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rtkrun.report.output import write_table
from rtkrun.runs import DamagedFile, read_json_object

NAME = "T7"
T7_COLUMNS = ["dim", "grid", "horizon", "steps", "quality_ratio", "evaluations", "n", "seeds", "tol", "run_dir"]


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    """A step-search directory (``metrics.json`` with a grid and a curve; no Hydra config)."""
    try:
        m = read_json_object(run_dir / "metrics.json")
    except DamagedFile:
        return False
    return m is not None and "grid" in m and "curve" in m


def t7_row(run_dir: Path) -> dict[str, Any]:
    return {**json.loads((run_dir / "metrics.json").read_text()), "run_dir": str(run_dir)}


def fit_exponent(rows: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of log(steps) against log(d) (rows with a found step count)."""
    pts = [(math.log(r["dim"]), math.log(r["steps"])) for r in rows if r.get("steps")]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows = [t7_row(p) for p in run_dirs]
    grids = sorted({r["grid"] for r in rows})
    fits = {g: fit_exponent([r for r in rows if r["grid"] == g]) for g in grids}
    note = "Fitted exponents (steps ∝ d^k): " + ", ".join(
        f"{g} {k:.2f}" if k is not None else f"{g} n/a" for g, k in fits.items()
    )
    write_table(rows, T7_COLUMNS, out / NAME, "T7: DDPM steps vs dimension with the exact score", note)
    return {NAME: len(rows), **{f"T7/exponent/{g}": k for g, k in fits.items()}}
