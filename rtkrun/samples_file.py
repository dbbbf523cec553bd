"""The samples file, ``samples/<label>.npz``: the one place that knows its keys.

Keys: ``x0`` (the samples, real floating point, one row per sample), ``seed``, ``nfe``,
``dataset_config`` and ``sampler_config`` (JSON), and the dataset's extras (molecules:
``node_mask``). Beside it the dataset writes its picture (``.png``) and its own files
(molecules: ``.sdf``), all atomically.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtkrun import runs
from rtkrun.data.base import DiffusionDataset
from rtkrun.errors import RtkrunError

EXTRAS = ("node_mask",)
HOW_TO_GET_ONE = "pass samples=<file.npz or a sample run directory> written by rtkrun sample"


def find_samples(path: str) -> Path:
    """The samples file at ``path``: a ``.npz``, or the one under a run directory's ``samples/``."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted((p / "samples").glob("*.npz")) if (p / "samples").is_dir() else sorted(p.glob("*.npz"))
        if not found:
            raise RtkrunError(f"no .npz samples in {p}; {HOW_TO_GET_ONE}")
        if len(found) > 1:
            raise RtkrunError(f"{p} holds {len(found)} sample files; pass one: samples={found[0]}")
        p = found[0]
    if not p.is_file():
        raise RtkrunError(f"samples not found: {p}; {HOW_TO_GET_ONE}")
    return p


def read_samples(path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any] | None]:
    """(samples, extras, the dataset config they were drawn for or None) from a samples file,
    checked: a readable ``.npz`` whose ``x0`` is a non-empty array of real numbers."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise RtkrunError(f"{path} is not an rtkrun samples file (.npz): {HOW_TO_GET_ONE}")
    try:
        with np.load(path, allow_pickle=False) as f:
            x0 = f["x0"]
            extras = {k: torch.from_numpy(f[k]) for k in EXTRAS if k in f.files}
            dataset = json.loads(str(f["dataset_config"])) if "dataset_config" in f.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        reason = "it has no 'x0' array" if isinstance(e, KeyError) else type(e).__name__
        raise RtkrunError(f"{path} is not a readable rtkrun samples file ({reason}); re-run rtkrun sample") from None
    if x0.dtype.kind not in "fiu":
        kind = "complex" if x0.dtype.kind == "c" else str(x0.dtype)
        raise RtkrunError(f"{path} holds {kind} samples; rtkrun scores real numbers: re-run rtkrun sample")
    if x0.ndim < 2 or len(x0) == 0:
        raise RtkrunError(f"{path} holds no samples (x0 has shape {x0.shape}); re-run rtkrun sample")
    if dataset is not None and not isinstance(dataset, dict):
        raise RtkrunError(f"{path} has a damaged dataset_config; re-run rtkrun sample")
    x0 = x0 if x0.dtype.kind == "f" else x0.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x0)), extras, dataset


def save_samples(
    path: Path,
    samples: torch.Tensor,
    *,
    seed: int,
    dataset_cfg,
    sampler_cfg,
    nfe: int,
    dataset: DiffusionDataset,
    title: str = "",
    extras: dict | None = None,
) -> None:
    """``<path>.npz`` (samples, seed, configs, extras such as node masks), ``<path>.png`` (the
    dataset's picture) and the dataset's own files (molecules: ``<path>.sdf``), atomically."""
    extras = {k: torch.as_tensor(v).numpy() for k, v in (extras or {}).items()}
    buf = io.BytesIO()
    np.savez(
        buf,
        **extras,
        x0=samples.numpy(),
        seed=seed,
        nfe=nfe,
        dataset_config=json.dumps(dataclasses.asdict(dataset_cfg)),
        sampler_config=json.dumps(dataclasses.asdict(sampler_cfg)) if sampler_cfg is not None else "{}",
    )
    runs.atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())
    dataset.save_picture(samples, path.with_suffix(".png"), title=title, extras=extras)
    sampler = "data" if sampler_cfg is None else sampler_cfg.name
    dataset.write_files(samples, path, extras, properties={"sampler": sampler, "nfe": nfe, "seed": seed})
