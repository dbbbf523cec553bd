"""Sampler overhead: the time per NFE of each sampler over the time of one bare network call.

Every row samples one batch the way ``rtkrun sample`` does: per-sample noise streams, the
dataset's own start (molecules: atom counts, node mask, projections), then the sampler at the
case's NFE budget. The reference is the same denoiser called once on that batch, measured in
the same run. Two ratios are given: ``overhead`` counts the whole call (what a user waits for)
and ``loop overhead`` leaves out the per-batch set-up (seeding the noise streams, the start),
which is paid once per batch whatever the NFE. Goals (issue 9): ≤ 1.10 for DDPM, DDIM and DDDM;
≤ 1.5 for RTK-MALA, whose energy differences and accept steps are extra work.
"""

from __future__ import annotations

from typing import Any

import torch

from rtkrun.bench.precision import compile_mode
from rtkrun.bench.presets import Parts
from rtkrun.bench.timing import measure_interleaved
from rtkrun.config import typed_group
from rtkrun.samplers import SAMPLERS, settings_for
from rtkrun.sampling import CompiledNetwork, start_batch
from rtkrun.seeding import SampleNoise

GOALS = {"ddpm": 1.10, "ddim": 1.10, "dddm": 1.10, "rtk_mala": 1.5}


def bench_sampling(
    parts: Parts, *, warmup: int, repeats: int, compile_models: bool = False, samplers=tuple(GOALS)
) -> list[dict[str, Any]]:
    """One row per sampler; with ``compile_models`` one more: DDIM on the compiled network
    (CUDA graphs on a GPU), whose ratio is still over the eager bare call."""
    device, batch, seed = parts.device, parts.case.sample_batch, parts.run.seed
    eager = parts.model.eval()

    def setup(model=eager):
        return start_batch(model, parts.dataset, SampleNoise.for_range(seed, 0, batch, device=device))

    denoiser, x_T, _, _ = setup()
    t = torch.full((batch,), 0.5, device=device, dtype=x_T.dtype)
    with torch.no_grad():
        z = denoiser(x_T, t)
    rows = []
    runs = [(name, eager) for name in samplers]
    if compile_models:
        runs.append(("ddim", CompiledNetwork(eager, compile_mode(device))))
    for name, model in runs:
        fn = SAMPLERS[name][1]
        settings = settings_for(typed_group("sampler", {"name": name, "nfe": parts.case.nfe}))

        def sample(fn=fn, settings=settings, model=model):
            den, x, noise, _ = setup(model)
            return fn(den, x, parts.schedule, generator=noise, **settings)

        @torch.no_grad()
        def bare(estimate=z if name == "dddm" else None):  # DDDM's calls carry the estimate z
            return denoiser(x_T, t, estimate)

        nfe = sample().nfe  # also the compiled network's warm-up (compilation)
        timed, call, set_up = measure_interleaved([sample, bare, setup], device, warmup=warmup, repeats=repeats)
        per_nfe = timed.seconds / nfe
        loop = (timed.seconds - set_up.seconds) / nfe
        call = call.seconds
        rows.append(
            {
                "case": parts.name,
                "sampler": name if model is eager else f"{name}, compiled ({model.mode})",
                "batch": batch,
                "nfe": nfe,
                "ms_per_nfe": 1e3 * per_nfe,
                "bare_ms": 1e3 * call,
                "overhead": per_nfe / call,
                "loop_overhead": loop / call,
                "setup_ms": 1e3 * set_up.seconds,
                "goal": GOALS.get(name),
                "samples_nfe_per_s": batch * nfe / timed.seconds,
                "spread": timed.spread,
                "peak_mib": None if timed.peak_bytes is None else timed.peak_bytes / 2**20,
            }
        )
    return rows
