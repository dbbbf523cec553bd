"""RTK-MALA (Huang et al. 2024, Alg. 1 with the MALA inner sampler of Alg. 2).

Segments are given by a count or a length η in t or log-SNR. Each segment target is sampled by
``inner_steps`` MALA steps started at the DDIM jump. The step size τ is per sample and per
segment: it starts at ``step_size`` over the target's curvature scale a²/b + 1/σ_s² and,
with ``adapt``, moves by Robbins–Monro on the sample's own accept indicator toward
``target_accept`` (a fixed τ stalls near t → 0, REFERENCE.md §1.3); per-sample adaptation keeps
sample i independent of the rest of its batch. ``target=dddm`` instead samples, at K levels, the
DDDM proxy π(z) ∝ exp(−‖z − f(z, x_t, t)‖²/(2σ²)) with exact energy and a VJP gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtkrun.diffusion.grids import make_grid
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.samplers.base import Callback, CountingDenoiser, SampleResult, check_budget, ddim_move, report
from rtkrun.samplers.rtk import _bcast, _sum, mala_step, run_segments, segment_times
from rtkrun.seeding import SampleNoise


@dataclass
class RTKMALAConfig:
    name: str = "rtk_mala"
    segments: int = 5
    segment_length: float | None = None  # η: overrides ``segments``
    segment_space: str = "t"  # t | logsnr
    inner_steps: int = 20
    step_size: float = 0.5  # τ₀ in units of 1/(a²/b + 1/σ_s²) (score target) or σ² (dddm target)
    adapt: bool = True
    target_accept: float = 0.57
    adapt_rate: float = 0.5
    energy: str = "trapezoid"  # exact | trapezoid | gauss_legendre
    gl_nodes: int = 3
    radius: float | None = None  # projected variant: reject proposals farther than this from the start
    target: str = "score"  # score | dddm
    t_max: float = 1.0
    t_min: float = 1e-3
    nfe: int | None = None  # a budget: when set, the settings above are fitted to it (samplers/__init__.py)

    def __post_init__(self) -> None:
        check_budget(self.nfe)
        if self.segments < 1 or self.inner_steps < 0 or self.gl_nodes < 1:
            raise ConfigError("segments and gl_nodes must be >= 1 and inner_steps >= 0")
        if self.step_size <= 0 or (self.segment_length is not None and self.segment_length <= 0):
            raise ConfigError(f"step_size and segment_length must be > 0, got {self.step_size}, {self.segment_length}")
        if self.segment_space not in ("t", "logsnr"):
            raise ConfigError(f"segment_space={self.segment_space!r} is unknown; choose t or logsnr")
        if self.energy not in ("exact", "trapezoid", "gauss_legendre"):
            raise ConfigError(f"energy={self.energy!r} is unknown; choose exact, trapezoid or gauss_legendre")
        if self.target not in ("score", "dddm"):
            raise ConfigError(f"target={self.target!r} is unknown; choose score or dddm")
        if not 0 < self.target_accept < 1:
            raise ConfigError(f"target_accept must be in (0, 1), got {self.target_accept}")


def _rate(accepted: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The acceptance rate of a segment as a 0-d tensor on the device (NaN without MALA steps):
    statistics stay on the device until the sampler ends, so the loop never waits for the GPU."""
    if not accepted:
        return torch.full((), float("nan"), device=like.device)
    return torch.stack(accepted).float().mean()


def _mala_kernel(inner_steps, step_size, adapt, target_accept, adapt_rate, radius, generator):
    def kernel(target, y, score, segment, callback):
        tau = torch.full((y.shape[0],), 1.0, dtype=y.dtype, device=y.device) * (step_size / target.curvature)
        accepted, center = [], y
        for i in range(inner_steps):
            y, score, acc, _ = mala_step(target, y, score, tau, generator, center, radius)
            accepted.append(acc)
            if adapt:
                tau = tau * torch.exp(adapt_rate * (acc.to(y.dtype) - target_accept))
            report(
                callback,
                step=target.net.nfe - 1,
                segment=segment,
                inner=i,
                t=target.s,
                x=y,
                accepted=acc,
                nfe=target.net.nfe,
            )
        return y, {"acceptance": _rate(accepted, y)}

    return kernel


