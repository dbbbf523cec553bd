"""``rtkrun train``: fit the denoiser (resuming from ``checkpoints/last.pt``), then sample it with
every evaluation sampler and write ``metrics.json``.

``metrics.json`` is rewritten (atomically) after training and after each evaluation sampler,
with ``status: incomplete`` until the last one, so a kill loses at most the sampler it
interrupted. Re-running a run directory merges: each evaluation records the digest of its
settings and of the model's step, and is recomputed only where that changed or it is missing;
an evaluation added on the command line is run and merged, results of earlier ones are kept.
Training further (more steps) makes every earlier evaluation stale, so they are dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from rtkrun import distributed, runs
from rtkrun.build import build_parts, resolve_device
from rtkrun.config import digest, to_dict
from rtkrun.diagnostics.fixed_point import fixed_point_profile
from rtkrun.loggers import NullTracker, make_tracker
from rtkrun.metrics.mog import mean_recovery
from rtkrun.models import needs_training
from rtkrun.rundir import flatten, provenance, read_metrics
from rtkrun.samples_file import save_samples
from rtkrun.sampling import draw_samples, recorded_stats, start_batch
from rtkrun.seeding import SampleNoise, Stream, stream_seed
from rtkrun.trainer import Trainer

log = logging.getLogger("rtkrun")
# Evaluation settings that change how samples are drawn or scored in batches, not the result.
EVAL_HOW = ("samplers", "batch_size", "fid_batch_size")


def evaluation_digest(sampler_cfg, evaluation, steps: int) -> str:
    """What one evaluation's result depends on: its sampler, the evaluation settings and the
    model (its training step; the run directory fixes everything else)."""
    settings = {k: v for k, v in dataclasses.asdict(evaluation).items() if k not in EVAL_HOW}
    if settings.get("noise") == "cpu_streams":  # the streams every run used before the key existed
        del settings["noise"]
    return digest({"sampler": dataclasses.asdict(sampler_cfg), "evaluation": settings, "steps": steps})


def _without_evaluations(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("eval/")}


def plot_loss_curve(jsonl: Path, path: Path) -> None:
    """``loss.png``: the logged training loss (mean over each log interval) against the step,
    log-scaled when it is positive, with the epochs of the run on a top axis."""
    records = [r for r in runs.read_jsonl(jsonl) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [r["step"] for r in records], [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
    positive = all(v > 0 for v in losses if v == v)
    ax.set(xlabel="step", ylabel="training loss", yscale="log" if positive else "linear")
    epochs = sorted({r["epoch"] for r in records if "epoch" in r})
    ax.set_title(f"{len(steps)} logged intervals, epochs {epochs[0]}–{epochs[-1]}" if epochs else "training loss")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.91)  # fixed: tight_layout costs as much as the plot
    runs.save_figure(fig, path, dpi=100)


def _evaluation(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k.startswith(f"{key}/")}


def train(run, run_dir: Path) -> dict[str, Any]:
    metrics_path = run_dir / "metrics.json"
    device = resolve_device(run.device)
    place = distributed.init(device.type)
    runs.lock_run_dir(run_dir, place.rank)  # the process group's real rank, now that it exists
    if place.active and device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
    if not place.is_main:  # rank 0 alone logs; the others only compute
        logging.getLogger().setLevel(logging.WARNING)
    previous = read_metrics(run_dir) or {}  # every rank reads it, so all ranks decide alike
    config = to_dict(run)
    dataset, schedule, model = build_parts(run, run.seed)
    parts = (dataset, schedule, device)
    model = model.to(device)
    started = time.time()
    if needs_training(model):
        trainer = Trainer(run, model, dataset, schedule, run_dir, device, config, NullTracker())
        steps_before = trainer.saved_step()
        if steps_before == run.trainer.max_steps and _all_evaluated(run, previous, steps_before):
            log.info("run %s is already complete; nothing to do (metrics in %s)", run_dir, metrics_path)
            distributed.shutdown()
            return previous
        log.info("run directory: %s", run_dir.resolve())
        trainer.tracker = make_tracker(run.logger, run_dir, config) if place.is_main else NullTracker()
        trained = trainer.fit()
        eval_model, tracker = trainer.ema, trainer.tracker
        if place.is_main:
            plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if place.active:  # the group stays up: every rank samples a block of each evaluation
            trained["train/processes"] = place.world
        # Training on makes earlier evaluations stale; a run that only re-evaluates keeps them.
        kept = previous if trained["train/steps"] == previous.get("train/steps") else _without_evaluations(previous)
        if "train/seconds_this_session" not in trained:  # nothing trained now: keep what was measured
            trained = {**{k: v for k, v in previous.items() if k.startswith("train/")}, **trained}
    else:
        log.info("run directory: %s", run_dir.resolve())
        log.info("model %s needs no training", run.model.name)
        tracker = make_tracker(run.logger, run_dir, config) if place.is_main else NullTracker()
        trained, eval_model, kept = {"train/steps": run.trainer.max_steps}, model, previous
    metrics: dict[str, Any] = {**kept, **trained, "status": "incomplete", **provenance(run)}
    metrics["train/parameters"] = sum(p.numel() for p in model.parameters())
    metrics["dataset/name"] = run.dataset.name
    if run.model.name == "mog_student":
        symmetric = run.model.symmetric
        learned = eval_model.mu if symmetric else eval_model.means
        truth = dataset.mixture.means[:1] if symmetric else dataset.mixture.means
        metrics.update(flatten("student", mean_recovery(learned, truth, symmetric)))
    if place.is_main:
        runs.write_json(metrics_path, metrics)  # the training results, before any evaluation

    metrics = _evaluate_model(run, "eval", eval_model, metrics["train/steps"], metrics, parts, run_dir, tracker)
    for epoch, path in runs.snapshot_paths(run_dir).items():  # trainer.snapshot_epochs (T8)
        state = runs.load_checkpoint(path, map_location=device)
        if state["step"] == metrics["train/steps"]:  # the final model itself: eval/ holds its numbers
            continue
        snapshot = copy.deepcopy(eval_model)
        snapshot.load_state_dict(state["ema"])
        prefix = f"snapshot/epoch={epoch}"
        metrics = _evaluate_model(run, prefix, snapshot, state["step"], metrics, parts, run_dir, tracker)
    distributed.shutdown()
    if not place.is_main:  # its blocks of every evaluation are on rank 0
        return {}
    metrics["status"] = "complete"
    metrics["seconds"] = time.time() - started
    runs.write_json(metrics_path, metrics)
    tracker.summary(metrics)
    tracker.finish()
    log.info("metrics: %s", metrics_path.resolve())
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return metrics


def _evaluate_model(run, prefix: str, model, steps: int, metrics: dict[str, Any], parts, run_dir: Path, tracker):
    """Sample ``model`` (trained for ``steps``) with every evaluation sampler and score it into
    ``metrics`` under ``prefix/<label>/``, rewriting metrics.json after each sampler; an
    evaluation whose digest is unchanged is kept. With ``evaluation.fixed_point_points`` the
    fixed-point profile at the DDDM top time goes under ``prefix/fixed_point/``."""
    dataset, schedule, device = parts
    ev, metrics_path = run.evaluation, run_dir / "metrics.json"
    for label, sampler_cfg in ev.samplers.items():
        wanted = evaluation_digest(sampler_cfg, ev, steps)
        key = f"{prefix}/{label}"
        if metrics.get(f"{key}/config_sha1") == wanted:
            log.info("%s: kept from the previous run of this directory", key)
            continue
        if _evaluation(metrics, key):
            log.warning("%s: its settings changed since it was measured; measuring it again", key)
        metrics = {k: v for k, v in metrics.items() if k not in _evaluation(metrics, key)}
        samples, info = draw_samples(
            model,
            sampler_cfg,
            schedule,
            dataset,
            ev.n_samples,
            ev.batch_size,
            ev.seed,
            device,
            label=key,
            noise=ev.noise,
        )
        if samples is None:  # under torchrun, another rank: rank 0 scores and writes
            continue
        scores = dataset.score(samples, ev, device, info["extras"])
        if prefix == "eval":  # the final model's samples are kept; a snapshot's are only scored
            save_samples(
                run_dir / "samples" / label,
                samples,
                seed=ev.seed,
                dataset_cfg=run.dataset,
                sampler_cfg=sampler_cfg,
                nfe=info["nfe"],
                dataset=dataset,
                title=f"{label}: {dataset.describe(scores)}",
                extras=info["extras"],
            )
            tracker.image(f"samples/{label}", run_dir / "samples" / f"{label}.png", caption=dataset.describe(scores))
        found = {**scores, **flatten("stats", recorded_stats(info["stats"])), **flatten("settings", info["settings"])}
        found.update(nfe=info["nfe"], seconds=info["seconds"], config_sha1=wanted)
        metrics.update(flatten(key, found))
        runs.write_json(metrics_path, metrics)  # a kill in the next sampler keeps this one
        log.info("%s: %s, NFE %d, %.2f s", key, dataset.describe(scores), info["nfe"], info["seconds"])
    if ev.fixed_point_points and run.trainer.objective in ("dddm", "flow_map") and distributed.place().is_main:
        metrics.update(flatten(f"{prefix}/fixed_point", fixed_point_at_top(model, dataset, ev, device)))
        runs.write_json(metrics_path, metrics)
    return metrics


def fixed_point_at_top(model, dataset, ev, device) -> dict[str, float]:
    """The DDDM-1 sampler's start, measured: ``evaluation.fixed_point_points`` pairs
    (x_T, z⁽⁰⁾), each the sampler's prior (on a subspace dataset, the molecule's own zero-CoM
    Gaussian, its atom count drawn as sampling draws it), from their own streams of the
    evaluation seed, at t = ``evaluation.fixed_point_t``."""
    noise = SampleNoise.for_range(
        stream_seed(ev.seed, Stream.FIXED_POINT_PROFILE), 0, ev.fixed_point_points, device=device
    )
    model.eval()
    denoiser, x_T, noise, _ = start_batch(model, dataset, noise)
    z0 = noise.randn(*dataset.sample_shape)
    t = torch.full((len(x_T),), ev.fixed_point_t, device=device)
    return fixed_point_profile(lambda z, x, tt: denoiser(x, tt, z), z0, context=(x_T, t))


def _all_evaluated(run, previous: dict[str, Any], steps: int) -> bool:
    """Whether ``metrics.json`` already holds a complete run with every configured evaluation
    measured with its current settings on this model."""
    return previous.get("status") == "complete" and all(
        previous.get(f"eval/{label}/config_sha1") == evaluation_digest(cfg, run.evaluation, steps)
        for label, cfg in run.evaluation.samplers.items()
    )
