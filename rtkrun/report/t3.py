"""T3: regularity of the learned DDDM map, one row per (source, noise level) of an
``rtkrun diagnose`` run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtkrun.report.output import write_table

NAME = "T3"
T3_COLUMNS = [
    "model",
    "dim",
    "estimator",
    "source",
    "t",
    "n",
    "L/median",
    "L/p90",
    "sigma_min/median",
    "R/median",
    "B_sq/median",
    "margin/median",
    "paper_margin/median",
    "true/median",
    "certified",
    "paper_certified",
    "strongly_convex",
    "paper_false_claims",
    "run_dir",
]


T3_NOTE = (
    "Per row: the median over the points at one noise level t, along the DDDM sampler's trajectory or at "
    "data-derived x_t; sigma = sqrt(1 - alpha_bar_t). `certified`: the corrected margin "
    "((1-L)+^2 - R sqrt(B_sq))/sigma^2 > 0; `paper_false_claims`: the paper's margin ((1-L)^2 - R B_sq)/sigma^2 "
    "> 0 where the true lambda_min <= 0. "
    "`estimator=exact`: every column is exact (float64 Jacobians and Hessians). `estimator=lanczos` "
    "(matrix-free, large d): `L` is the Golub–Kahan–Lanczos estimate, a lower bound of ‖J‖₂; `sigma_min` "
    "and `true` are Lanczos Ritz values, upper bounds of σ_min(I + J) and λ_min(∇²g); `B_sq` is the "
    "ascent lower bound of B_sq. There `margin` (certified) uses L plus its residual bound and the "
    "Hutchinson upper value of Σ‖H_i‖²_F, so it is never optimistic, while `paper_margin` uses the "
    "lower bounds, so it is at least as optimistic as the paper's expression."
)


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    return cfg is not None and cfg.get("command") == "diagnose"


def diagnose_rows(run_dir: Path) -> list[dict[str, Any]]:
    """T3 rows of one ``rtkrun diagnose`` run: one per (source, noise level)."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return [{"run_dir": str(run_dir), "source": "failed or unfinished"}]
    m = json.loads(metrics_path.read_text())
    groups: dict[str, dict[str, Any]] = {}
    for key, value in m.items():
        if key.startswith("diag/"):
            head, t_stat = key[len("diag/") :].split("/t=", 1)
            t, _, stat = t_stat.partition("/")
            row = groups.setdefault(f"{head}|{t}", {"source": head, "t": float(t)})
            row[stat] = value
    base = {
        "model": "learned" if m.get("ckpt") else m.get("model"),
        "dim": m.get("dataset/dim"),
        "estimator": m.get("estimator"),
        "run_dir": str(run_dir),
    }
    return [{**base, **row} for row in sorted(groups.values(), key=lambda r: (r["source"], -r["t"]))]


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows = [row for p in run_dirs for row in diagnose_rows(p)]
    write_table(rows, T3_COLUMNS, out / NAME, "T3: regularity of the learned DDDM map", T3_NOTE)
    return {NAME: len(rows)}
