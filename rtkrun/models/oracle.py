"""``mog_oracle``: the exact denoiser E[x0 | x_t] of a Gaussian mixture under a VP schedule.

It ignores the DDDM estimate z (the exact posterior mean needs none), has no parameters to
train, and offers the exact ``log_prob`` for samplers that use energies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rtkrun.data.mog import GaussianMixture
from rtkrun.diffusion.schedules import VPSchedule


@dataclass
class MogOracleConfig:
    name: str = "mog_oracle"


class MogOracle(nn.Module):
    needs_training = False

    def __init__(self, mixture: GaussianMixture, schedule: VPSchedule) -> None:
        super().__init__()
        self.register_buffer("means", mixture.means.clone())
        self.mixture = mixture
        self.schedule = schedule

    def _mixture(self, like: torch.Tensor) -> GaussianMixture:
        return GaussianMixture(self.means.to(like), self.mixture.std, self.mixture.weights)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return self._mixture(x_t).denoise(x_t, alpha, sigma)

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return self._mixture(x_t).log_prob(x_t, alpha, sigma)

    def score(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return self._mixture(x_t).score(x_t, alpha, sigma)


def build(cfg: MogOracleConfig, dataset, schedule) -> MogOracle:
    return MogOracle(dataset.mixture, schedule)
