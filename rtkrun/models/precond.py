"""EDM-style preconditioning shared by the denoisers (Karras et al. 2022, Table 1), written for
the VP parametrisation x_t = α x0 + σ ε with data standard deviation s_d.

* inputs: x_t is divided by its standard deviation √(α²s_d² + σ²), the estimate z by s_d;
* noise level: the network sees log-SNR λ(t), scaled to [−1, 1], through sinusoidal features;
* output heads: ``dddm``, x0_hat = x_t − F literally (Zhang et al. 2024, §3), or ``edm``,
  x0_hat = c_skip·x_t/α + c_out·F, the identity as σ → 0 by construction.
Either way the DDDM map is F = x_t − x0_hat.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rtkrun.diffusion.param import expand_like
from rtkrun.diffusion.schedules import LOG_SNR_LIMIT, VPSchedule


class NoiseLevelFeatures(nn.Module):
    """Fixed sinusoidal features of u = λ/LOG_SNR_LIMIT ∈ [−1, 1] at geometric frequencies
    from π/2 to ``max_frequency``·π."""

    def __init__(self, n_features: int, max_frequency: float = 8.0) -> None:
        super().__init__()
        half = max(n_features // 2, 1)
        self.register_buffer("freqs", math.pi * torch.logspace(-1, math.log2(max_frequency), half, base=2.0))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        angles = u[:, None] * self.freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def noise_level(schedule: VPSchedule, t: torch.Tensor) -> torch.Tensor:
    """u = λ(t)/LOG_SNR_LIMIT ∈ [−1, 1], the network's noise-level input."""
    return schedule.log_snr(t) / LOG_SNR_LIMIT


def input_scale(alpha: torch.Tensor, sigma: torch.Tensor, data_std: float) -> torch.Tensor:
    """c_in = 1/√(α²s_d² + σ²): x_t·c_in has unit variance per coordinate."""
    return torch.rsqrt(alpha**2 * data_std**2 + sigma**2)


def apply_head(head: str, x_t: torch.Tensor, out: torch.Tensor, alpha, sigma, data_std: float) -> torch.Tensor:
    """x0_hat from the network output F. ``edm``: EDM's c_skip, c_out in data space y = x_t/α with
    noise level σ/α, written with α, σ so that α = 0 stays finite:
    c_skip/α = α s_d²/v, c_out = σ s_d/√v, v = α²s_d² + σ²."""
    if head == "dddm":
        return x_t - out
    a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)
    v = a**2 * data_std**2 + s**2
    return (a * data_std**2 / v) * x_t + (s * data_std * torch.rsqrt(v)) * out


def estimate_and_flag(
    x_t: torch.Tensor, z: torch.Tensor | None, estimate_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z with absent rows zeroed, has-estimate flag (B,) in x_t's dtype). ``z=None`` is the null
    estimate for every row; ``estimate_mask`` (B,) bool marks it per row, so null and real
    estimates share one batched call."""
    if z is None:
        return torch.zeros_like(x_t), x_t.new_zeros(x_t.shape[0])
    if estimate_mask is None:
        return z, x_t.new_ones(x_t.shape[0])
    flag = estimate_mask.to(x_t.dtype)
    return z * expand_like(flag, z), flag
