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

from dataclasses import dataclass

import torch

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.samplers.base import Callback, CountingDenoiser, SampleResult, check_budget
from rtkrun.samplers.rtk import (
    CURVATURE_GUESSES,
    baoab_step,
    curvature_guess,
    report_step,
    rtk_budget,
    run_segments,
    segment_times,
    tune_mala,
)
from rtkrun.seeding import SampleNoise


@dataclass
class RTKULDConfig:
    name: str = "rtk_uld"
    segments: int = 5
    segment_length: float | None = None
    segment_space: str = "angle"  # angle (φ = arctan(σ/α)) | t | logsnr
    warmup_steps: int = 10  # per segment: MALA steps that find τ* (counted in NFE)
    inner_steps: int = 12  # per segment: BAOAB steps
    step_size: float = 1.0  # h·√L
    friction: float = 1.0  # γ/√L
    target_accept: float = 0.57
    curvature: str = "auto"  # the search's start: auto | model | probe | bound (rtk.curvature_guess)
    t_max: float = 1.0
    t_min: float = 1e-3
    nfe: int | None = None  # a budget: when set, the settings above are fitted to it (samplers/__init__.py)

    def __post_init__(self) -> None:
        check_budget(self.nfe)
        if self.segments < 1 or self.inner_steps < 0 or self.warmup_steps < 0:
            raise ConfigError("segments must be >= 1, inner_steps and warmup_steps >= 0")
        if self.step_size <= 0 or self.friction <= 0:
            raise ConfigError(f"step_size and friction must be > 0, got {self.step_size}, {self.friction}")
        if self.segment_space not in ("t", "logsnr", "angle"):
            raise ConfigError(f"segment_space={self.segment_space!r} is unknown; choose t, logsnr or angle")
        if self.curvature not in CURVATURE_GUESSES:
            raise ConfigError(f"curvature={self.curvature!r} is unknown; choose one of {', '.join(CURVATURE_GUESSES)}")
        if not 0 < self.target_accept < 1:
            raise ConfigError(f"target_accept must be in (0, 1), got {self.target_accept}")


@torch.no_grad()
def rtk_uld(
    denoiser,
    x_T: torch.Tensor,
    schedule: VPSchedule,
    *,
    generator: SampleNoise,
    callback: Callback | None = None,
    segments: int = 5,
    segment_length: float | None = None,
    segment_space: str = "angle",
    warmup_steps: int = 10,
    inner_steps: int = 12,
    step_size: float = 1.0,
    friction: float = 1.0,
    target_accept: float = 0.57,
    curvature: str = "auto",
    t_max: float = 1.0,
    t_min: float = 1e-3,
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
