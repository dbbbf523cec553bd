"""RTK-ULD: reverse transition kernels sampled by underdamped Langevin dynamics (Huang et al.
2024, §4) with the BAOAB integrator (Leimkuhler & Matthews 2013); no accept/reject, so only the
score is needed.

The step and the friction follow the segment target's stiffness L. ULD has no acceptance rate
to tune on, so each segment starts with ``warmup_steps`` MALA steps (trapezoid energy: scores
only) that move the chain and find, per sample, the MALA step τ* reaching ``target_accept``
(``rtk.tune_mala``). 1/τ* measures the stiffness where the chain is; the curvature guess
(``rtk.curvature_guess``: exact for the MoG oracle) bounds it from the model's side. L is the
larger of the two, so a sample whose search overshot (MALA can accept τ·L > 2 in low dimension,
where BAOAB would be unstable) still gets a stable step. The BAOAB step is h = ``step_size``/√L
and the friction γ = ``friction``·√L: every segment is integrated at the same resolution
whatever its curvature.
"""

from __future__ import annotations

import torch

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.samplers.base import Callback, CountingDenoiser, SampleResult
from rtkrun.samplers.rtk import (
    baoab_step,
    curvature_guess,
    report_step,
    rtk_budget,
    run_segments,
    segment_times,
    tune_mala,
)
from rtkrun.seeding import SampleNoise


@torch.no_grad()
def rtk_uld(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    segments: int = 5,  # RTK segments from t_max to t_min
    segment_length: float | None = None,  # η: overrides ``segments``
    segment_space: str = "angle",  # angle (φ = arctan(σ/α)) | t | logsnr
    warmup_steps: int = 10,  # per segment: MALA steps that find τ* (counted in NFE)
    inner_steps: int = 12,  # per segment: BAOAB steps
    step_size: float = 1.0,  # h·√L
    friction: float = 1.0,  # γ/√L
    target_accept: float = 0.57,  # the step-size search's acceptance target
    curvature: str = "auto",  # the search's start: auto | model | probe | bound (rtk.curvature_guess)
    t_max: float = 1.0,  # the first time of the grid
    t_min: float = 1e-3,  # the last time before the final estimate
) -> SampleResult:
    net = CountingDenoiser(denoiser)

    def kernel(target, y, score, segment, cb):
        if warmup_steps + inner_steps == 0:
            return y, score, {}
        guess = curvature_guess(target, y, score, curvature, generator)
        y, score, tau, _ = tune_mala(target, y, score, 0.5 / guess, warmup_steps, target_accept, generator, cb, segment)
        root = torch.maximum(guess, 1.0 / tau).sqrt()  # √L, L the stiffness
        v = generator.randn(*y.shape[1:]).to(y.dtype)
        for i in range(inner_steps):
            y, v, score = baoab_step(target, y, v, score, step_size / root, friction * root, generator)
            report_step(cb, target, segment, i, y)
        return y, score, {"tau": (1.0 / root**2).log().mean().exp()}

    times = segment_times(schedule, segments, segment_length, segment_space, t_max, t_min)
    x0, seg_stats, _ = run_segments(net, x_T, schedule, times, callback, kernel)
    taus = [s["tau"] for s in seg_stats if "tau" in s]
    stats = {"segments": len(seg_stats), "integrator": "BAOAB"}
    if taus:
        stats["step_size"] = torch.stack(taus).tolist()  # per segment: the geometric mean of 1/L
    return SampleResult(x0=x0, nfe=net.nfe, stats=stats)


budget = rtk_budget  # segments and steps within the NFE budget (samplers/rtk.py)
