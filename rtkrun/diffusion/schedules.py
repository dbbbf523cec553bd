"""Variance-preserving noise schedules in continuous time t ∈ [0, 1].

x_t = α(t)·x0 + σ(t)·ε with α² + σ² = 1. Every schedule is defined by ᾱ(t) = α(t)² and its
inverse; log-SNR λ(t) = log(ᾱ/(1 − ᾱ)) and t(λ) follow. Computations run in float64 and are
cast back, because λ near t = 0 and t = 1 loses all precision in float32.
"""

from __future__ import annotations

import math

import torch

from rtkrun.errors import ConfigError
from rtkrun.schemas.diffusion import CosineConfig, LinearConfig, PolynomialConfig

# λ is clamped to this range so that grids and conversions stay finite where ᾱ hits 0 or 1.
LOG_SNR_LIMIT = 30.0


class VPSchedule:
    """Base class: subclasses give ᾱ(t) (``alpha_bar``) and its inverse (``t_from_alpha_bar``)."""

    name = "vp"

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:  # float64 in, float64 out
        raise NotImplementedError

    def t_from_alpha_bar(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # Public API: accept any float tensor, return the same dtype.
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar(t.double()).clamp(0.0, 1.0).sqrt().to(t.dtype)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.alpha_bar(t.double())).clamp(0.0, 1.0).sqrt().to(t.dtype)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.alpha(t), self.sigma(t)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """λ(t) = log(α²/σ²), clamped to ±LOG_SNR_LIMIT."""
        a2 = self.alpha_bar(t.double())
        lam = torch.log(a2) - torch.log1p(-a2)
        return lam.clamp(-LOG_SNR_LIMIT, LOG_SNR_LIMIT).to(t.dtype)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """Inverse of ``log_snr`` on the schedule's range."""
        a2 = torch.sigmoid(log_snr.double())
        return self.t_from_alpha_bar(a2).clamp(0.0, 1.0).to(log_snr.dtype)


class LinearSchedule(VPSchedule):
    """DDPM's linear β (Ho et al. 2020: β from 1e-4 to 0.02 over 1000 steps) made continuous.

    β(t) = N·(β_1 + t(β_N − β_1)) as in Song et al. 2021 (VP SDE), so −log ᾱ(t) =
    N·(β_1 t + ½(β_N − β_1) t²).
    """

    name = "linear"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        if not 0 < beta_start <= beta_end < 1:
            raise ConfigError(f"schedule: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.b0 = beta_start * num_steps
        self.b1 = beta_end * num_steps

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(self.b0 * t + 0.5 * (self.b1 - self.b0) * t**2))

    def t_from_alpha_bar(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        c = -torch.log(alpha_bar)
        slope = self.b1 - self.b0
        if slope == 0:
            return c / self.b0
        return (-self.b0 + torch.sqrt(self.b0**2 + 2 * slope * c)) / slope


class CosineSchedule(VPSchedule):
    """Nichol & Dhariwal (2021) eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2·(t + s)/(1 + s))."""

    name = "cosine"

    def __init__(self, s: float = 0.008):
        if s < 0:
            raise ConfigError(f"schedule.s must be >= 0, got {s}")
        self.s = s
        self._f0 = math.cos(math.pi / 2 * s / (1 + s)) ** 2

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s)) ** 2 / self._f0

    def t_from_alpha_bar(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        theta = torch.arccos(torch.sqrt((alpha_bar * self._f0).clamp(0.0, 1.0)))
        return theta * 2 / math.pi * (1 + self.s) - self.s


class PolynomialSchedule(VPSchedule):
    """EDM for molecules (Hoogeboom et al. 2022, App. B) ``polynomial_2`` in continuous time.

    ᾱ(t) = (1 − 2p)(1 − t^k)² + p with precision floor p (1e-5) and power k (2). The discrete
    original also clips the ratio ᾱ_i/ᾱ_{i−1} at 0.001, which only acts at the last few of its
    1000 steps near t = 1; the continuous form omits that clip.
    """

    name = "polynomial"

    def __init__(self, power: float = 2.0, precision: float = 1e-5):
        if power <= 0 or not 0 < precision < 0.5:
            raise ConfigError(f"schedule: need power > 0 and 0 < precision < 0.5, got {power}, {precision}")
        self.power = power
        self.precision = precision

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - 2 * self.precision) * (1 - t**self.power) ** 2 + self.precision

    def t_from_alpha_bar(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        inner = ((alpha_bar - self.precision) / (1 - 2 * self.precision)).clamp(0.0, 1.0)
        return (1 - torch.sqrt(inner)).clamp(0.0, 1.0) ** (1 / self.power)


# name -> (config schema, constructor); the config layer validates against the schema.
SCHEDULES = {
    "linear": (LinearConfig, lambda c: LinearSchedule(c.beta_start, c.beta_end, c.num_steps)),
    "cosine": (CosineConfig, lambda c: CosineSchedule(c.s)),
    "polynomial": (PolynomialConfig, lambda c: PolynomialSchedule(c.power, c.precision)),
}


def build_schedule(cfg) -> VPSchedule:
    """Schedule from a validated config node (any object with the schema's attributes)."""
    return SCHEDULES[cfg.name][1](cfg)
