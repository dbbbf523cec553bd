"""Collect run directories into tables (CSV + Markdown) and a quality-vs-NFE figure.

``rtkrun report runs=DIR`` (``commands/report.py``) sorts every run directory under DIR into the
tables of docs/tables.md it feeds (MoG sample runs: T1/T2; diagnose runs: T3; QM9 and CIFAR-10
sample, train and evaluate runs: T4 and T5; fixed-noise student runs: T6; step searches: T7). Rows come only from run
directories: ``.hydra/config.yaml`` for what was run and ``metrics.json`` for what it measured.
A job without ``metrics.json`` is listed as failed or unfinished, never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rtkrun.runs import DamagedFile, atomic_write_bytes, read_json_object, save_figure

SAMPLE_COLUMNS = [
    "model",
    "dim",
    "sampler",
    "variant",
    "nfe_budget",
    "nfe",
    "energy_evals",
    "oracle_calls",
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
    "name",
    "tags",
    "status",
    "run_dir",
]
OUT_FIX = "choose a writable out=<dir> with free space"
SAMPLE_NOTE = (
    "NFE is counted (network evaluations per sample). `energy_evals`: exact log_prob calls of RTK-MALA "
    "with energy=exact, not in NFE. `oracle_calls`: the flow-map oracle's cost; its one NFE is a whole "
    "Heun solve of the PF-ODE, so its rows stay off the NFE axis of the figure. `baseline/…` is true vs "
    "true at the same n."
)
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
        "name": cfg.get("name"),
        "tags": " ".join(cfg.get("tags") or []) or None,
        "run_dir": str(run_dir),
    }
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return {**row, "status": "failed or unfinished"}
    m = json.loads(metrics_path.read_text())
    row["dim"] = m.get("dataset/dim", row["dim"])  # a checkpoint fixes the dataset
    if "name" in m:  # the labels the run recorded
        row["name"], row["tags"] = m["name"], " ".join(m.get("tags") or []) or None
    row.update({k: m.get(f"sample/{k}") for k in SAMPLE_COLUMNS if m.get(f"sample/{k}") is not None})
    acc = [a for a in m.get("stats/acceptance") or [] if a is not None and a == a]  # None/NaN: no MALA steps
    contraction = m.get("stats/contraction")
    row.update(
        {
            "nfe": m.get("nfe"),
            "energy_evals": m.get("stats/energy_evals") or None,  # exact log_prob calls, outside NFE
            "nfe_budget": m.get("nfe_budget"),
            "seconds": m.get("seconds"),
            "status": m.get("status"),
            "acceptance": _round(sum(acc) / len(acc)) if acc else None,
            "contraction": _round(contraction[-1][-1]) if contraction and contraction[-1] else None,
        }
    )
    if cfg["model"]["name"] == "mog_flow_oracle" and row["nfe"]:
        # each "NFE" of the exact flow map is a whole Heun solve of the PF-ODE: 2·steps − 1 oracle calls
        row["oracle_calls"] = row["nfe"] * (2 * cfg["model"].get("ode_steps", 200) - 1)
    return row


T4_COLUMNS = [
    "source",
    "sampler",
    "variant",
    "nfe",
    "atom_stability",
    "mol_stability",
    "validity",
    "valid_x_unique",
    "novelty",
    "ms_per_molecule",
    "n",
    "seed",
    "status",
    "run_dir",
]
T4_METRICS = ("atom_stability", "mol_stability", "validity", "valid_x_unique", "novelty")
# Quoted from the EDM and GeoBFN papers' QM9 tables (percent): atom stability, molecule stability, validity, V×U.
T4_QUOTED = {
    "EDM paper: data": (99.0, 95.2, 97.7, 97.7),
    "EDM paper: EDM": (98.7, 82.0, 91.9, 90.7),
    "GeoBFN paper: GeoBFN": (98.3, 85.1, 92.3, 90.7),
}
T4_QUOTED_NFE = {"EDM paper: EDM": 1000, "GeoBFN paper: GeoBFN": 50}


def _percent(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: round(100 * scores[k], 2) for k in T4_METRICS if scores.get(k) is not None}


def scored_rows(run_dir: Path) -> list[dict[str, Any]]:
    """What a ``sample``, ``train`` or ``evaluate`` run directory measured, one entry per sampler:
    {source, sampler, variant, nfe, seconds, scores, seed, status, run_dir}. A sample run gives
    one entry, a train run one per evaluation sampler, an evaluate run one (re-scored samples,
    or ``samples=data``: the data row). Without ``metrics.json`` the job is listed as failed."""
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    command = cfg.get("command")
    base = {"seed": cfg.get("seed"), "run_dir": str(run_dir)}
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        sampler = cfg.get("sampler") or {}
        row = {"source": f"rtkrun: {command}", "sampler": sampler.get("name"), "variant": _variant(sampler)}
        return [{**base, **row, "scores": {}, "status": "failed or unfinished"}]
    m = json.loads(metrics_path.read_text())
    base["status"] = m.get("status")

    def scores(prefix: str) -> dict[str, Any]:
        return {k.removeprefix(prefix): v for k, v in m.items() if k.startswith(prefix)}

    if command == "sample":
        sampler = cfg["sampler"]
        row = {"source": "rtkrun", "sampler": sampler["name"], "variant": _variant(sampler), "nfe": m.get("nfe")}
        return [{**base, **row, "seconds": m.get("seconds"), "scores": scores("sample/")}]
    if command == "evaluate":
        data = str(m.get("samples", "")).startswith("data:")
        row = {"source": f"rtkrun: {m['samples']}" if data else "rtkrun: re-scored", "sampler": "" if data else "?"}
        return [{**base, **row, "scores": scores("evaluate/")}]
    rows = []
    for label, sampler in (cfg.get("evaluation") or {}).get("samplers", {}).items():
        found = scores(f"eval/{label}/")
        row = {"source": f"rtkrun: train/{label}", "sampler": sampler.get("name"), "variant": _variant(sampler)}
        rows.append({**base, **row, "nfe": found.get("nfe"), "seconds": found.get("seconds"), "scores": found})
    return rows


def _per_item_ms(row: dict[str, Any], n: int | None) -> float | None:
    return _round(1e3 * row["seconds"] / n) if n and row.get("seconds") else None


def t4_rows(run_dir: Path) -> list[dict[str, Any]]:
    """QM9 rows (metrics in percent; ms per molecule = sampling seconds / molecules)."""
    out = []
    for row in scored_rows(run_dir):
        scores = row.pop("scores")
        n = scores.get("n_molecules")
        out.append({**row, **_percent(scores), "n": n, "ms_per_molecule": _per_item_ms(row, n)})
    return out


def t5_rows(run_dir: Path) -> list[dict[str, Any]]:
    """CIFAR-10 rows (FID with its sample and reference counts; ms per image)."""
    out = []
    for row in scored_rows(run_dir):
        scores = row.pop("scores")
        n = scores.get("fid_n")
        fid = {k: scores.get(k) for k in ("fid", "fid_n", "fid_reference_n")}
        out.append({**row, **fid, "ms_per_image": _per_item_ms(row, n)})
    return out


T5_COLUMNS = [
    "source",
    "sampler",
    "variant",
    "nfe",
    "fid",
    "fid_n",
    "fid_reference_n",
    "ms_per_image",
    "seed",
    "status",
    "run_dir",
]
# Quoted from the papers: unconditional CIFAR-10 FID at (NFE), 50k samples.
T5_QUOTED = {
    "DDPM": {1000: 3.17},
    "DDIM": {10: 13.36, 20: 6.84, 50: 4.67, 100: 4.16},
    "EDM": {35: 1.97},
    "iCT": {1: 2.83, 2: 2.46},
    "DDDM": {1: 2.57, 2: 2.33, 1000: 1.79},
}


def t5_quoted_rows() -> list[dict[str, Any]]:
    return [
        {"source": f"{name} paper (quoted)", "nfe": nfe, "fid": fid, "fid_n": 50_000, "status": "quoted"}
        for name, by_nfe in T5_QUOTED.items()
        for nfe, fid in by_nfe.items()
    ]


def t4_quoted_rows() -> list[dict[str, Any]]:
    """The published rows, marked as quoted, never measured here."""
    return [
        {
            "source": f"{name} (quoted)",
            "nfe": T4_QUOTED_NFE.get(name),
            **dict(zip(T4_METRICS[:4], values)),
            "status": "quoted",
        }
        for name, values in T4_QUOTED.items()
    ]


def dataset_of(run_dir: Path) -> str | None:
    """The dataset a run directory measured (a checkpoint fixes it, so metrics.json comes first)."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        try:
            name = json.loads(metrics.read_text()).get("dataset/name")
        except (OSError, ValueError):
            name = None
        if name is not None:
            return name
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return (cfg.get("dataset") or {}).get("name")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _latex(v: Any) -> str:
    text = _fmt(v)
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
        text = text.replace(a, b)
    return text


