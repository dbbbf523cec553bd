"""RTK-MALA (Huang et al. 2024, Alg. 1 with the MALA inner sampler of Alg. 2).

Segments are given by a count or a length η in t or log-SNR. Each segment target is sampled
from the DDIM jump by MALA in two phases: ``warmup_steps`` steps that search, per sample, for
the step size τ reaching ``target_accept`` (``rtk.StepSizeSearch``, started from ``step_size``
over a curvature guess, ``rtk.curvature_guess``), then ``inner_steps`` steps at that τ, frozen,
so they leave the segment target invariant. With ``adapt=false`` there is no search: every
step uses τ = step_size / guess. ``target=dddm`` instead samples, at K levels, the DDDM proxy
π(z) ∝ exp(−‖z − f(z, x_t, t)‖²/(2σ²)) with exact energy and a VJP gradient.
"""

from __future__ import annotations

import torch

from rtkrun.diffusion.grids import make_grid
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.samplers.base import (
    Callback,
    CountingDenoiser,
    SampleResult,
    ddim_move,
    report,
)
from rtkrun.samplers.rtk import (
    StepSizeSearch,
    _bcast,
    _sum,
    acceptance_probability,
    curvature_guess,
    mala_step,
    report_step,
    rtk_budget,
    run_segments,
    segment_times,
    tune_mala,
)
from rtkrun.seeding import SampleNoise


def _mean(values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The mean of per-step (B,) values as a 0-d tensor on the device (NaN without steps):
    statistics stay on the device until the sampler ends, so the loop never waits for the GPU."""
    if not values:
        return torch.full((), float("nan"), device=like.device)
    return torch.stack(values).to(like.dtype).mean()


def _mala_kernel(warmup_steps, inner_steps, step_size, adapt, target_accept, curvature, radius, generator):
    def kernel(target, y, score, segment, callback):
        if warmup_steps + inner_steps == 0:
            return y, score, {"acceptance": _mean([], y), "tau": _mean([], y)}
        tau = step_size / curvature_guess(target, y, score, curvature, generator)
        warm = []
        if adapt:
            y, score, tau, warm = tune_mala(
                target, y, score, tau, warmup_steps, target_accept, generator, callback, segment
            )
        accepted, center = [], y
        for i in range(inner_steps if adapt else warmup_steps + inner_steps):
            y, score, acc, _ = mala_step(target, y, score, tau, generator, center, radius)
            accepted.append(acc)
            report_step(callback, target, segment, i, y, acc)
        # the acceptance of the frozen phase (of the warm-up where it is all there is)
        acceptance = _mean(accepted, y) if accepted else _mean(warm, y)
        return y, score, {"acceptance": acceptance, "tau": tau.log().mean().exp()}

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
    warmup_steps,
    inner_steps,
    step_size,
    adapt,
    target_accept,
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
        steps = warmup_steps + inner_steps
        search = StepSizeSearch(
            torch.full((x.shape[0],), step_size, dtype=x.dtype, device=x.device) * sigma2, warmup_steps, target_accept
        )
        tau, accepted = search.tau, []
        for i in range(steps):
            tuning = adapt and i < warmup_steps
            tau = search.tau if tuning else tau
            tb = _bcast(tau, z)
            prop = z - tb * g + torch.sqrt(2 * tb) * generator.randn(*z.shape[1:]).to(z.dtype)
            u_new, g_new = _dddm_energy_and_grad(net, x, t, prop, sigma2)
            log_ratio = (
                u - u_new - _sum((z - prop + tb * g_new) ** 2) / (4 * tau) + _sum((prop - z + tb * g) ** 2) / (4 * tau)
            )
            acc = torch.log(generator.rand(1).reshape(-1).to(z.dtype)) < log_ratio
            keep = _bcast(acc, z)
            z, u, g = torch.where(keep, prop, z), torch.where(acc, u_new, u), torch.where(keep, g_new, g)
            if tuning:
                search.update(acceptance_probability(log_ratio))
                if i == warmup_steps - 1:
                    tau = search.frozen()
            else:
                accepted.append(acc)
            # the network read (x, t, proposal): that is the point to report, the chain's state beside it
            report(
                callback, step=net.nfe - 1, segment=k, inner=i, t=ts[k], x=x, z=prop, state=z, accepted=acc, nfe=net.nfe
            )
        seg_stats.append({"acceptance": _mean(accepted, z), "tau": tau.log().mean().exp()})
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
    segments: int = 5,  # RTK segments from t_max to t_min
    segment_length: float | None = None,  # η: overrides ``segments``
    segment_space: str = "angle",  # angle (φ = arctan(σ/α)) | t | logsnr
    warmup_steps: int = 10,  # per segment: the step-size search (counted in NFE)
    inner_steps: int = 12,  # per segment: MALA at the frozen step size
    step_size: float = 0.5,  # τ₀ in units of 1/curvature guess (score target) or σ² (dddm target)
    adapt: bool = True,  # false: no search, τ = step_size / guess throughout
    target_accept: float = 0.57,  # the step-size search's acceptance target
    curvature: str = "auto",  # the search's start: auto | model | probe | bound (rtk.curvature_guess)
    energy: str = "trapezoid",  # exact | trapezoid | gauss_legendre
    gl_nodes: int = 3,  # Gauss–Legendre nodes per energy
    radius: float | None = None,  # projected variant: reject proposals farther than this from the post-warm-up state
    target: str = "score",  # score | dddm
    t_max: float = 1.0,  # the first time of the grid
    t_min: float = 1e-3,  # the last time before the final estimate
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
            warmup_steps,
            inner_steps,
            step_size,
            adapt,
            target_accept,
            t_max,
            t_min,
        )
        evals = 0
    else:
        times = segment_times(schedule, segments, segment_length, segment_space, t_max, t_min)
        kernel = _mala_kernel(warmup_steps, inner_steps, step_size, adapt, target_accept, curvature, radius, generator)
        x0, seg_stats, evals = run_segments(net, x_T, schedule, times, callback, kernel, energy, gl_nodes)
    per_segment = torch.stack(
        [torch.stack([s["acceptance"], s["tau"].to(s["acceptance"])]) for s in seg_stats]
    ).tolist()
    stats = {
        "acceptance": [a for a, _ in per_segment],  # the one host sync
        "step_size": [tau for _, tau in per_segment],  # per segment: the geometric mean of the frozen τ
        "segments": len(seg_stats),
        "energy": energy,
        "energy_evals": evals,
    }
    return SampleResult(x0=x0, nfe=net.nfe, stats=stats)


budget = rtk_budget  # segments and steps within the NFE budget (samplers/rtk.py)
