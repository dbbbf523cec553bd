"""``rtkrun search`` (T7): the fewest steps of a sampler whose samples, drawn with the exact
mixture-of-Gaussians denoiser, reach sliced W2 to the exact mixture <= (1 + tol) × the exact
sampler's value at the same n.

The quality is :func:`rtkrun.metrics.mog.sliced_w2_to_mixture` (sorted projections against the
mixture's exact 1-D quantiles), averaged over ``search.repeats`` sample sets drawn with the same
seeds at every step count; the baseline is the same statistic of exact samples. The search is
:func:`rtkrun.step_search.smallest_passing` over a √2-spaced ladder. ``metrics.json`` holds the
step count found, its quality ratio, and every step count tried (``curve``), which
``rtkrun report`` turns into T7 with the fitted exponent of steps ∝ d^k per grid.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rtkrun import runs
from rtkrun.build import build_parts
from rtkrun.diffusion.grids import ou_horizon, t_max_for_horizon
from rtkrun.errors import RtkrunError
from rtkrun.metrics.mog import projection_directions, sliced_w2_to_mixture
from rtkrun.models import needs_training
from rtkrun.rundir import provenance
from rtkrun.samplers import SAMPLERS, settings_for
from rtkrun.seeding import SampleNoise
from rtkrun.step_search import smallest_passing, step_ladder

log = logging.getLogger("rtkrun")


def search(run, run_dir: Path) -> dict[str, Any]:
    sc, n = run.search, run.n_samples
    settings = settings_for(run.sampler)  # validation made sure it has steps and grid, and no budget
    dataset, schedule, model = build_parts(run, run.seed)
    mixture = dataset.mixture
    if mixture is None:
        raise RtkrunError(
            f"search needs an exact reference distribution; dataset={run.dataset.name} has none (use mog)"
        )
    if needs_training(model):
        raise RtkrunError(
            f"search tests the time grid with the exact score; model={run.model.name} is learned (use mog_oracle)"
        )
    if sc.horizon is not None:
        settings["t_max"] = t_max_for_horizon(schedule, sc.horizon)
    fn = SAMPLERS[run.sampler.name].fn
    gen = torch.Generator().manual_seed(run.seed)
    directions = projection_directions(mixture, sc.directions, gen)
    exact = [sliced_w2_to_mixture(mixture, mixture.sample(n, gen), directions) for _ in range(sc.baseline_repeats)]
    baseline = sum(exact) / len(exact)
    quality: dict[int, float] = {}

    def passes(steps: int) -> bool:
        values = []
        for seed in range(run.seed, run.seed + sc.repeats):
            noise = SampleNoise.for_range(seed, 0, n, dtype=torch.float64)
            x0 = fn(
                model, noise.randn(*dataset.sample_shape), schedule, generator=noise, **{**settings, "steps": steps}
            ).x0
            values.append(sliced_w2_to_mixture(mixture, x0, directions))
        quality[steps] = sum(values) / len(values)
        ok = quality[steps] <= (1 + sc.tol) * baseline
        log.info("steps %d: sliced W2 %.4g = %.3g x the exact sampler's (%s)", steps, quality[steps],
                 quality[steps] / baseline, "pass" if ok else "fail")  # fmt: skip
        return ok

    steps, tries = smallest_passing(passes, step_ladder(sc.max_steps))
    metrics = {
        "status": "complete",
        **provenance(run),
        "dim": run.dataset.dim,
        "sampler": run.sampler.name,
        "grid": settings["grid"],
        "horizon": round(ou_horizon(schedule, settings["t_max"]), 3),
        "steps": steps,
        "quality_ratio": None if steps is None else quality[steps] / baseline,
        "baseline": baseline,
        "evaluations": tries,
        "n": n,
        "seeds": sc.repeats,
        "tol": sc.tol,
        "curve": {str(k): v / baseline for k, v in sorted(quality.items())},
    }
    runs.write_json(run_dir / "metrics.json", metrics)
    found = f"{steps} steps" if steps is not None else f"no step count up to {sc.max_steps}"
    log.info("d=%d, %s grid, horizon %.3g: %s (%d tried); %s", run.dataset.dim, settings["grid"],
             metrics["horizon"], found, tries, run_dir.resolve())  # fmt: skip
    return metrics
