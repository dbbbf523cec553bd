"""T6: learning regimes of the tanh student at a fixed noise level (``experiment=t6_mog``): the
power-iteration phase against its linearised prediction, then the EM-like phase."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from rtkrun.report.output import OUT_FIX, pyplot, write_table
from rtkrun.report.rows import run_config
from rtkrun.runs import save_figure

NAME = "T6"
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


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    if cfg is None or cfg.get("command") != "train":
        return False
    trainer, model = cfg.get("trainer") or {}, cfg.get("model") or {}
    return trainer.get("fixed_t") is not None and model.get("name") == "mog_student"


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
    from rtkrun.trainer import lr_per_seed_step

    cfg = run_config(run_dir, resolve=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tc, ds, model = cfg["trainer"], cfg["dataset"], cfg["model"]
    schedule = build_schedule(typed_group("schedule", cfg["schedule"]))
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(float(tc["fixed_t"]), dtype=torch.float64)))
    d, radius = int(ds["dim"]), float(ds["radius"])
    eta = tc.get("eta_seed") or float(tc["lr"]) / lr_per_seed_step(alpha, sigma, d)
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
    init, k = model.get("init", "random"), int(ds["n_components"])
    # the regime the start sets up: a small random μ (large noise) or a warm start near μ*
    label = f"{'large' if init == 'random' else 'small'}_t{float(tc['fixed_t']):g}" + (f"_K{k}" if k != 2 else "")
    return {
        "label": cfg.get("name") or label,
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


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """The angle and the distance to μ* against the gradient step, one line per run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        records = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        steps = [x["step"] for x in records]
        axes[0].semilogy(steps, [max(x["angle_deg"], 1e-3) for x in records], label=r["label"])
        axes[1].semilogy(steps, [max(x["distance"], 1e-4) for x in records], label=r["label"])
    axes[0].set_title("angle to μ* (degrees)")
    axes[1].set_title("distance to μ*")
    for ax in axes:
        ax.set_xlabel("gradient step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, fix=OUT_FIX, dpi=100)


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows, failed = [], []
    for p in run_dirs:
        try:
            rows.append(t6_row(p))
        except (OSError, ValueError, KeyError, IndexError):
            failed.append({"label": p.name, "run_dir": str(p), "init": "failed or unfinished"})
    rows.sort(key=lambda r: (r["K"], r["init"] != "random", -r["t"]))  # large noise first, then small
    note = (
        "mog_student (tanh, tied ±μ; K > 2: free means, Hungarian-matched), plain gradient descent on the ε loss "
        "at one noise level t with a fresh batch every step. Factors are per step, geometric means: tan(angle) "
        "over the small-norm phase (|μ| < |μ*|/2) next to the seed's power-iteration prediction λ₂/λ₁; the "
        "distance over the EM phase (|μ| ≥ |μ*|/2, above 3× its final value)."
    )
    write_table(rows + failed, T6_COLUMNS, out / NAME, "T6: learning regimes of the tanh student", note)
    if rows:
        plot_curves(rows, out / f"{NAME}.png")
    return {NAME: len(rows) + len(failed)}
