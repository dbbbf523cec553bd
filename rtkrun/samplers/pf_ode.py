"""Probability-flow ODE samplers: Euler and Heun on any grid.

In u = x/σ and r = α/σ the VP PF-ODE reads du/dr = x0_hat(x) (derived: the data-prediction
form of Lu et al. 2022, DPM-Solver++). Euler in r is DDIM (η = 0); Heun (Karras et al. 2022,
Alg. 1, in these coordinates) averages x0_hat at both ends of a step (2 NFE; the last step, to
t = 0, returns x0_hat). Unlike EDM's (x/α, σ/α) coordinates, the coefficients σ_s/σ_t and
α_s − σ_s α_t/σ_t stay bounded where α(t_max) = 0, so float32 is safe from t = 1.
"""

from __future__ import annotations

from typing import Any

import torch

from rtkrun.diffusion.grids import make_grid
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.samplers.base import (
    Callback,
    CountingDenoiser,
    SampleResult,
    ddim_move,
    report,
)
from rtkrun.seeding import SampleNoise


@torch.no_grad()
def pf_ode(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    steps: int = 50,  # network steps on the grid
    solver: str = "heun",  # euler | heun
    grid: str = "edm",  # time grid: uniform | quadratic | logsnr | edm | benton
    t_max: float = 1.0,  # the first time of the grid
    t_min: float = 1e-3,  # the last time before the final estimate
    rho: float = 7.0,  # edm grid only
) -> SampleResult:
    net = CountingDenoiser(denoiser)
    ts = make_grid(grid, schedule, steps, t_max=t_max, t_min=t_min, rho=rho).to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(ts)
    x = x_T
    for i in range(steps):
        x0_hat = net(x, ts[i].to(x.dtype))
        if i == steps - 1:
            x_next = x0_hat
        else:
            coeffs = (alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
            x_next = ddim_move(x, x0_hat, *coeffs)  # Euler: u_s = u_t + (r_s − r_t)·x0_hat
            if solver == "heun":
                x_next = ddim_move(x, 0.5 * (x0_hat + net(x_next, ts[i + 1].to(x.dtype))), *coeffs)
        # the step's first evaluation point (x at t_i), its x0_hat, and where the step went
        report(callback, step=i, t=ts[i], x=x, x0_hat=x0_hat, x_next=x_next, nfe=net.nfe)
        x = x_next
    return SampleResult(x0=x, nfe=net.nfe, stats={"solver": solver, "steps": steps})


def budget(settings: dict[str, Any], nfe: int) -> dict[str, Any]:
    """Settings that spend ``nfe`` evaluations: Heun takes 2 per step and 1 for the last."""
    steps = max(1, (nfe + 1) // 2) if settings["solver"] == "heun" else nfe
    return {**settings, "steps": steps}
