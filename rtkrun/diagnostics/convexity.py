"""Strong convexity of the DDDM proxy energy g(z) = ‖z − x + F(z)‖²/(2σ²) (seed paper, Prop. 2)
and the chain of bounds of REFERENCE.md §1.4. With r = z − x + F(z):
    σ²∇²g = (I + J)ᵀ(I + J) + Σ_i r_i H_i,
    σ²λ_min ≥ σ_min(I + J)² − ‖Σ r_i H_i‖ ≥ (1 − L)₊² − R√B_sq ≥ (1 − L)₊² − R(Σ‖H_i‖²_F)^{1/2}.
The paper states (1 − L)² − R·B_sq, which is not a bound when B_sq < 1 or L > 1; it is reported
as ``paper_margin`` next to the corrected ``margin`` (both divided by σ²)."""

from __future__ import annotations

import torch
from torch.func import hessian, vmap

from rtkrun.diagnostics.hessian import exact_b_sq, residual_weighted_hessian_norm
from rtkrun.diagnostics.jacobian import BatchMap, exact_singular_values, single


def exact_lambda_min(F: BatchMap, x: torch.Tensor, z: torch.Tensor, sigma: float, context: tuple = ()):
    """λ_min(∇²g) per sample, exact (float64 eigvalsh of the full Hessian)."""
    f = single(F)

    def g(zi, xi, *ci):
        r = zi - xi + f(zi, *ci)
        return (r**2).sum() / (2 * sigma**2)

    return torch.linalg.eigvalsh(vmap(hessian(g))(z, x, *context))[:, 0]


def bound_chain(F: BatchMap, x: torch.Tensor, z: torch.Tensor, sigma: float, context: tuple = ()):
    """Every quantity and link of the chain per sample (dict of (B,) tensors), exact small-d path.
    ``F(z, *context)`` is the map; ``context`` holds per-sample tensors such as (x_t, t)."""
    r = z - x + F(z, *context)
    R = r.flatten(1).norm(dim=1)
    L = exact_singular_values(F, z, context=context)[:, 0]
    sigma_min = exact_singular_values(F, z, shift_identity=True, context=context)[:, -1]
    b_sq, frob_sq = exact_b_sq(F, z, context)
    weighted = residual_weighted_hessian_norm(F, z, r, context)
    plus = (1 - L).clamp_min(0) ** 2
    s2 = sigma**2
    links = {
        "true": exact_lambda_min(F, x, z, sigma, context),
        "link_sigma_min": (sigma_min**2 - weighted) / s2,
        "margin": (plus - R * b_sq.sqrt()) / s2,
        "margin_frobenius": (plus - R * frob_sq.sqrt()) / s2,
        "paper_margin": ((1 - L) ** 2 - R * b_sq) / s2,
    }
    return {
        "L": L,
        "sigma_min": sigma_min,
        "R": R,
        "B_sq": b_sq,
        "frobenius_sq": frob_sq,
        "weighted_hessian": weighted,
        **links,
    }
