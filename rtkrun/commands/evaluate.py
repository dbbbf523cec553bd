"""``rtkrun evaluate``: score saved samples (a ``.npz`` from ``rtkrun sample`` or its run
directory) against the dataset they were drawn for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rtkrun import runs
from rtkrun.build import build_dataset, resolve_device
from rtkrun.config import typed_group
from rtkrun.errors import RtkrunError
from rtkrun.rundir import flatten, provenance
from rtkrun.samples_file import find_samples, read_samples

log = logging.getLogger("rtkrun")


def score_data(run, run_dir: Path) -> dict[str, Any]:
    """``samples=data``: score the dataset's own first ``evaluation.n_samples`` examples, the
    "data" row of the paper tables, computed by the same code as every sampler's row."""
    dataset = build_dataset(run.dataset)
    n = min(run.evaluation.n_samples, len(dataset))
    x0 = dataset.get_batch(torch.arange(n)).cpu()
    scores = dataset.score(x0, run.evaluation, resolve_device(run.device))
    split = getattr(run.dataset, "split", "train")
    metrics = {"status": "complete", **provenance(run), "samples": f"data:{split}", **flatten("evaluate", scores)}
    metrics["dataset/name"] = run.dataset.name
    runs.write_json(run_dir / "metrics.json", metrics)
    log.info("the data themselves (%s, n=%d): %s; %s", split, n, dataset.describe(scores), run_dir.resolve())
    return metrics


def evaluate(run, run_dir: Path) -> dict[str, Any]:
    if run.samples == "data":
        return score_data(run, run_dir)
    path = find_samples(run.samples)
    x0, extras, saved_dataset = read_samples(path)
    if saved_dataset is not None:
        try:
            run.dataset = typed_group("dataset", saved_dataset)
        except RtkrunError as e:
            raise RtkrunError(f"{e} (in the dataset config recorded in {path}); re-run rtkrun sample") from None
        log.info("scoring against the dataset recorded in %s", path)
    dataset = build_dataset(run.dataset)
    if tuple(x0.shape[1:]) != tuple(dataset.sample_shape):
        raise RtkrunError(
            f"{path} holds samples of shape {tuple(x0.shape[1:])}, the dataset expects {tuple(dataset.sample_shape)}"
        )
    scores = dataset.score(x0, run.evaluation, resolve_device(run.device), extras)
    metrics = {"status": "complete", **provenance(run), "samples": str(path), **flatten("evaluate", scores)}
    metrics["dataset/name"] = run.dataset.name
    runs.write_json(run_dir / "metrics.json", metrics)
    log.info("%s; %s", dataset.describe(scores), run_dir.resolve())
    return metrics
