"""RTK-ULD: reverse transition kernels sampled by underdamped Langevin dynamics (Huang et al.
2024, §4) with the BAOAB integrator (Leimkuhler & Matthews 2013); no accept/reject, so only the
score is needed. Step h = ``step_size``/√L and friction γ = ``friction``·√L with L the segment
target's curvature scale a²/b + 1/σ_s², so every segment is integrated at the same resolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.samplers.base import Callback, CountingDenoiser, SampleResult, check_budget, report
from rtkrun.samplers.rtk import baoab_step, run_segments, segment_times
from rtkrun.seeding import SampleNoise


@dataclass
class RTKULDConfig:
    name: str = "rtk_uld"
    segments: int = 5
    segment_length: float | None = None
    segment_space: str = "t"
    inner_steps: int = 20
    step_size: float = 0.3
    friction: float = 2.0
    t_max: float = 1.0
    t_min: float = 1e-3
    nfe: int | None = None  # a budget: when set, the settings above are fitted to it (samplers/__init__.py)

    def __post_init__(self) -> None:
        check_budget(self.nfe)
        if self.segments < 1 or self.inner_steps < 0:
            raise ConfigError("segments must be >= 1 and inner_steps >= 0")
        if self.step_size <= 0 or self.friction <= 0:
            raise ConfigError(f"step_size and friction must be > 0, got {self.step_size}, {self.friction}")
        if self.segment_space not in ("t", "logsnr"):
            raise ConfigError(f"segment_space={self.segment_space!r} is unknown; choose t or logsnr")


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
    segment_space: str = "t",
    inner_steps: int = 20,
    step_size: float = 0.3,
    friction: float = 2.0,
    t_max: float = 1.0,
    t_min: float = 1e-3,
) -> SampleResult:
    net = CountingDenoiser(denoiser)

    def kernel(target, y, score, segment, cb):
        root = target.curvature.sqrt()
        h = torch.full((y.shape[0],), step_size, dtype=y.dtype, device=y.device) / root
        v = generator.randn(*y.shape[1:]).to(y.dtype)
        for i in range(inner_steps):
            y, v, score = baoab_step(target, y, v, score, h, friction * root, generator)
            report(cb, step=net.nfe - 1, segment=segment, inner=i, t=target.s, x=y, nfe=net.nfe)
        return y, {}

    times = segment_times(schedule, segments, segment_length, segment_space, t_max, t_min)
    x0, seg_stats, _ = run_segments(net, x_T, schedule, times, generator, callback, kernel)
    return SampleResult(x0=x0, nfe=net.nfe, stats={"segments": len(seg_stats), "integrator": "BAOAB"})
