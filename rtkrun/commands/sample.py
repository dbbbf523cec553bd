"""``rtkrun sample``: sample a checkpoint (or a model that needs no training) with one sampler,
write ``samples/samples.npz`` + a picture, and score the samples into ``metrics.json``."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from rtkrun import distributed, runs
from rtkrun.build import load_trained_parts, resolve_device
from rtkrun.rundir import flatten, provenance
from rtkrun.samples_file import save_samples
from rtkrun.sampling import draw_samples, recorded_stats

log = logging.getLogger("rtkrun")


def sample(run, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(run.device)
    place = distributed.init(device.type)  # torchrun: each process samples a block of the indices
    if place.active and device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
    if not place.is_main:  # rank 0 alone logs, scores and writes
        logging.getLogger().setLevel(logging.WARNING)
    dataset, schedule, model = load_trained_parts(run)
    model = model.to(device)
    samples, info = draw_samples(
        model,
        run.sampler,
        schedule,
        dataset,
        run.n_samples,
        run.batch_size,
        run.seed,
        device,
        run.compile,
        noise=run.noise,
    )
    distributed.shutdown()
    if samples is None:  # another rank: rank 0 has its samples
        return {}
    scores = dataset.score(samples, run.evaluation, device, info["extras"])
    save_samples(
        run_dir / "samples" / "samples",
        samples,
        seed=run.seed,
        dataset_cfg=run.dataset,
        sampler_cfg=run.sampler,
        nfe=info["nfe"],
        dataset=dataset,
        title=f"{run.sampler.name}, NFE {info['nfe']}: {dataset.describe(scores)}",
        extras=info["extras"],
    )
    metrics = {
        "status": "complete",
        **provenance(run),
        "sampler": run.sampler.name,
        "nfe": info["nfe"],
        "seconds": info["seconds"],
        "n_samples": run.n_samples,
        "processes": info["processes"],
        "ckpt": run.ckpt,
        "nfe_budget": run.sampler.nfe,
        "dataset/name": run.dataset.name,
        "dataset/dim": math.prod(dataset.sample_shape),
        **flatten("settings", info["settings"]),
        **flatten("stats", recorded_stats(info["stats"])),
        **flatten("sample", scores),
    }
    runs.write_json(run_dir / "metrics.json", metrics)
    log.info("%s NFE %d: %s; %s", run.sampler.name, info["nfe"], dataset.describe(scores), run_dir.resolve())
    return metrics
