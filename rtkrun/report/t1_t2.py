"""T1/T2: samplers on the mixture of Gaussians, one row per ``rtkrun sample`` run (sliced W2,
W2, MMD, mode TV and off-mode fraction, each with its true-vs-true baseline at the same n), and
the quality-vs-NFE figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtkrun.report.output import plot_quality_vs_nfe, plot_swept, write_table
from rtkrun.report.rows import natural_key, prefixed, round3, run_config, used_settings, variant, varying_settings

NAME = "T1_T2"
SWEPT = ("step_size", "segment_length", "levels", "eta")  # sampler settings a sweep varies
PIVOT_KEYS = ("model", "dim", "sampler", "variant", "nfe_budget", "n")
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
SAMPLE_NOTE = (
    "NFE is counted (network evaluations per sample). `energy_evals`: exact log_prob calls of RTK-MALA "
    "with energy=exact, not in NFE. `oracle_calls`: the flow-map oracle's cost; its one NFE is a whole "
    "Heun solve of the PF-ODE, so its rows stay off the NFE axis of the figure. `baseline/…` is true vs "
    "true at the same n."
)


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    """A ``sample`` run (the datasets with tables of their own are matched before this one)."""
    return cfg is not None and cfg.get("command") == "sample"


def sample_row(run_dir: Path) -> dict[str, Any]:
    cfg = run_config(run_dir)
    row: dict[str, Any] = {
        "model": "learned" if cfg.get("ckpt") else cfg["model"]["name"],
        "dim": cfg["dataset"]["dim"],
        "sampler": cfg["sampler"]["name"],
        "variant": variant(cfg["sampler"]),  # relabelled by write() from the settings the run used
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
    settings = prefixed(m, "settings/")
    row["used"], row["variant"] = used_settings(cfg["sampler"], settings), variant(cfg["sampler"], settings)
    acc = [a for a in m.get("stats/acceptance") or [] if a is not None and a == a]  # None/NaN: no MALA steps
    contraction = m.get("stats/contraction")
    row.update(
        {
            "nfe": m.get("nfe"),
            "energy_evals": m.get("stats/energy_evals") or None,  # exact log_prob calls, outside NFE
            "nfe_budget": m.get("nfe_budget"),
            "seconds": m.get("seconds"),
            "status": m.get("status"),
            "acceptance": round3(sum(acc) / len(acc)) if acc else None,
            "contraction": round3(contraction[-1][-1]) if contraction and contraction[-1] else None,
        }
    )
    # the settings a sweep varies, as the run used them (metrics.json's effective settings)
    row["swept"] = {k: m.get(f"settings/{k}", cfg["sampler"].get(k)) for k in SWEPT}
    if cfg["model"]["name"] == "mog_flow_oracle" and row["nfe"]:
        # each "NFE" of the exact flow map is a whole Heun solve of the PF-ODE: 2·steps − 1 oracle calls
        row["oracle_calls"] = row["nfe"] * (2 * cfg["model"].get("ode_steps", 200) - 1)
    return row


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


def sweep_tables(rows: list[dict[str, Any]], metric: str = "sliced_w2") -> dict[str, tuple[list, list[str]]]:
    """Per swept setting (one that takes two or more values among rows equal in everything
    else): rows (model, dim, sampler, the rest of the variant, NFE budget, n) with ``metric`` at
    each value as columns, and the true-vs-true baseline; the T2 layout. {setting: (rows, columns)}."""
    out = {}
    for key in SWEPT:
        groups: dict[tuple, dict[str, Any]] = {}
        for r in rows:
            value = (r.get("swept") or {}).get(key)
            if value is None or r.get(metric) is None or r.get("status") != "complete":
                continue
            rest = " ".join(t for t in str(r["variant"]).split() if not t.startswith(f"{key}="))
            ident = (r["model"], r["dim"], r["sampler"], rest, r.get("nfe_budget"), r.get("n"))
            entry = groups.setdefault(ident, dict(zip(PIVOT_KEYS, ident), values={}))
            entry["values"][value] = r[metric]
            entry[f"baseline/{metric}"] = r.get(f"baseline/{metric}")
        swept = {g: e for g, e in groups.items() if len(e["values"]) >= 2}
        if not swept:
            continue
        values = sorted({v for e in swept.values() for v in e["values"]}, key=natural_key)
        table = []
        for ident in sorted(swept, key=lambda g: tuple(natural_key(x) for x in g)):
            entry = dict(swept[ident])
            table.append({**entry, **{f"{key}={v}": entry["values"].get(v) for v in values}})
        out[key] = (table, [*PIVOT_KEYS, *(f"{key}={v}" for v in values), f"baseline/{metric}"])
    return out


def labelled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose variant also names every setting that varies among their sampler's rows."""
    shown = varying_settings(rows)
    for r in rows:
        if r.get("used") is not None:
            r["variant"] = variant({"name": r["sampler"]}, r["used"], shown.get(str(r["sampler"]), set()))
    return rows


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows = sort_rows(labelled([sample_row(p) for p in run_dirs]))
    write_table(rows, SAMPLE_COLUMNS, out / NAME, "T1/T2: samplers on the mixture of Gaussians", SAMPLE_NOTE)
    complete = [r for r in rows if r.get("status") == "complete"]
    plot_quality_vs_nfe(complete, out / "T1_T2.png")
    written = {NAME: len(rows)}
    for key, (table, columns) in sweep_tables(rows).items():
        stem = out / f"{NAME}_{key}"
        note = f"Sliced W2 per value of the swept `{key}` (T2's layout); the other settings fixed per row."
        write_table(table, columns, stem, f"T1/T2 swept over {key}: sliced W2", note)
        plot_swept(table, key, stem.with_suffix(".png"))
        written[f"{NAME}_{key}"] = len(table)
    return written
