"""T8, the DDDM training study: rows from ``rtkrun train`` run directories that kept snapshots
(``trainer.snapshot_epochs``) and were evaluated with ``evaluation=t8_dddm``.

One row per (variant, epoch, evaluation sampler), read from ``metrics.json``: the final model
under ``eval/<label>/`` and each snapshot under ``snapshot/epoch=E/<label>/``, the fixed-point
profile at t_max under ``…/fixed_point/``. The variant is named from the run's effective trainer
settings (``.hydra/config.yaml``), never from a label typed by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rtkrun.runs import checkpoint_path, load_checkpoint, save_figure, snapshot_path

T8_METRICS = ("sliced_w2", "w2", "mode_tv", "off_mode")
T8_COLUMNS = [
    "dim",
    "variant",
    "epoch",
    "sampler",
    "nfe",
    "ratio/sliced_w2",
    *(c for m in T8_METRICS for c in (m, f"baseline/{m}")),
    "L_start",
    "L_end",
    "contraction",
    "buffer/to_prior",
    "buffer/to_data",
    "buffer/rms_error",
    "status",
    "run_dir",
]
T8_NOTE = (
    "One row per variant × model (snapshot epoch, or the final model) × evaluation sampler. "
    "`ratio/sliced_w2` = sliced W2 ÷ its true-vs-true baseline at the same n (1 is perfect). "
    "dddmM: M fixed-point iterations at t_max from z⁽⁰⁾ ~ N(0, I) (the paper's sampler); "
    "dddm_scK: K levels × 1 iteration, each level's z from the last (self-conditioned); ddimK: DDIM "
    "with K steps. `L_start`, `L_end`: median ‖∂f/∂z‖₂ at t_max at z⁽⁰⁾ and after 3 iterations; "
    "`contraction`: median per-iteration factor of the fixed-point steps (< 1 converges). "
    "`buffer/…`: the training estimates z_i in that checkpoint: sliced W2 to N(0, I) (the sampler's "
    "z⁽⁰⁾) and to the data distribution, and the RMS per-coordinate distance of z_i to its own example x0_i."
)
SAMPLER_ORDER = ("dddm1", "dddm2", "dddm4", "dddm_sc2", "dddm_sc4", "dddm_sc10", "ddim2", "ddim4", "ddim10")


def is_t8_run(cfg: dict[str, Any]) -> bool:
    return cfg.get("command") == "train" and bool((cfg.get("trainer") or {}).get("snapshot_epochs"))


def variant_label(trainer: dict[str, Any]) -> str:
    """A short name built from the settings that define a DDDM variant."""
    if trainer.get("objective") == "flow_map":
        return "distillation reference (exact flow map)"
    if trainer.get("objective") != "dddm":
        return f"objective={trainer.get('objective')}"
    parts = [
        "w=1/(epoch+1)" if trainer.get("dddm_weight") == "inverse_epoch" else "w=1",
        f"buffer={trainer.get('buffer_update', 'estimate')}",
        f"null={trainer.get('null_estimate_prob')}",
        str(trainer.get("distance")),
        f"λ={trainer.get('noise_weighting')}",
    ]
    if trainer.get("one_step_prob"):
        parts.append(f"self-distill p={trainer['one_step_prob']} DDIM-{trainer.get('one_step_teacher_steps')}")
    return " ".join(parts)


PROFILE_ROWS = 2000  # estimates compared as distributions (sliced W2); the RMS error uses all


def buffer_profile(buffer: torch.Tensor, dataset, seed: int = 0) -> dict[str, float]:
    """Where DDDM's training estimates sit: sliced W2 of the buffer to N(0, I), the DDDM
    sampler's z⁽⁰⁾ (sample against sample), and to the mixture (against its exact quantiles),
    on the first ``PROFILE_ROWS`` examples; and the RMS per-coordinate distance of each z_i to
    its own training example x0_i."""
    from rtkrun.metrics.mog import projection_directions, sliced_w2, sliced_w2_to_mixture

    z = buffer.double().flatten(1)
    gen = torch.Generator().manual_seed(seed)
    directions = projection_directions(dataset.mixture, 64, gen)
    some = z[:PROFILE_ROWS]
    prior = torch.randn(some.shape, generator=gen, dtype=torch.float64)
    x0 = dataset.get_batch(torch.arange(len(z))).double().flatten(1)
    return {
        "buffer/to_prior": round(sliced_w2(some, prior, directions), 4),
        "buffer/to_data": round(sliced_w2_to_mixture(dataset.mixture, some, directions), 4),
        "buffer/rms_error": round(float(((z - x0) ** 2).mean().sqrt()), 4),
    }


def _buffer_at(run_dir: Path, prefix: str, dataset) -> dict[str, float]:
    epoch = re.match(r"snapshot/epoch=(\d+)", prefix)
    path = snapshot_path(run_dir, int(epoch.group(1))) if epoch else checkpoint_path(run_dir)
    if not path.exists():
        return {}
    buffer = load_checkpoint(path).get("buffer")
    return {} if buffer is None else buffer_profile(buffer, dataset)


def _mog(dataset_cfg: dict[str, Any]):
    from rtkrun.config import typed_group
    from rtkrun.data.mog import build

    return build(typed_group("dataset", dataset_cfg))


def t8_rows(run_dir: Path) -> list[dict[str, Any]]:
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
    trainer, dataset = cfg["trainer"], cfg["dataset"]
    base = {"dim": dataset.get("dim"), "variant": variant_label(trainer), "run_dir": str(run_dir)}
    path = run_dir / "metrics.json"
    if not path.exists():
        return [{**base, "status": "failed or unfinished"}]
    m = json.loads(path.read_text())
    steps_per_epoch = max(int(dataset.get("train_size", 1)) // int(trainer["batch_size"]), 1)
    models = {"eval": (m.get("train/steps") or 0) // steps_per_epoch}
    for key in m:
        found = re.match(r"snapshot/epoch=(\d+)/", key)
        if found:
            models[f"snapshot/epoch={found.group(1)}"] = int(found.group(1))
    samplers = (cfg.get("evaluation") or {}).get("samplers", {})
    data = _mog(dataset) if trainer.get("objective") == "dddm" else None
    order = [s for s in SAMPLER_ORDER if s in samplers] + [s for s in samplers if s not in SAMPLER_ORDER]
    rows = []
    for prefix, epoch in sorted(models.items(), key=lambda kv: kv[1]):
        profile = {k: m.get(f"{prefix}/fixed_point/{k}") for k in ("L_start", "L_end", "contraction")}
        if data is not None:
            profile.update(_buffer_at(run_dir, prefix, data))
        for label in order:
            get = lambda k, p=f"{prefix}/{label}/": m.get(p + k)  # noqa: E731
            row = {**base, "epoch": epoch, "sampler": label, "nfe": get("nfe"), **profile, "status": m.get("status")}
            for metric in T8_METRICS:
                row[metric], row[f"baseline/{metric}"] = get(metric), get(f"baseline/{metric}")
            if row["sliced_w2"] is not None and row["baseline/sliced_w2"]:
                row["ratio/sliced_w2"] = round(row["sliced_w2"] / row["baseline/sliced_w2"], 3)
            rows.append(row)
    return rows


def t8_summary(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (dim, variant, epoch) with the sliced-W2 ratio of every sampler as columns."""
    samplers = [s for s in SAMPLER_ORDER if any(r.get("sampler") == s for r in rows)]
    table: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("sampler") is None:  # a job that left no metrics: listed, never dropped
            table[(r["dim"], r["variant"], -1)] = {"dim": r["dim"], "variant": r["variant"], "status": r.get("status")}
            continue
        key = (r["dim"], r["variant"], r["epoch"])
        entry = table.setdefault(
            key, {"dim": r["dim"], "variant": r["variant"], "epoch": r["epoch"], "contraction": r["contraction"]}
        )
        entry.update({k: r.get(k) for k in ("L_start", "buffer/to_prior", "buffer/rms_error", "status")})
        entry[r["sampler"]] = r.get("ratio/sliced_w2")
    columns = ["dim", "variant", "epoch", *samplers, "L_start", "contraction", "buffer/to_prior", "buffer/rms_error"]
    columns.append("status")
    return [table[k] for k in sorted(table, key=lambda k: (k[0], k[1], k[2]))], columns


def plot_t8(rows: list[dict[str, Any]], path: Path, samplers: tuple[str, ...] = ("dddm1", "dddm_sc10")) -> None:
    """Sliced W2 ÷ baseline against training epoch, one line per variant, one panel per
    (dimension, sampler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["dim"] for r in rows if r.get("ratio/sliced_w2") is not None})
    if not dims:
        return
    fig, axes = plt.subplots(len(dims), len(samplers), figsize=(5.5 * len(samplers), 4 * len(dims)), squeeze=False)
    for i, dim in enumerate(dims):
        for j, sampler in enumerate(samplers):
            ax = axes[i][j]
            mine = [r for r in rows if r["dim"] == dim and r.get("sampler") == sampler and r.get("ratio/sliced_w2")]
            for variant in sorted({r["variant"] for r in mine}):
                pts = sorted((max(r["epoch"], 0.5), r["ratio/sliced_w2"]) for r in mine if r["variant"] == variant)
                ax.plot(*zip(*pts), marker="o", label=variant)
            ax.axhline(1.0, color="k", ls="--", lw=1, label="true vs true")
            ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel="sliced W2 ÷ baseline")
            ax.set_title(f"{sampler}, d = {dim}")
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