def _dddm_energy_and_grad(net, x, t, z, sigma2):
    """U(z) = ‖z − f(z, x, t)‖²/(2σ²) per sample and ∇U by one VJP (one NFE)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        r = z - net(x, t, z)
        energy = _sum(r**2) / (2 * sigma2)
        (grad,) = torch.autograd.grad(energy.sum(), z)
    return energy.detach(), grad


def _rtk_dddm(
    net,
    x_T,
    schedule,
    generator,
    callback,
    levels,
    inner_steps,
    step_size,
    adapt,
    target_accept,
    adapt_rate,
    t_max,
    t_min,
):
    ts = make_grid("uniform", schedule, levels, t_max=t_max, t_min=t_min).to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(ts)
    x, seg_stats = x_T, []
    for k in range(levels):
        t = ts[k].to(x.dtype)
        sigma2 = (sigmas[k] ** 2).to(x.dtype)
        z = net(x, t)  # start from the plain denoiser's estimate
        u, g = _dddm_energy_and_grad(net, x, t, z, sigma2)
        tau = torch.full((x.shape[0],), step_size, dtype=x.dtype, device=x.device) * sigma2
        accepted = []
        for i in range(inner_steps):
            tb = _bcast(tau, z)
            prop = z - tb * g + torch.sqrt(2 * tb) * generator.randn(*z.shape[1:]).to(z.dtype)
            u_new, g_new = _dddm_energy_and_grad(net, x, t, prop, sigma2)
            log_ratio = (
                u - u_new - _sum((z - prop + tb * g_new) ** 2) / (4 * tau) + _sum((prop - z + tb * g) ** 2) / (4 * tau)
            )
            acc = torch.log(generator.rand(1).reshape(-1).to(z.dtype)) < log_ratio
            keep = _bcast(acc, z)
            z, u, g = torch.where(keep, prop, z), torch.where(acc, u_new, u), torch.where(keep, g_new, g)
            accepted.append(acc)
            if adapt:
                tau = tau * torch.exp(adapt_rate * (acc.to(z.dtype) - target_accept))
            report(callback, step=net.nfe - 1, segment=k, inner=i, t=ts[k], x=x, z=z, accepted=acc, nfe=net.nfe)
        seg_stats.append({"acceptance": _rate(accepted, z)})
        if k == levels - 1:
            x = z
        else:
            x = ddim_move(x, z, alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1])
    return x, seg_stats


@torch.no_grad()
def rtk_mala(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    segments: int = 5,
    segment_length: float | None = None,
    segment_space: str = "t",
    inner_steps: int = 20,
    step_size: float = 0.5,
    adapt: bool = True,
    target_accept: float = 0.57,
    adapt_rate: float = 0.5,
    energy: str = "trapezoid",
    gl_nodes: int = 3,
    radius: float | None = None,
    target: str = "score",
    t_max: float = 1.0,
    t_min: float = 1e-3,
) -> SampleResult:
    net = CountingDenoiser(denoiser)
    if energy == "exact" and not hasattr(denoiser, "log_prob"):
        raise ConfigError("sampler.energy=exact needs a model with log_prob (mog_oracle); use trapezoid")
    if target == "dddm":
        x0, seg_stats = _rtk_dddm(
            net,
            x_T,
            schedule,
            generator,
            callback,
            segments,
            inner_steps,
            step_size,
            adapt,
            target_accept,
            adapt_rate,
            t_max,
            t_min,
        )
        evals = 0
    else:
        times = segment_times(schedule, segments, segment_length, segment_space, t_max, t_min)
        kernel = _mala_kernel(inner_steps, step_size, adapt, target_accept, adapt_rate, radius, generator)
        x0, seg_stats, evals = run_segments(net, x_T, schedule, times, generator, callback, kernel, energy, gl_nodes)
    stats = {
        "acceptance": torch.stack([s["acceptance"] for s in seg_stats]).tolist(),  # the one host sync
        "segments": len(seg_stats),
        "energy": energy,
        "energy_evals": evals,
    }
    return SampleResult(x0=x0, nfe=net.nfe, stats=stats)
