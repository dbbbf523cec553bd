"""Mixture of Gaussians and its exact marginals under a VP schedule (pure math, below both the
dataset and the models that use it: the oracle, the tanh student, the MoG metrics).

Components N(μ_k, s²I) with weights w_k. Under x_t = α x0 + σ ε the marginal is
p_t = Σ w_k N(α μ_k, v I) with v = α²s² + σ² (docs/science.md, mixture of Gaussians), so log p_t, the score, the
posterior responsibilities r_k(x_t), the denoiser E[x0 | x_t] (Tweedie) and its Jacobian are
closed form. Derived (ours): with c = α s²/v,
    E[x0 | x_t] = Σ_k r_k (μ_k + c (x_t − α μ_k)),
    ∂E[x0 | x_t]/∂x_t = c I + (α σ²/v²) Cov_r(μ),   Cov_r(μ) = Σ_k r_k (μ_k − μ̄)(μ_k − μ̄)ᵀ.
"""

from __future__ import annotations

import math

import torch


def _broadcast(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Scalar or per-sample (B,) α/σ as a (B, 1) or scalar tensor in x's dtype."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, 1) if v.ndim else v


class GaussianMixture:
    """Σ_k w_k N(μ_k, s² I) in R^d, with closed forms of its VP-noised marginals.

    Methods take x of shape (B, d) and α, σ as scalars or (B,) tensors; they work for any
    ``means`` tensor, including learnable ones (the tanh student reuses them).
    """

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None) -> None:
        self.means = means
        self.std = float(std)
        k = means.shape[0]
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, device: torch.device | str) -> GaussianMixture:
        return GaussianMixture(self.means.to(device), self.std, self.weights)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact samples (float64 on the CPU)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means.detach().double().cpu()[comp] + self.std * noise

    # -- closed forms under x_t = α x0 + σ ε -------------------------------------------------
    def _logits(self, x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-component terms of log p_t: (logits up to a per-row constant, that constant, v).

        ‖x − αμ_k‖² is expanded as ‖x‖² − 2α xᵀμ_k + α²‖μ_k‖² so the work is one matmul; the
        ‖x‖² part is common to all k and kept apart (exact responsibilities, no cancellation).
        """
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2  # (B, 1) or scalar
        means = self.means.to(x)
        cross = a * (x @ means.T) - 0.5 * a**2 * (means**2).sum(-1)  # (B, K)
        logits = torch.log(self.weights.to(x)) + cross / var
        row = -(x**2).sum(-1, keepdim=True) / (2 * var) - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logits, row, var

    def log_prob(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """log p_t(x), shape (B,)."""
        logits, row, _ = self._logits(x, alpha, sigma)
        return torch.logsumexp(logits, dim=-1) + row.reshape(-1).expand(x.shape[0])

    def responsibilities(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities r_k(x), shape (B, K)."""
        logits, _, _ = self._logits(x, alpha, sigma)
        return torch.softmax(logits, dim=-1)

    def score(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """∇_x log p_t(x) = Σ_k r_k (α μ_k − x)/v."""
        r = self.responsibilities(x, alpha, sigma)
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2
        return (a * (r @ self.means.to(x)) - x) / var

    def denoise(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x0 | x_t = x] = Σ_k r_k (μ_k + c (x − α μ_k)), c = α s²/v."""
        r = self.responsibilities(x, alpha, sigma)
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2
        c = a * self.std**2 / var
        mean_mu = r @ self.means.to(x)
        return mean_mu + c * (x - a * mean_mu)

    def denoise_jacobian(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """∂E[x0 | x_t]/∂x_t = c I + (α σ²/v²) Cov_r(μ), shape (B, d, d)."""
        r = self.responsibilities(x, alpha, sigma)
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2
        means = self.means.to(x)
        centred = means[None] - (r @ means)[:, None, :]  # (B, K, d)
        cov = torch.einsum("bk,bki,bkj->bij", r, centred, centred)
        c = (a * self.std**2 / var).unsqueeze(-1)  # (B, 1, 1) or (1,)
        k = (a * s**2 / var**2).unsqueeze(-1)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return c * eye + k * cov
