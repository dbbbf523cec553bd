"""Collect run directories into tables (CSV + Markdown) and a quality-vs-NFE figure.

A small collector for the MoG tables T1 and T2 (PAPER_TABLES.md); ``rtkrun report`` (the
reproduce issue) generalises it. Rows come only from run directories: ``.hydra/config.yaml``
for what was run and ``metrics.json`` for what it measured. A job without ``metrics.json`` is
listed as failed or unfinished, never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rtkrun.runs import atomic_write_bytes

SAMPLE_COLUMNS = [
    "model",
    "dim",
    "sampler",
    "variant",
    "nfe_budget",
    "nfe",
    "sliced_w2",
    "baseline/sliced_w2",
    "w2",
    "baseline/w2",
    "mmd",
    "baseline/mmd",
    "mode_tv",
    "baseline/mode_tv",
    "off_mode",
    "baseline/off_mode",
    "acceptance",
    "contraction",
    "seconds",
    "n",
    "seed",
    "status",
    "run_dir",
]
VARIANT_KEYS = ("energy", "solver", "levels", "segment_length", "step_size", "eta", "target")


def find_runs(roots: list[str | Path]) -> list[Path]:
    """Every directory under ``roots`` holding ``.hydra/config.yaml`` (single runs and sweep jobs)."""
    found = set()
    for root in map(Path, roots):
        for cfg in root.rglob(".hydra/config.yaml"):
            found.add(cfg.parent.parent)
    return sorted(found)


def _variant(sampler: dict[str, Any]) -> str:
    parts = [f"{k}={sampler[k]}" for k in VARIANT_KEYS if sampler.get(k) not in (None, "")]
    defaults = {"solver=heun", "target=score", "eta=0.0", "levels=1"}
    return " ".join(p for p in parts if p not in defaults)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def sample_row(run_dir: Path) -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    row: dict[str, Any] = {
        "model": "learned" if cfg.get("ckpt") else cfg["model"]["name"],
        "dim": cfg["dataset"]["dim"],
        "sampler": cfg["sampler"]["name"],
        "variant": _variant(cfg["sampler"]),
        "seed": cfg.get("seed"),
        "run_dir": str(run_dir),
    }
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return {**row, "status": "failed or unfinished"}
    m = json.loads(metrics_path.read_text())
    row["dim"] = m.get("dataset/dim", row["dim"])  # a checkpoint fixes the dataset
    row.update({k: m.get(f"sample/{k}") for k in SAMPLE_COLUMNS if m.get(f"sample/{k}") is not None})
    acc = [a for a in m.get("stats/acceptance") or [] if a is not None]  # None: a segment without MALA steps
    contraction = m.get("stats/contraction")
    row.update(
        {
            "nfe": m.get("nfe"),
            "nfe_budget": m.get("nfe_budget"),
            "seconds": m.get("seconds"),
            "status": m.get("status"),
            "acceptance": _round(sum(acc) / len(acc)) if acc else None,
            "contraction": _round(contraction[-1][-1]) if contraction and contraction[-1] else None,
        }
    )
    return row


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_table(rows: list[dict[str, Any]], columns: list[str], stem: Path, title: str, note: str = "") -> None:
    """``stem``.csv and ``stem``.md, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(stem.with_suffix(".csv"), buf.getvalue().encode())
    shown = [c for c in columns if c != "run_dir"]
    lines = [f"# {title}", "", note, "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |" for r in rows]
    atomic_write_bytes(stem.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


def plot_quality_vs_nfe(rows: list[dict[str, Any]], path: Path, metric: str = "sliced_w2") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list] = {}
    for r in rows:
        if r.get(metric) is not None and r.get("nfe"):
            groups.setdefault((r["model"], r["dim"]), []).append(r)
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, ((model, dim), rs) in zip(axes[0], sorted(groups.items(), key=lambda kv: str(kv[0]))):
        for label in sorted({(r["sampler"], r["variant"]) for r in rs}):
            pts = sorted((r["nfe"], r[metric]) for r in rs if (r["sampler"], r["variant"]) == label)
            ax.plot(*zip(*pts), marker="o", label=" ".join(x for x in label if x))
        base = [r[f"baseline/{metric}"] for r in rs if r.get(f"baseline/{metric}") is not None]
        if base:
            level = sum(base) / len(base)
            ax.axhline(level, color="k", ls="--", lw=1, label="true vs true")
            ax.set_ylim(top=min(ax.get_ylim()[1], 1000 * level))  # a diverging sampler leaves the frame
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=metric, title=f"{model}, d = {dim}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        rows,
        key=lambda r: (
            str(r["model"]),
            r["dim"],
            r["sampler"],
            r["variant"],
            r.get("nfe_budget") or 0,
            r.get("nfe") or 0,
        ),
    )


