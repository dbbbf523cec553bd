"""T5: samplers on CIFAR-10 (FID against the training set, with its sample counts), one row per
sampler of a ``sample``, ``train`` or ``evaluate`` run, with the published rows marked as quoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtkrun.report.output import write_table
from rtkrun.report.rows import dataset_of, per_item_ms, scored_rows

NAME = "T5"
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


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    command = None if cfg is None else cfg.get("command")
    return command in ("sample", "train", "evaluate") and dataset_of(run_dir) == "cifar10"


def t5_rows(run_dir: Path) -> list[dict[str, Any]]:
    """CIFAR-10 rows (FID with its sample and reference counts; ms per image)."""
    out = []
    for row in scored_rows(run_dir):
        scores = row.pop("scores")
        n = scores.get("fid_n")
        fid = {k: scores.get(k) for k in ("fid", "fid_n", "fid_reference_n")}
        out.append({**row, **fid, "ms_per_image": per_item_ms(row, n)})
    return out


def t5_quoted_rows() -> list[dict[str, Any]]:
    return [
        {"source": f"{name} paper (quoted)", "nfe": nfe, "fid": fid, "fid_n": 50_000, "status": "quoted"}
        for name, by_nfe in T5_QUOTED.items()
        for nfe, fid in by_nfe.items()
    ]


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows = [row for p in run_dirs for row in t5_rows(p)] + t5_quoted_rows()
    note = "FID against the training set, n stated. Rows marked (quoted) are published numbers (50k samples)."
    write_table(rows, T5_COLUMNS, out / NAME, "T5: CIFAR-10 samplers", note)
    return {NAME: len(rows)}
