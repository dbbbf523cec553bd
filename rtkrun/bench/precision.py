"""bf16 autocast and ``torch.compile`` against fp32 eager, for the training step and for the
sampling call of each case, in one run. Compiled rows pay their compilation in the warm-up;
``mode=reduce-overhead`` on CUDA replays the call as a CUDA graph (fixed shapes: the sampling
batch never changes inside a loop).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rtkrun.bench.presets import Parts
from rtkrun.bench.timing import measure
from rtkrun.bench.training import bench_training
from rtkrun.sampling import CompiledNetwork, start_batch
from rtkrun.seeding import SampleNoise


def compile_mode(device: torch.device) -> str:
    """CUDA graphs on a GPU (the sampling batch has one shape); plain inductor on a CPU."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def variants(compile_models: bool) -> list[tuple[str, bool]]:
    out = [("fp32", False), ("bf16", False)]
    if compile_models:
        out += [("fp32", True), ("bf16", True)]
    return out


def bench_precision(parts: Parts, *, warmup: int, repeats: int, compile_models: bool) -> list[dict[str, Any]]:
    device, rows = parts.device, []
    base_train = base_sample = None
    for precision, compiled in variants(compile_models):
        label = precision + (" + compile" if compiled else "")
        train = bench_training(parts, warmup=warmup, repeats=repeats, precision=precision, compile_model=compiled)
        base_train = base_train or train["ms_per_step"]
        model = parts.model.eval()
        if compiled:  # as `rtkrun sample compile=...` runs it
            model = CompiledNetwork(model, compile_mode(device))
        noise = SampleNoise.for_range(parts.run.seed, 0, parts.case.sample_batch, device=device)
        denoiser, x_T, _, _ = start_batch(model, parts.dataset, noise)
        t = torch.full((len(x_T),), 0.5, device=device, dtype=x_T.dtype)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        )

        def call(denoiser=denoiser, x_T=x_T, t=t, autocast=autocast):
            with torch.no_grad(), autocast:
                return denoiser(x_T, t)

        sample = measure(call, device, warmup=warmup + (2 if compiled else 0), repeats=repeats)
        base_sample = base_sample or sample.seconds
        rows.append(
            {
                "case": parts.name,
                "variant": label,
                "train_ms_per_step": train["ms_per_step"],
                "train_speedup": base_train / train["ms_per_step"],
                "mfu": train["mfu"],
                "sample_ms_per_call": 1e3 * sample.seconds,
                "sample_speedup": base_sample / sample.seconds,
                "train_peak_mib": train["peak_mib"],
            }
        )
    parts.run.trainer.precision, parts.run.trainer.compile = "fp32", False
    return rows
