"""T8, the DDDM training study: rows from ``rtkrun train`` run directories that kept snapshots
(``trainer.snapshot_epochs``) and were evaluated with ``evaluation=t8_dddm`` (the mixture) or
``evaluation=t8_qm9`` (molecules); each dataset gets its own table (T8, T8_qm9).

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

from rtkrun.report.output import plot_t8, write_table
from rtkrun.report.rows import dim_order, run_config
from rtkrun.runs import checkpoint_path, load_checkpoint, snapshot_path

NAME = "T8"
T8_METRICS = {  # per dataset: the sample metrics of a row, and the one the summary and figure show
    "mog": ("sliced_w2", "w2", "mode_tv", "off_mode"),
    "qm9": ("atom_stability", "mol_stability", "validity"),
}
SUMMARY_METRIC = {"mog": "ratio/sliced_w2", "qm9": "atom_stability"}
_PROFILE = ["L_start", "L_end", "contraction"]
T8_COLUMNS = {
    "mog": [
        "data",
        "variant",
        "epoch",
        "sampler",
        "nfe",
        "ratio/sliced_w2",
        *(c for m in T8_METRICS["mog"] for c in (m, f"baseline/{m}")),
        *_PROFILE,
        "buffer/to_prior",
        "buffer/to_data",
        "buffer/rms",
        "buffer/rms_error",
        "status",
        "run_dir",
    ],
    "qm9": [
        "data",
        "variant",
        "epoch",
        "sampler",
        "nfe",
        *T8_METRICS["qm9"],
        *_PROFILE,
        "buffer/rms",
        "buffer/rms_error",
        "status",
        "run_dir",
    ],
}
_SAMPLERS_NOTE = (
    "dddmM: M fixed-point iterations at t_max from z⁽⁰⁾ ~ N(0, I) (the paper's sampler); "
    "dddm_scK: K levels × 1 iteration, each level's z from the last (self-conditioned); ddimK: DDIM "
    "with K steps. `L_start`, `L_end`: median ‖∂f/∂z‖₂ at t_max at z⁽⁰⁾ and after 3 iterations; "
    "`contraction`: median per-iteration factor of the fixed-point steps (< 1 converges). "
)
T8_NOTE = {
    "mog": (
        "One row per variant × model (snapshot epoch, or the final model) × evaluation sampler. "
        "`ratio/sliced_w2` = sliced W2 ÷ its true-vs-true baseline at the same n (1 is perfect). "
        + _SAMPLERS_NOTE
        + "`buffer/…`: the training estimates z_i in that checkpoint: sliced W2 to N(0, I) (the sampler's "
        "z⁽⁰⁾) and to the data distribution, RMS per coordinate (N(0, I): 1), and the RMS per-coordinate "
        "distance of z_i to its own example x0_i."
    ),
    "qm9": (
        "One row per variant × model (snapshot epoch, or the final model) × evaluation sampler. "
        "Stabilities and validity in percent (EDM's definitions); the data itself scores about 99 % "
        "atom and 95 % molecule stability. "
        + _SAMPLERS_NOTE
        + "On a molecule L is a Lanczos lower bound (64 steps, d = 29·9). `buffer/…`: the training "
        "estimates z_i over each molecule's real entries: RMS (N(0, I): 1) and RMS distance to x0_i."
    ),
}
SAMPLER_ORDER = ("dddm1", "dddm2", "dddm4", "dddm_sc2", "dddm_sc4", "dddm_sc10", "ddim2", "ddim4", "ddim10")


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    """A training run that kept snapshots (a training study on any dataset)."""
    return cfg is not None and cfg.get("command") == "train" and bool((cfg.get("trainer") or {}).get("snapshot_epochs"))


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
    """Where DDDM's training estimates sit. On the mixture: sliced W2 of the buffer to N(0, I),
    the DDDM sampler's z⁽⁰⁾ (sample against sample), and to the mixture (against its exact
    quantiles), on the first ``PROFILE_ROWS`` examples. Always: the RMS of z_i per coordinate
    and the RMS per-coordinate distance of each z_i to its own training example x0_i, over the
    example's own entries on a subspace dataset (a molecule's real atoms)."""
    x0 = dataset.get_batch(torch.arange(len(buffer))).double()
    z = buffer.double()
    space = dataset.space_of(x0)
    if space is None:
        rms, error = z.pow(2).mean().sqrt(), (z - x0).pow(2).mean().sqrt()
    else:
        rms, error = space.mean_sq(z, 0 * z).mean().sqrt(), space.mean_sq(z, x0).mean().sqrt()
    out = {"buffer/rms": round(float(rms), 4), "buffer/rms_error": round(float(error), 4)}
    if dataset.mixture is not None:
        from rtkrun.metrics.mog import projection_directions, sliced_w2, sliced_w2_to_mixture

        gen = torch.Generator().manual_seed(seed)
        directions = projection_directions(dataset.mixture, 64, gen)
        some = z.flatten(1)[:PROFILE_ROWS]
        prior = torch.randn(some.shape, generator=gen, dtype=torch.float64)
        out["buffer/to_prior"] = round(sliced_w2(some, prior, directions), 4)
        out["buffer/to_data"] = round(sliced_w2_to_mixture(dataset.mixture, some, directions), 4)
    return out


def _buffer_at(run_dir: Path, prefix: str, dataset) -> dict[str, float]:
    epoch = re.match(r"snapshot/epoch=(\d+)", prefix)
    path = snapshot_path(run_dir, int(epoch.group(1))) if epoch else checkpoint_path(run_dir)
    if not path.exists():
        return {}
    buffer = load_checkpoint(path).get("buffer")
    return {} if buffer is None else buffer_profile(buffer, dataset)


def _dataset(dataset_cfg: dict[str, Any]):
    from rtkrun.config import typed_group
    from rtkrun.data import DATASETS

    return DATASETS[dataset_cfg["name"]][1](typed_group("dataset", dataset_cfg))


def data_label(dataset: dict[str, Any]) -> str:
    if dataset.get("name") == "qm9":
        return f"qm9 first {dataset['limit']}" if dataset.get("limit") else "qm9"
    return f"mog d={dataset.get('dim')}"


def _percent(value: Any) -> Any:
    return None if value is None else round(100 * float(value), 1)


def t8_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The T8 rows of one training run; each carries ``kind`` (the dataset: which table)."""
    cfg = run_config(run_dir, resolve=True)
    trainer, dataset = cfg["trainer"], cfg["dataset"]
    kind = "qm9" if dataset.get("name") == "qm9" else "mog"
    base = {"kind": kind, "data": data_label(dataset), "variant": variant_label(trainer), "run_dir": str(run_dir)}
    path = run_dir / "metrics.json"
    if not path.exists():
        return [{**base, "status": "failed or unfinished"}]
    m = json.loads(path.read_text())
    examples = dataset.get("train_size") or dataset.get("limit") or 1  # runs older than train/steps_per_epoch
    steps_per_epoch = m.get("train/steps_per_epoch") or max(int(examples) // int(trainer["batch_size"]), 1)
    models = {"eval": (m.get("train/steps") or 0) // steps_per_epoch}
    for key in m:
        found = re.match(r"snapshot/epoch=(\d+)/", key)
        if found and int(found.group(1)) != models["eval"]:  # a snapshot at the last epoch is the final model
            models[f"snapshot/epoch={found.group(1)}"] = int(found.group(1))
    samplers = (cfg.get("evaluation") or {}).get("samplers", {})
    data = _dataset(dataset) if trainer.get("objective") == "dddm" else None
    order = [s for s in SAMPLER_ORDER if s in samplers] + [s for s in samplers if s not in SAMPLER_ORDER]
    rows = []
    for prefix, epoch in sorted(models.items(), key=lambda kv: kv[1]):
        profile = {k: m.get(f"{prefix}/fixed_point/{k}") for k in _PROFILE}
        if data is not None:
            profile.update(_buffer_at(run_dir, prefix, data))
        for label in order:
            get = lambda k, p=f"{prefix}/{label}/": m.get(p + k)  # noqa: E731
            row = {**base, "epoch": epoch, "sampler": label, "nfe": get("nfe"), **profile, "status": m.get("status")}
            if kind == "qm9":
                row.update({metric: _percent(get(metric)) for metric in T8_METRICS["qm9"]})
            else:
                for metric in T8_METRICS["mog"]:
                    row[metric], row[f"baseline/{metric}"] = get(metric), get(f"baseline/{metric}")
                if row["sliced_w2"] is not None and row["baseline/sliced_w2"]:
                    row["ratio/sliced_w2"] = round(row["sliced_w2"] / row["baseline/sliced_w2"], 3)
            rows.append(row)
    return rows


def t8_summary(rows: list[dict[str, Any]], metric: str = "ratio/sliced_w2") -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (data, variant, epoch) with ``metric`` of every sampler as columns."""
    samplers = [s for s in SAMPLER_ORDER if any(r.get("sampler") == s for r in rows)]
    samplers += sorted({r["sampler"] for r in rows if r.get("sampler") and r["sampler"] not in SAMPLER_ORDER})
    table: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("sampler") is None:  # a job that left no metrics: listed, never dropped
            failed = {"data": r["data"], "variant": r["variant"], "status": r.get("status")}
            table[(r["data"], r["variant"], -1)] = failed
            continue
        key = (r["data"], r["variant"], r["epoch"])
        entry = table.setdefault(
            key, {"data": r["data"], "variant": r["variant"], "epoch": r["epoch"], "contraction": r["contraction"]}
        )
        entry.update({k: r[k] for k in ("L_start", "buffer/to_prior", "buffer/rms_error", "status") if k in r})
        entry[r["sampler"]] = r.get(metric)
    columns = ["data", "variant", "epoch", *samplers, "L_start", "contraction"]
    if any("buffer/to_prior" in e for e in table.values()):
        columns.append("buffer/to_prior")
    columns += ["buffer/rms_error", "status"]
    return [table[k] for k in sorted(table, key=lambda k: (dim_order(k[0]), k[1], k[2]))], columns


TABLES = (  # (kind, stem, title, the metric of the summary and figure)
    ("mog", "T8", "the DDDM training study", "sliced W2 ÷ true-vs-true baseline"),
    ("qm9", "T8_qm9", "the DDDM training study on QM9", "atom stability (%)"),
)


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    t8 = [row for p in run_dirs for row in t8_rows(p)]
    written = {}
    for kind, stem, title, metric_name in TABLES:
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
    return written
