"""``mog_mlp``: a SiLU MLP denoiser for low-dimensional data that reads the DDDM estimate z.

Output heads: ``dddm``, f_θ(z, x_t, t) = x_t − F_θ(z, x_t, t) literally (Zhang et al. 2024,
§3), and ``edm`` (default), EDM's skip/output scaling, which is the identity as σ → 0 by
construction: with the literal head the network must learn F ≈ 0 at small noise, where the x0
loss hardly sees its errors, and samples collapse onto a curve through the modes. Either way
the DDDM map is F = x_t − x0_hat. The estimate z enters by
concatenation together with a has-estimate flag, so ``z=None`` (the null estimate of the
self-conditioning trick) is distinguishable from an estimate that happens to be zero. SiLU
rather than ReLU: the diagnostics need non-zero second derivatives (docs/science.md, the regularity bound).
Inputs are preconditioned as in EDM (Karras et al. 2022, Table 1): x_t and z are divided by
their standard deviations (√(α²s_d² + σ²) and s_d), and the network sees the noise level as
log-SNR λ(t) rather than t, which resolves the small-noise end where samples get their detail.
"""

from __future__ import annotations

import torch
from torch import nn

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.models.precond import (
    NoiseLevelFeatures,
    apply_head,
    estimate_and_flag,
    input_scale,
    noise_level,
)
from rtkrun.schemas.models import MogMLPConfig


class MogMLP(nn.Module):
    accepts_estimate_mask = True  # the DDDM objective may batch null and real estimates in one call

    def __init__(self, cfg: MogMLPConfig, dim: int, schedule: VPSchedule, data_std: float) -> None:
        super().__init__()
        self.dim = dim
        self.schedule = schedule
        self.data_std = float(data_std)
        self.head = cfg.head
        self.time = NoiseLevelFeatures(cfg.time_features)
        width_in = 2 * dim + 1 + 2 * max(cfg.time_features // 2, 1)
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [nn.Linear(width_in if i == 0 else cfg.hidden, cfg.hidden), nn.SiLU()]
        layers.append(nn.Linear(cfg.hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        z: torch.Tensor | None = None,
        estimate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``estimate_mask`` (B,) bool: rows where it is False are treated as z = None."""
        z, flag = estimate_and_flag(x_t, z, estimate_mask)
        flag = flag[:, None]
        t = t.to(x_t.dtype).expand(x_t.shape[0]) if t.ndim == 0 else t.to(x_t.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        c_in = input_scale(alpha, sigma, self.data_std)[:, None]
        features = torch.cat([c_in * x_t, z / self.data_std, flag, self.time(noise_level(self.schedule, t))], dim=-1)
        return apply_head(self.head, x_t, self.net(features), alpha, sigma, self.data_std)


def build(cfg: MogMLPConfig, dataset, schedule: VPSchedule) -> MogMLP:
    return MogMLP(cfg, dim=dataset.sample_shape[0], schedule=schedule, data_std=dataset.data_std)
