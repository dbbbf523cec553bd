"""T7: the DDPM steps a dimension needs with the exact score, from ``rtkrun search`` runs
(``metrics.json`` with the search's curve; step-search directories written before the command
existed have no Hydra config and are read the same way), with the fitted exponent of
steps ∝ d^k per (sampler, grid, horizon) and the figure of steps against d."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rtkrun.report.output import OUT_FIX, pyplot, write_table
from rtkrun.runs import DamagedFile, read_json_object, save_figure

NAME = "T7"
T7_COLUMNS = [
    "dim",
    "sampler",
    "grid",
    "horizon",
    "steps",
    "quality_ratio",
    "evaluations",
    "n",
    "seeds",
    "tol",
    "run_dir",
]


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    """An ``rtkrun search`` run, or an older step-search directory (``metrics.json`` with a grid
    and a curve; no Hydra config)."""
    if cfg is not None:
        return cfg.get("command") == "search"
    try:
        m = read_json_object(run_dir / "metrics.json")
    except DamagedFile:
        return False
    return m is not None and "grid" in m and "curve" in m


def t7_row(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.exists():
        return {"steps": None, "status": "failed or unfinished", "run_dir": str(run_dir)}
    return {"sampler": "ddpm", **json.loads(path.read_text()), "run_dir": str(run_dir)}


def _shown(horizon: float | None) -> str:
    return "n/a" if horizon is None else f"{horizon:g}"  # step searches made before horizons were recorded


def _series(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows per (sampler, grid, horizon): one exponent and one line of the figure each."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("grid") is not None:
            out.setdefault((r["sampler"], r["grid"], r.get("horizon")), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple(map(str, kv[0]))))


def plot_steps_vs_dim(series: dict[tuple, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (sampler, grid, horizon), rows in series.items():
        pts = sorted((r["dim"], r["steps"]) for r in rows if r.get("steps"))
        if pts:
            slope = fit_exponent(rows)
            label = f"{sampler}, {grid}, horizon {_shown(horizon)}" + (
                f" (slope {slope:.2f})" if slope is not None else ""
            )
            ax.loglog(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("dimension d")
    ax.set_ylabel("steps to reach the target")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, fix=OUT_FIX, dpi=100)


def fit_exponent(rows: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of log(steps) against log(d) (rows with a found step count)."""
    pts = [(math.log(r["dim"]), math.log(r["steps"])) for r in rows if r.get("steps")]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows = sorted(
        (t7_row(p) for p in run_dirs),
        key=lambda r: (str(r.get("sampler")), str(r.get("grid")), r.get("horizon") or 0, r.get("dim") or 0),
    )
    series = _series(rows)
    fits = {key: fit_exponent(group) for key, group in series.items()}
    first = next((r for r in rows if r.get("grid") is not None), {})
    note = (
        f"Exact MoG denoiser; target: sliced W2 to the exact mixture <= {1 + first.get('tol', 1.0):g} x the exact "
        f"sampler's value at n = {first.get('n')} (mean of {first.get('seeds')} sample sets, the same at every "
        "step count); `horizon` is the OU horizon −log α(t_max). Fitted exponents (steps ∝ d^k): "
        + ", ".join(
            f"{s} {g} at horizon {_shown(h)}: " + (f"{k:.2f}" if k is not None else "n/a")
            for (s, g, h), k in fits.items()
        )
        + "."
    )
    write_table(rows, T7_COLUMNS, out / NAME, "T7: DDPM steps vs dimension with the exact score", note)
    if series:
        plot_steps_vs_dim(series, out / f"{NAME}.png")
    exponents = {f"T7/exponent/{s}/{g}/{_shown(h)}": k for (s, g, h), k in fits.items()}
    return {NAME: len(rows), **exponents}
