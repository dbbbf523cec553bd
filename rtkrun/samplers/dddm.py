"""DDDM fixed-point sampling (Zhang, Wang & Luo 2024, eq. 8), generalised to K noise levels.

At each level t the estimate z of the clean sample is refined M times by the fixed-point map
z ← x_t − F(z, x_t, t) = f(z, x_t, t) (the model's x0_hat given the estimate z), optionally
clipped to the data range; then a DDIM move takes x_t to the next level with the final z as
x0_hat. K = 1 at t = t_max is the paper's sampler. NFE = K·M. The fixed-point residual
‖z_{m+1} − z_m‖ of every iteration goes to the callback and, averaged over the batch, to
``stats`` with the contraction ratios residual_{m+1}/residual_m.
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


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


@torch.no_grad()
def dddm(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    levels: int = 1,  # K
    iterations: int = 1,  # M per level
    init: str = "noise",  # noise | zeros | previous (the last level's estimate; noise at the first)
    clip: float | None = None,  # clip z to [−clip, clip] (images: 1.0)
    grid: str = "uniform",  # time grid: uniform | quadratic | logsnr | edm | benton
    t_max: float = 1.0,  # the first time of the grid
    t_min: float = 1e-3,  # the last time before the final estimate
    rho: float = 7.0,  # edm grid only
) -> SampleResult:
    net = CountingDenoiser(denoiser)
    if levels == 1:  # the paper's sampler: the single level is the top time
        ts = torch.tensor([t_max, 0.0], dtype=torch.float64, device=x_T.device)
    else:
        ts = make_grid(grid, schedule, levels, t_max=t_max, t_min=t_min, rho=rho).to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(ts)
    x, z = x_T, None
    residuals = []  # per level, per iteration: (B,) tensors; reduced once at the end
    for k in range(levels):
        t = ts[k].to(x.dtype)
        if init == "zeros":
            z = torch.zeros_like(x)
        elif init == "noise" or z is None:
            z = generator.randn(*x.shape[1:]).to(x.dtype)
        level_res = []
        for m in range(iterations):
            z_next = net(x, t, z)
            if clip is not None:
                z_next = z_next.clamp(-clip, clip)
            res = _per_sample_norm(z_next - z)
            level_res.append(res)
            # the network read (x, t, z) and returned z_next: report the estimate it read
            report(
                callback,
                step=k * iterations + m,
                level=k,
                iteration=m,
                t=ts[k],
                x=x,
                z=z,
                x0_hat=z_next,
                residual=res,
                nfe=net.nfe,
            )
            z = z_next
        residuals.append(torch.stack(level_res))
        if k == levels - 1:
            x = z
        else:
            x = ddim_move(x, z, alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1])
    res = torch.stack(residuals).mean(-1).cpu()  # (K, M)
    ratios = (res[:, 1:] / res[:, :-1].clamp_min(1e-30)) if iterations > 1 else res[:, :0]
    stats = {"levels": levels, "iterations": iterations, "residual": res.tolist(), "contraction": ratios.tolist()}
    return SampleResult(x0=x, nfe=net.nfe, stats=stats)


def budget(settings: dict[str, Any], nfe: int) -> dict[str, Any]:
    """Settings that spend ``nfe`` evaluations: the configured number of levels (at most nfe),
    the rest as fixed-point iterations per level."""
    levels = min(settings["levels"], nfe)
    return {**settings, "levels": levels, "iterations": max(1, nfe // levels)}
