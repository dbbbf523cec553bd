"""DDIM (Song, Meng & Ermon 2021, eq. 12) on any time grid, η = 0 deterministic, η > 0 noisy.

From t to s < t with ε_hat = (x_t − α_t x0_hat)/σ_t:
    x_s = α_s x0_hat + √(σ_s² − c²) ε_hat + c ξ,   c = η · √(b σ_s²/σ_t²),
where b σ_s²/σ_t² is the DDPM posterior variance (η = 1 has DDPM's noise level). With η = 0
this is Euler on the probability-flow ODE in log-SNR.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rtkrun.diffusion.grids import make_grid
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.samplers.base import Callback, CountingDenoiser, SampleResult, report
from rtkrun.seeding import SampleNoise


def ddim_coefficients(alphas: list[float], sigmas: list[float], eta: float) -> list[tuple[float, float, float]]:
    """(keep, mix, noise) per step with x_s = keep·x_t + mix·x0_hat + noise·ξ, in float64: the
    update of the module docstring with ε_hat substituted, keep = √(σ_s² − c²)/σ_t and
    mix = α_s − keep·α_t (so α_t = 0 needs no special case)."""
    out = []
    for a_t, s_t, a_s, s_s in zip(alphas[:-1], sigmas[:-1], alphas[1:], sigmas[1:]):
        b = max(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)
        c = eta * math.sqrt(b * s_s**2 / s_t**2)
        keep = math.sqrt(max(s_s**2 - c**2, 0.0)) / s_t
        out.append((keep, a_s - keep * a_t, c))
    return out


@torch.no_grad()
def ddim(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    steps: int = 50,  # network steps on the grid
    eta: float = 0.0,  # DDIM noise (0: deterministic, 1: DDPM-like)
    grid: str = "uniform",  # time grid: uniform | quadratic | logsnr | edm | benton
    t_max: float = 1.0,  # the first time of the grid
    t_min: float = 1e-3,  # the last time before the final estimate
    rho: float = 7.0,  # edm grid only
) -> SampleResult:
    net = CountingDenoiser(denoiser)
    ts = make_grid(grid, schedule, steps, t_max=t_max, t_min=t_min, rho=rho).to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(ts)
    moves = ddim_coefficients(*torch.stack([alphas, sigmas]).tolist(), eta)  # host floats: one read, before the loop
    x = x_T
    for i in range(steps):
        x0_hat = net(x, ts[i].to(x.dtype))
        if i == steps - 1:
            x_next = x0_hat
        else:
            keep, mix, noise_scale = moves[i]
            x_next = torch.add(x0_hat * mix, x, alpha=keep)  # two kernels per step; dtypes promote as before
            if eta > 0:
                x_next.add_(generator.randn(*x.shape[1:]).to(x_next), alpha=noise_scale)
            x_next = x_next.to(x_T.dtype)
        # the point the network read (x at t_i), what it returned, and where the step went
        report(callback, step=i, t=ts[i], x=x, x0_hat=x0_hat, x_next=x_next, nfe=net.nfe)
        x = x_next
    return SampleResult(x0=x, nfe=net.nfe, stats={"grid": grid, "steps": steps, "eta": eta})


def budget(settings: dict[str, Any], nfe: int) -> dict[str, Any]:
    """Settings that spend ``nfe`` evaluations: one per step."""
    return {**settings, "steps": nfe}
