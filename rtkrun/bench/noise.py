"""Per-sample noise: what a batch's streams cost before and during sampling, for the CPU streams
(``noise=cpu_streams``: one torch generator per sample, seeded by SeedSequence hashing) and the
counter-based streams (``noise=philox``: Philox4x32-10 keyed by the seed, computed on the
samples' device). Set-up is building the batch's noise source; a draw is one standard normal of
the case's sample shape for every sample (DDDM-1 draws two: x_T and z⁽⁰⁾). Goal (issue 18):
set-up ≤ 0.5 µs per sample.
"""

from __future__ import annotations

import math
from typing import Any

from rtkrun.bench.presets import Parts
from rtkrun.bench.timing import measure
from rtkrun.seeding import NOISE

SETUP_GOAL_US = 0.5


def bench_noise(parts: Parts, *, warmup: int, repeats: int) -> list[dict[str, Any]]:
    device, batch, seed = parts.device, parts.case.sample_batch, parts.run.seed
    shape = tuple(parts.dataset.sample_shape)
    rows = []
    for kind, source in NOISE.items():
        setup = measure(
            lambda s=source: s.for_range(seed, 0, batch, device=device), device, warmup=warmup, repeats=repeats
        )
        noise = source.for_range(seed, 0, batch, device=device)
        draw = measure(lambda n=noise: n.randn(*shape), device, warmup=warmup, repeats=repeats)
        rows.append(
            {
                "case": parts.name,
                "noise": kind,
                "batch": batch,
                "dim": math.prod(shape),
                "setup_us_per_sample": 1e6 * setup.seconds / batch,
                "goal": SETUP_GOAL_US,
                "draw_us_per_sample": 1e6 * draw.seconds / batch,
            }
        )
    return rows
