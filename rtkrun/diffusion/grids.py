"""Sampling time grids.

A grid for N network evaluations is a float64 tensor of N + 1 times
t_0 = t_max > t_1 > … > t_{N−1} = t_min > t_N = 0: the network is evaluated at t_0 … t_{N−1}
and the last step lands on clean data (its output is the denoised estimate at t_{N−1}).
"""

from __future__ import annotations

import math

import torch

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError


def _check(steps: int, t_max: float, t_min: float) -> None:
    if steps < 1:
        raise ConfigError(f"sampler.steps must be >= 1, got {steps}")
    if not 0.0 < t_min <= t_max <= 1.0:
        raise ConfigError(f"sampler: need 0 < t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")


def _finish(inner: torch.Tensor, t_max: float, t_min: float) -> torch.Tensor:
    # Pin the end points exactly (λ-based grids lose them to clamping) and append t = 0.
    inner = inner.clone()
    inner[0] = t_max
    inner[-1] = t_min if len(inner) > 1 else t_max
    return torch.cat([inner, inner.new_zeros(1)])


def uniform_grid(schedule: VPSchedule, steps: int, t_max: float = 1.0, t_min: float = 1e-3, **_) -> torch.Tensor:
    """Equal steps in t."""
    _check(steps, t_max, t_min)
    return _finish(torch.linspace(t_max, t_min, steps, dtype=torch.float64), t_max, t_min)


def quadratic_grid(schedule: VPSchedule, steps: int, t_max: float = 1.0, t_min: float = 1e-3, **_) -> torch.Tensor:
    """Steps growing quadratically with t (DDIM's "quadratic" skip, Song et al. 2021, App. D.2)."""
    _check(steps, t_max, t_min)
    u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    return _finish(t_min + (t_max - t_min) * u**2, t_max, t_min)


def logsnr_grid(schedule: VPSchedule, steps: int, t_max: float = 1.0, t_min: float = 1e-3, **_) -> torch.Tensor:
    """Equal steps in log-SNR λ between λ(t_max) and λ(t_min)."""
    _check(steps, t_max, t_min)
    ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), steps, dtype=torch.float64)
    return _finish(schedule.t_from_log_snr(lam), t_max, t_min)


def edm_grid(
    schedule: VPSchedule,
    steps: int,
    t_max: float = 1.0,
    t_min: float = 1e-3,
    rho: float = 7.0,
    sigma_max: float = 80.0,
    **_,
) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: σ_i^{1/ρ} linear in i, with σ = σ(t)/α(t) = exp(−λ/2), from
    min(σ(t_max), σ_max = 80) as in EDM. Without the cap a schedule with α(t_max) ≈ 0 (σ up to
    e^15 at the λ clamp) spends most of its steps where nothing happens; the first step still
    starts at t_max exactly."""
    _check(steps, t_max, t_min)
    if rho <= 0:
        raise ConfigError(f"sampler.rho must be > 0, got {rho}")
    ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    s_max, s_min = torch.exp(-ends / 2)
    s_max = torch.clamp(s_max, max=max(sigma_max, float(s_min) * 1.0001))
    u = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _finish(schedule.t_from_log_snr(-2 * torch.log(sig)), t_max, t_min)


def benton_grid(schedule: VPSchedule, steps: int, t_max: float = 1.0, t_min: float = 1e-3, **_) -> torch.Tensor:
    """Benton et al. (2023, arXiv 2308.03686): in OU time τ = −log α, half the steps linear on
    [1, τ_max] and half exponentially decaying (geometric) on [τ_min, 1]."""
    _check(steps, t_max, t_min)
    ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    tau_max, tau_min = (0.5 * torch.nn.functional.softplus(-ends)).tolist()  # −log α = ½ log(1 + e^{−λ})
    tau_split = 1.0 if tau_min < 1.0 < tau_max else math.sqrt(tau_max * tau_min)
    n_lin = steps // 2
    lin = torch.linspace(tau_max, tau_split, n_lin + 1, dtype=torch.float64)[:-1]
    geo = torch.logspace(math.log10(tau_split), math.log10(tau_min), steps - n_lin, dtype=torch.float64)
    tau = torch.cat([lin, geo])
    alpha_bar = torch.exp(-2 * tau)
    return _finish(schedule.t_from_alpha_bar(alpha_bar).clamp(0.0, 1.0), t_max, t_min)


def ou_horizon(schedule: VPSchedule, t: float) -> float:
    """The Ornstein–Uhlenbeck time τ = −log α(t) = ½ log(1 + e^(−λ(t))) a sampler starting at t
    integrates over, through the clamped log-SNR λ that the grids use (``benton_grid``)."""
    lam = schedule.log_snr(torch.tensor([t], dtype=torch.float64))
    return float(0.5 * torch.nn.functional.softplus(-lam)[0])


def t_max_for_horizon(schedule: VPSchedule, horizon: float) -> float:
    """The time t with −log α(t) = ``horizon`` (capped at 1): starting every grid there compares
    grids at one OU horizon. At t_max = 1 the horizon is the schedule's own, which for the cosine
    schedule is set by the log-SNR clamp (about 15), far beyond the e^(−T) ≈ 0 that Benton et
    al. need; their linear half then spends most of its steps where α < 0.01."""
    if horizon <= 0:
        raise ConfigError(f"the OU horizon must be > 0, got {horizon}")
    t = schedule.t_from_alpha_bar(torch.tensor(math.exp(-2 * horizon), dtype=torch.float64))
    return min(1.0, float(t))


GRIDS = {
    "uniform": uniform_grid,
    "quadratic": quadratic_grid,
    "logsnr": logsnr_grid,
    "edm": edm_grid,
    "benton": benton_grid,
}


def make_grid(name: str, schedule: VPSchedule, steps: int, **kwargs) -> torch.Tensor:
    if name not in GRIDS:
        raise ConfigError(f"sampler.grid={name!r} is unknown; choose one of {', '.join(GRIDS)}")
    return GRIDS[name](schedule, steps, **kwargs)
