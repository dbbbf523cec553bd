"""``mog_oracle``: the exact denoiser E[x0 | x_t] of a Gaussian mixture under a VP schedule.

It ignores the DDDM estimate z (the exact posterior mean needs none), has no parameters to
train, and offers the exact ``log_prob`` for samplers that use energies.
"""

from __future__ import annotations

import torch
from torch import nn

from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.schemas.models import MogFlowOracleConfig, MogOracleConfig


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

    def hessian_scale(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The largest eigenvalue of −∇²log p_t at each x_t, shape (B,): the RTK samplers' step
        sizes start from it. −∇²log p_t = I/v − (α²/v²) Cov_r(μ) with v = α²s² + σ² (derived from
        ``GaussianMixture.denoise_jacobian`` by Tweedie); Cov_r(μ) ≽ 0 has rank < K, so the top
        eigenvalue is 1/v, exactly when d ≥ K and as an upper bound otherwise."""
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return (1.0 / (alpha**2 * self.mixture.std**2 + sigma**2)).expand(x_t.shape[0])


def build(cfg: MogOracleConfig, dataset, schedule) -> MogOracle:
    return MogOracle(dataset.mixture, schedule)


class MogFlowOracle(nn.Module):
    """The exact DDDM map of a mixture: f(z, x_t, t) = Φ(x_t, t), the probability-flow ODE solved
    from t to 0 with the exact score (Heun, float64, ``ode_steps`` steps on the EDM grid), so
    F(z, x_t, t) = x_t − Φ(x_t, t) and the DDDM fixed point is reached in one iteration from any
    z. Used to check the DDDM machinery exactly; ``forward`` costs ``2·ode_steps`` oracle calls."""

    needs_training = False

    def __init__(self, cfg: MogFlowOracleConfig, mixture: GaussianMixture, schedule: VPSchedule) -> None:
        super().__init__()
        self.exact = MogOracle(mixture, schedule)
        self.schedule = schedule
        self.ode_steps = cfg.ode_steps
        self.t_min = cfg.t_min

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        from rtkrun.samplers.pf_ode import pf_ode

        t0 = float(t.reshape(-1)[0])
        if t0 <= self.t_min:
            return x_t
        out = pf_ode(
            self.exact,
            x_t.double(),
            self.schedule,
            generator=None,
            steps=self.ode_steps,
            solver="heun",
            grid="edm",
            t_max=t0,
            t_min=self.t_min,
        )
        return out.x0.to(x_t.dtype)


def build_flow(cfg: MogFlowOracleConfig, dataset, schedule) -> MogFlowOracle:
    return MogFlowOracle(cfg, dataset.mixture, schedule)
