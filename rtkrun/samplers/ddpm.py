"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any time grid.

Each step s < t draws x_s from the Gaussian posterior q(x_s | x_t, x0 = x0_hat): with
a = α_t/α_s and b = σ_t² − a²σ_s² (so x_t | x_s ~ N(a x_s, b I)),
    mean = (α_s b/σ_t²) x0_hat + (a σ_s²/σ_t²) x_t,   var = b σ_s²/σ_t²
(Ho et al. eq. 7 for arbitrary s < t). The last step lands on t = 0 and returns x0_hat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtkrun.diffusion.grids import make_grid
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.samplers.base import Callback, CountingDenoiser, SampleResult, report
from rtkrun.seeding import SampleNoise


@dataclass
class DDPMConfig:
    name: str = "ddpm"
    steps: int = 1000
    grid: str = "uniform"
    t_max: float = 1.0
    t_min: float = 1e-3
    rho: float = 7.0  # edm grid only

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def posterior_step(x_t, x0_hat, alpha_t, sigma_t, alpha_s, sigma_s):
    """Mean and std of q(x_s | x_t, x0_hat) for s < t (scalars α, σ)."""
    a = alpha_t / alpha_s
    b = (sigma_t**2 - a**2 * sigma_s**2).clamp_min(0.0)
    mean = (alpha_s * b / sigma_t**2) * x0_hat + (a * sigma_s**2 / sigma_t**2) * x_t
    std = (b * sigma_s**2 / sigma_t**2).sqrt()
    return mean, std


@torch.no_grad()
def ddpm(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    steps: int = 1000,
    grid: str = "uniform",
    t_max: float = 1.0,
    t_min: float = 1e-3,
    rho: float = 7.0,
) -> SampleResult:
    net = CountingDenoiser(denoiser)
    ts = make_grid(grid, schedule, steps, t_max=t_max, t_min=t_min, rho=rho).to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(ts)  # float64, on the device: no host syncs below
    x = x_T
    for i in range(steps):
        t = ts[i].to(x.dtype)
        x0_hat = net(x, t)
        if i == steps - 1:
            x = x0_hat
        else:
            mean, std = posterior_step(x, x0_hat, alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
            x = (mean + std * generator.randn(*x.shape[1:])).to(x_T.dtype)
        report(callback, step=i, t=ts[i], x=x, x0_hat=x0_hat, nfe=net.nfe)
    return SampleResult(x0=x, nfe=net.nfe, stats={"grid": grid, "steps": steps})