T3_COLUMNS = [
    "model",
    "dim",
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
        "run_dir": str(run_dir),
    }
    return [{**base, **row} for row in sorted(groups.values(), key=lambda r: (r["source"], -r["t"]))]


# -- T6: learning regimes of the tanh student --------------------------------------------------
T6_COLUMNS = [
    "label",
    "K",
    "dim",
    "t",
    "alpha",
    "sigma",
    "init",
    "eta_seed",
    "steps",
    "angle_start",
    "angle_min_small_norm",
    "distance_at_angle_min",
    "distance_start",
    "distance_end",
    "angle_factor_measured",
    "angle_factor_power_iteration",
    "distance_factor_measured",
    "run_dir",
]


def _geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def t6_row(run_dir: Path) -> dict[str, Any]:
    """One T6 row from a student run trained at a fixed noise level (``experiment=t6_mog``).

    Power-iteration phase (‖μ‖ < ‖μ*‖/2): the measured per-step factor of tan(angle) and the
    factor the seed's linearisation predicts, λ₂/λ₁ of (1 − 3η‖θ‖²)I + 2η θ*θ*ᵀ with θ = αμ,
    θ* = αμ* and η = 2·lr·α²σ²/d (our ε loss is σ²/d times the seed's score loss, and θ = αμ;
    the seed's gradient omits the 2 of the square), averaged geometrically over the phase.
    EM phase (‖μ‖ ≥ ‖μ*‖/2, distance above three times its final value): the measured per-step
    factor of the distance."""
    from rtkrun.config import typed_group
    from rtkrun.diffusion.schedules import build_schedule

    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tc, ds, model = cfg["trainer"], cfg["dataset"], cfg["model"]
    schedule = build_schedule(typed_group("schedule", cfg["schedule"]))
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(float(tc["fixed_t"]), dtype=torch.float64)))
    d, radius = int(ds["dim"]), float(ds["radius"])
    eta = 2 * float(tc["lr"]) * alpha**2 * sigma**2 / d
    angle = [r["angle_deg"] for r in records]
    dist = [r["distance"] for r in records]
    norm = [r["mu_norm"] for r in records]
    small = [i for i in range(len(records)) if norm[i] < radius / 2 and angle[i] > 0.05]
    measured_angle, predicted_angle = [], []
    for i in small:
        if i + 1 < len(records):
            measured_angle.append(math.tan(math.radians(angle[i + 1])) / math.tan(math.radians(angle[i])))
            theta2, star2 = (alpha * norm[i]) ** 2, (alpha * radius) ** 2
            predicted_angle.append((1 - 3 * eta * theta2) / (1 - 3 * eta * theta2 + 2 * eta * star2))
    floor = 3 * dist[-1]
    em = [i for i in range(len(records) - 1) if norm[i] >= radius / 2 and dist[i + 1] > floor]
    best = min(small or [0], key=lambda i: angle[i])
    return {
        "label": run_dir.name,
        "K": int(ds["n_components"]),
        "dim": d,
        "t": float(tc["fixed_t"]),
        "alpha": alpha,
        "sigma": sigma,
        "init": model.get("init", "random"),
        "eta_seed": eta,
        "steps": len(records),
        "angle_start": angle[0],
        "angle_min_small_norm": angle[best],
        "distance_at_angle_min": dist[best],
        "distance_start": dist[0],
        "distance_end": dist[-1],
        "angle_factor_measured": _geometric_mean(measured_angle),
        "angle_factor_power_iteration": _geometric_mean(predicted_angle) if model.get("symmetric", True) else None,
        "distance_factor_measured": _geometric_mean([dist[i + 1] / dist[i] for i in em]),
        "run_dir": str(run_dir),
    }
