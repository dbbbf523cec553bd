"""``mog_student``: the seed's tanh student with learnable means (Shah, Chen & Klivans 2023).

For q = ½N(μ*, I) + ½N(−μ*, I) under x_t = α x0 + σ ε the exact score is
tanh(α μ*ᵀx) α μ* − x; the student replaces μ* by a learnable μ. As a denoiser it is the
mixture posterior mean with the learnable means: for K = 2 with ``symmetric=true`` the means
are tied to ±μ and the formula reduces to the tanh form; general K uses softmax
responsibilities. The component std and weights are those of the dataset (known); only the
means are learned.
"""

from __future__ import annotations

import torch
from torch import nn

from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.metrics.mog import mean_recovery
from rtkrun.schemas.models import MogStudentConfig


class MogStudent(nn.Module):
    def __init__(self, cfg: MogStudentConfig, mixture: GaussianMixture, schedule: VPSchedule) -> None:
        super().__init__()
        k, d = mixture.means.shape
        if cfg.symmetric and k != 2:
            raise ConfigError(f"model.symmetric=true needs a 2-component dataset, got {k}; set model.symmetric=false")
        gen = torch.Generator().manual_seed(cfg.init_seed)
        init = torch.randn(1 if cfg.symmetric else k, d, generator=gen)
        init = cfg.init_scale * init / init.norm(dim=-1, keepdim=True)
        if cfg.init == "perturbed":  # a warm start near the truth (the seed's small-noise regime)
            init = init + mixture.means[: init.shape[0]].float()
        self.mu = nn.Parameter(init)
        self.symmetric = cfg.symmetric
        self.std = mixture.std
        self.weights = mixture.weights
        self.schedule = schedule

    @property
    def means(self) -> torch.Tensor:
        return torch.cat([self.mu, -self.mu]) if self.symmetric else self.mu

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return GaussianMixture(self.means.to(x_t), self.std, self.weights).denoise(x_t, alpha, sigma)

    def progress(self, dataset) -> dict[str, float]:
        """Angle (degrees) and distance to the true means (Hungarian-matched for K > 2), and ‖μ‖."""
        truth = dataset.mixture.means[:1] if self.symmetric else dataset.mixture.means
        out = mean_recovery(self.mu if self.symmetric else self.means, truth, self.symmetric)
        return {**out, "mu_norm": self.mu.detach().norm(dim=-1).max().item()}


def build(cfg: MogStudentConfig, dataset, schedule) -> MogStudent:
    return MogStudent(cfg, dataset.mixture, schedule)