def write_table(rows: list[dict[str, Any]], columns: list[str], stem: Path, title: str, note: str = "") -> None:
    """``stem``.csv, ``stem``.md and ``stem``.tex (a booktabs tabular), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(stem.with_suffix(".csv"), buf.getvalue().encode(), OUT_FIX)
    shown = [c for c in columns if c != "run_dir"]
    lines = [f"# {title}", "", note, "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |" for r in rows]
    atomic_write_bytes(stem.with_suffix(".md"), ("\n".join(lines) + "\n").encode(), OUT_FIX)
    tex = [
        f"% {title}. Generated by rtkrun; {note}".replace("\n", " "),
        "\\begin{tabular}{" + "l" * len(shown) + "}",
        "\\toprule",
        " & ".join(_latex(c) for c in shown) + " \\\\",
        "\\midrule",
        *(" & ".join(_latex(r.get(c)) for c in shown) + " \\\\" for r in rows),
        "\\bottomrule",
        "\\end{tabular}",
    ]
    atomic_write_bytes(stem.with_suffix(".tex"), ("\n".join(tex) + "\n").encode(), OUT_FIX)


def write_docs_page(docs: str | Path, script: str, tables: list[Path], figure: Path | None = None) -> None:
    """A ``docs/`` page: a generated-by line naming ``script --docs docs``, the machine and date,
    then the given Markdown tables; written atomically."""
    import datetime
    import os
    import platform

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, no GPU"
    head = (
        f"<!-- generated by `python {script} --docs {docs}` -->\n"
        f"Machine: {machine}. Date: {datetime.date.today()}."
        + (f" Figure: `{figure}`." if figure is not None else "")
        + "\n\n"
    )
    body = "\n".join(t.read_text() for t in tables)
    atomic_write_bytes(Path(docs), (head + body).encode())


def baseline_levels(rows: list[dict[str, Any]], metric: str) -> dict[Any, float]:
    """The true-vs-true level of ``metric`` per sample size n (mean over the rows of that n),
    by increasing n. The level falls with n, so each n keeps its own: one mean over sizes would
    let a sampler at n = 10,000 look better than the data at n = 2,000."""
    by_n: dict[Any, list[float]] = {}
    for r in rows:
        if r.get(f"baseline/{metric}") is not None:
            by_n.setdefault(r.get("n"), []).append(r[f"baseline/{metric}"])
    return {n: sum(v) / len(v) for n, v in sorted(by_n.items(), key=lambda kv: kv[0] or 0)}


def plot_quality_vs_nfe(rows: list[dict[str, Any]], path: Path, metric: str = "sliced_w2") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list] = {}
    for r in rows:
        # the flow-map oracle's one "NFE" is a whole ODE solve: it has no place on the NFE axis
        if r.get(metric) is not None and r.get("nfe") and not r.get("oracle_calls"):
            groups.setdefault((r["model"], r["dim"]), []).append(r)
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, ((model, dim), rs) in zip(axes[0], sorted(groups.items(), key=lambda kv: str(kv[0]))):
        for label in sorted({(r["sampler"], r["variant"]) for r in rs}):
            pts = sorted((r["nfe"], r[metric]) for r in rs if (r["sampler"], r["variant"]) == label)
            ax.plot(*zip(*pts), marker="o", label=" ".join(x for x in label if x))
        levels = baseline_levels(rs, metric)
        styles = ("--", ":", "-.", (0, (1, 4)))
        for k, (n, level) in enumerate(levels.items()):
            label = "true vs true" if len(levels) == 1 else f"true vs true, n = {n}"
            ax.axhline(level, color="k", ls=styles[k % len(styles)], lw=1, label=label)
        if levels:  # a diverging sampler leaves the frame
            ax.set_ylim(top=min(ax.get_ylim()[1], 1000 * max(levels.values())))
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=metric, title=f"{model}, d = {dim}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, fix=OUT_FIX, dpi=100)


def natural_key(text: Any) -> tuple:
    """Sort key that orders the numbers inside a label by value: steps=5 before steps=10,
    step_size=0.05 before step_size=0.1."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", str(text))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by model, dimension, sampler, its settings (numbers by value) and NFE."""
    return sorted(
        rows,
        key=lambda r: (
            str(r["model"]),
            r["dim"] or 0,
            str(r["sampler"]),
            natural_key(r["variant"]),
            r.get("nfe_budget") or 0,
            r.get("nfe") or 0,
        ),
    )


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
    "`estimator=exact`: every column is exact (float64 Jacobians and Hessians). `estimator=lanczos` "
    "(matrix-free, large d): `L` is the Golub–Kahan–Lanczos estimate, a lower bound of ‖J‖₂; `sigma_min` "
    "and `true` are Lanczos Ritz values, upper bounds of σ_min(I + J) and λ_min(∇²g); `B_sq` is the "
    "ascent lower bound of B_sq. There `margin` (certified) uses L plus its residual bound and the "
    "Hutchinson upper value of Σ‖H_i‖²_F, so it is never optimistic, while `paper_margin` uses the "
    "lower bounds, so it is at least as optimistic as the paper's expression."
)


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


# -- T7: DDPM steps vs dimension -----------------------------------------------------------------
T7_COLUMNS = ["dim", "grid", "horizon", "steps", "quality_ratio", "evaluations", "n", "seeds", "tol", "run_dir"]


def is_t7_run(run_dir: Path) -> bool:
    """A step-search directory written by scripts/make_t7.py (``metrics.json`` with a curve)."""
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
