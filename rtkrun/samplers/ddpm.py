"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any time grid.

Each step s < t draws x_s from the Gaussian posterior q(x_s | x_t, x0 = x0_hat): with
a = α_t/α_s and b = σ_t² − a²σ_s² (so x_t | x_s ~ N(a x_s, b I)),
    mean = (α_s b/σ_t²) x0_hat + (a σ_s²/σ_t²) x_t,   var = b σ_s²/σ_t²
(Ho et al. eq. 7 for arbitrary s < t). Song et al. (2021, §4.1) note that this is exactly DDIM
with η = 1: √(σ_s² − var) = a σ_s²/σ_t, so the DDIM update reproduces the mean above term by
term. DDPM is therefore that one code path, not a second copy of the loop.
"""

from __future__ import annotations

import torch

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.samplers.base import Callback, SampleResult
from rtkrun.samplers.ddim import budget as ddim_budget
from rtkrun.samplers.ddim import ddim
from rtkrun.seeding import SampleNoise


def ddpm(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    steps: int = 1000,  # network steps on the grid
    grid: str = "uniform",  # time grid: uniform | quadratic | logsnr | edm | benton
    t_max: float = 1.0,  # the first time of the grid
    t_min: float = 1e-3,  # the last time before the final estimate
    rho: float = 7.0,  # edm grid only
) -> SampleResult:
    result = ddim(
        denoiser,
        x_T,
        schedule,
        generator=generator,
        callback=callback,
        steps=steps,
        eta=1.0,
        grid=grid,
        t_max=t_max,
        t_min=t_min,
        rho=rho,
    )
    result.stats.pop("eta", None)
    return result


budget = ddim_budget  # one evaluation per step, as DDIM
