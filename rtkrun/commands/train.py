"""``rtkrun train``: fit the denoiser (resuming from ``checkpoints/last.pt``), then sample it with
every evaluation sampler and write ``metrics.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from rtkrun import distributed, runs
from rtkrun.commands.common import (
    build_parts,
    describe,
    draw_samples,
    flatten,
    provenance,
    resolve_device,
    save_samples,
    score,
)
from rtkrun.config import to_dict
from rtkrun.loggers import NullTracker, make_tracker
from rtkrun.metrics.mog import mean_recovery
from rtkrun.models import needs_training
from rtkrun.trainer import Trainer

log = logging.getLogger("rtkrun")


def train(run, run_dir: Path) -> dict[str, Any]:
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        done = runs.read_json(metrics_path)
        if done.get("status") == "complete" and done.get("train/steps") == run.trainer.max_steps:
            log.info("run %s is already complete; nothing to do (metrics in %s)", run_dir, metrics_path)
            return done
    device = resolve_device(run.device)
    place = distributed.init(device.type)
    if place.active and device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
    if not place.is_main:  # rank 0 alone logs; the others only compute
        logging.getLogger().setLevel(logging.WARNING)
    config = to_dict(run)
    tracker = make_tracker(run.logger, run_dir, config) if place.is_main else NullTracker()
    dataset, schedule, model = build_parts(run, run.seed)
    model = model.to(device)
    log.info("run directory: %s", run_dir.resolve())
    started = time.time()
    metrics: dict[str, Any] = {"status": "complete", **provenance(run)}
    if needs_training(model):
        trainer = Trainer(run, model, dataset, schedule, run_dir, device, config, tracker)
        metrics.update(trainer.fit())
        eval_model = trainer.ema
        if place.active:
            metrics["train/processes"] = place.world
            distributed.shutdown()
            if not place.is_main:
                return {}
    else:
        log.info("model %s needs no training", run.model.name)
        metrics["train/steps"] = run.trainer.max_steps
        eval_model = model
    metrics["train/parameters"] = sum(p.numel() for p in model.parameters())
    metrics["dataset/name"] = run.dataset.name

    ev = run.evaluation
    for label, sampler_cfg in ev.samplers.items():
        samples, info = draw_samples(
            eval_model,
            sampler_cfg,
            schedule,
            dataset,
            ev.n_samples,
            ev.batch_size,
            ev.seed,
            device,
        )
        scores = score(dataset, samples, ev, device, info["extras"])
        save_samples(
            run_dir / "samples" / label,
            samples,
            seed=ev.seed,
            dataset_cfg=run.dataset,
            sampler_cfg=sampler_cfg,
            nfe=info["nfe"],
            dataset=dataset,
            title=f"{label}: {describe(scores)}",
            extras=info["extras"],
        )
        tracker.image(f"samples/{label}", run_dir / "samples" / f"{label}.png", caption=describe(scores))
        metrics.update(flatten(f"eval/{label}", {**scores, "nfe": info["nfe"], "seconds": info["seconds"]}))
        log.info("%s: %s, NFE %d, %.2f s", label, describe(scores), info["nfe"], info["seconds"])
    if run.model.name == "mog_student":
        symmetric = run.model.symmetric
        learned = eval_model.mu if symmetric else eval_model.means
        truth = dataset.mixture.means[:1] if symmetric else dataset.mixture.means
        metrics.update(flatten("student", mean_recovery(learned, truth, symmetric)))
    metrics["seconds"] = time.time() - started
    runs.write_json(metrics_path, metrics)
    tracker.summary(metrics)
    tracker.finish()
    log.info("metrics: %s", metrics_path.resolve())
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return metrics
