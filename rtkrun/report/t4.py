"""T4: samplers on QM9 (EDM's atom and molecule stability, validity, V×U and novelty, in
percent), one row per sampler of a ``sample``, ``train`` or ``evaluate`` run, with the published
rows marked as quoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtkrun.report.output import write_table
from rtkrun.report.rows import dataset_of, per_item_ms, scored_rows

NAME = "T4"
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


def matches(run_dir: Path, cfg: dict[str, Any] | None) -> bool:
    return cfg is not None and cfg.get("command") in ("sample", "train", "evaluate") and dataset_of(run_dir) == "qm9"


def _percent(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: round(100 * scores[k], 2) for k in T4_METRICS if scores.get(k) is not None}


def t4_rows(run_dir: Path) -> list[dict[str, Any]]:
    """QM9 rows (metrics in percent; ms per molecule = sampling seconds / molecules)."""
    out = []
    for row in scored_rows(run_dir):
        scores = row.pop("scores")
        n = scores.get("n_molecules")
        out.append({**row, **_percent(scores), "n": n, "ms_per_molecule": per_item_ms(row, n)})
    return out


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


def write(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    rows = [row for p in run_dirs for row in t4_rows(p)] + t4_quoted_rows()
    note = "Percent. Rows marked (quoted) are the EDM and GeoBFN papers' numbers, not measured here."
    write_table(rows, T4_COLUMNS, out / NAME, "T4: QM9 samplers", note)
    return {NAME: len(rows)}
