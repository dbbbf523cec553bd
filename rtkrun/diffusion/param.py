"""Conversions between the x0, ε and score parametrisations (VP: x_t = α x0 + σ ε).

x0 = (x_t − σ ε)/α, ε = (x_t − α x0)/σ, score ∇log p_t(x_t) = −ε/σ = (α x0 − x_t)/σ².
α and σ may be scalars or per-sample tensors of shape (B,); they are broadcast over x.
"""

from __future__ import annotations

import torch


def expand_like(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values (B,) reshaped to (B, 1, …, 1) to broadcast against x."""
    if not torch.is_tensor(v):
        return torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v.to(dtype=x.dtype, device=x.device)
    return v.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t - expand_like(alpha, x_t) * x0) / expand_like(sigma, x_t)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t - expand_like(sigma, x_t) * eps) / expand_like(alpha, x_t)


def score_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (expand_like(alpha, x_t) * x0 - x_t) / expand_like(sigma, x_t) ** 2


def x0_from_score(x_t: torch.Tensor, score: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t + expand_like(sigma, x_t) ** 2 * score) / expand_like(alpha, x_t)
