"""Training throughput per dataset preset: ``Trainer.step_once`` exactly as ``rtkrun train``
runs it (objective, backward, clipping, optimizer, EMA), timed over real batches.

Reported: steps/s and samples/s, model FLOPs per step and the FLOP rate (MFU on GPUs with a
known peak), peak memory, and the data share: the time to gather a batch (and move it to the
device) over the time of a whole step. The loader runs synchronously inside the step, so the
data share is the part of each step the device waits for data: 0 % means it never starves.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from rtkrun.bench.presets import Parts
from rtkrun.bench.timing import count_flops, gpu_idle_fraction, measure, peak_tflops, synchronize
from rtkrun.loggers import NullTracker
from rtkrun.trainer import Trainer, epoch_order, get_batch


def make_trainer(parts: Parts, precision: str = "fp32", compile_model: bool = False) -> Trainer:
    run = parts.run
    run.trainer.precision, run.trainer.compile = precision, compile_model
    run.trainer.warmup_steps = 0
    torch.manual_seed(run.seed)
    config = {"model": {"name": run.model.name}}
    return Trainer(
        run, parts.model, parts.dataset, parts.schedule, parts.tmp / "run", parts.device, config, NullTracker()
    )


def bench_training(
    parts: Parts, *, warmup: int, repeats: int, precision: str = "fp32", compile_model: bool = False
) -> dict[str, Any]:
    trainer = make_trainer(parts, precision, compile_model)
    device, batch = parts.device, trainer.batch_size
    order = epoch_order(parts.run.seed, 0, len(parts.dataset))
    batches = itertools.cycle([order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)] or [order])

    def step() -> None:
        trainer.step_once(next(batches), 0)

    def load() -> None:
        get_batch(parts.dataset, next(batches), 0, parts.run.seed).to(device, non_blocking=True)

    timed = measure(step, device, warmup=warmup, repeats=repeats)
    loading = measure(load, device, warmup=1, repeats=repeats)
    idle = gpu_idle_fraction(step, device)
    flops = count_flops(step)
    synchronize(device)
    peak = peak_tflops(device)
    rate = flops / timed.seconds if flops else None
    return {
        "case": parts.name,
        "precision": precision + (" + compile" if compile_model else ""),
        "batch": batch,
        "steps_per_s": 1 / timed.seconds,
        "samples_per_s": batch / timed.seconds,
        "ms_per_step": 1e3 * timed.seconds,
        "spread": timed.spread,
        "gflop_per_step": None if flops is None else flops / 1e9,
        "tflops": None if rate is None else rate / 1e12,
        "mfu": None if rate is None or peak is None else rate / (peak * 1e12),
        "data_share": loading.seconds / timed.seconds,
        "gpu_idle": idle,
        "peak_mib": None if timed.peak_bytes is None else timed.peak_bytes / 2**20,
    }
