"""``rtkrun evaluate``: score saved samples (a ``.npz`` from ``rtkrun sample`` or its run
directory) against the dataset they were drawn for."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtkrun import runs
from rtkrun.commands.common import build_dataset, describe, flatten, provenance, resolve_device, score
from rtkrun.config import typed_group
from rtkrun.errors import RtkrunError

log = logging.getLogger("rtkrun")


def find_samples(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted((p / "samples").glob("*.npz")) if (p / "samples").is_dir() else sorted(p.glob("*.npz"))
        if not found:
            raise RtkrunError(f"no .npz samples in {p}; pass samples=<file.npz or a sample run directory>")
        if len(found) > 1:
            raise RtkrunError(f"{p} holds {len(found)} sample files; pass one: samples={found[0]}")
        p = found[0]
    if not p.is_file():
        raise RtkrunError(f"samples not found: {p}; pass samples=<file.npz or a sample run directory>")
    return p


def score_data(run, run_dir: Path) -> dict[str, Any]:
    """``samples=data``: score the dataset's own first ``evaluation.n_samples`` examples, the
    "data" row of the paper tables, computed by the same code as every sampler's row."""
    dataset = build_dataset(run.dataset)
    n = min(run.evaluation.n_samples, len(dataset))
    x0 = dataset.get_batch(torch.arange(n)).cpu()
    scores = score(dataset, x0, run.evaluation, resolve_device(run.device))
    split = getattr(run.dataset, "split", "train")
    metrics = {"status": "complete", **provenance(run), "samples": f"data:{split}", **flatten("evaluate", scores)}
    metrics["dataset/name"] = run.dataset.name
    runs.write_json(run_dir / "metrics.json", metrics)
    log.info("the data themselves (%s, n=%d): %s; %s", split, n, describe(scores), run_dir.resolve())
    return metrics


def evaluate(run, run_dir: Path) -> dict[str, Any]:
    if run.samples == "data":
        return score_data(run, run_dir)
    path = find_samples(run.samples)
    try:
        with np.load(path) as f:
            x0 = torch.from_numpy(f["x0"])
            extras = {k: torch.from_numpy(f[k]) for k in ("node_mask",) if k in f.files}
            saved_dataset = json.loads(str(f["dataset_config"])) if "dataset_config" in f.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise RtkrunError(
            f"{path} is not a readable rtkrun samples file ({type(e).__name__}); re-run rtkrun sample"
        ) from None
    if saved_dataset is not None:
        run.dataset = typed_group("dataset", saved_dataset, "samples' dataset")
        log.info("scoring against the dataset recorded in %s", path)
    dataset = build_dataset(run.dataset)
    if tuple(x0.shape[1:]) != tuple(dataset.sample_shape):
        raise RtkrunError(
            f"{path} holds samples of shape {tuple(x0.shape[1:])}, the dataset expects {tuple(dataset.sample_shape)}"
        )
    scores = score(dataset, x0, run.evaluation, resolve_device(run.device), extras)
    metrics = {"status": "complete", **provenance(run), "samples": str(path), **flatten("evaluate", scores)}
    metrics["dataset/name"] = run.dataset.name
    runs.write_json(run_dir / "metrics.json", metrics)
    log.info("%s; %s", describe(scores), run_dir.resolve())
    return metrics
