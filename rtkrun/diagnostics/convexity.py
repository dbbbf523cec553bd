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


def lanczos_eigenvalues(matvec, z: torch.Tensor, iters: int = 30, generator: torch.Generator | None = None):
    """(λ_min, λ_max) Ritz values per sample of a symmetric operator given by a batched
    ``matvec`` (block diagonal over samples), by Lanczos with full reorthogonalisation. The
    extremes converge first; with ``iters`` ≥ d they are exact up to rounding."""
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    dims = z[0].numel()

    def dot(a, b):
        return (a * b).flatten(1).sum(1)

    def scale(a, s):
        return a * s.reshape(-1, *([1] * (a.ndim - 1)))

    v = scale(v, 1 / dot(v, v).sqrt())
    basis, alphas, betas = [v], [], []
    for k in range(min(iters, dims)):
        w = matvec(basis[-1])
        alphas.append(dot(w, basis[-1]))
        for q in basis:  # full reorthogonalisation, twice
            w = w - scale(q, dot(q, w))
        for q in basis:
            w = w - scale(q, dot(q, w))
        beta = dot(w, w).sqrt()
        if k == min(iters, dims) - 1:
            break
        betas.append(beta)
        basis.append(scale(w, 1 / beta.clamp_min(1e-300)))
    size = len(alphas)
    tri = torch.diag_embed(torch.stack(alphas, 1))
    if betas:
        off = torch.stack(betas, 1)
        tri = tri + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    ritz = torch.linalg.eigvalsh(tri[:, :size, :size])
    return ritz[:, 0], ritz[:, -1]


def lanczos_curvatures(
    F: BatchMap,
    x: torch.Tensor,
    z: torch.Tensor,
    sigma: float,
    iters: int = 30,
    generator: torch.Generator | None = None,
    context: tuple = (),
) -> dict[str, torch.Tensor]:
    """Matrix-free λ_min(∇²g), ‖Σ r_i H_i‖₂ and σ_min(I + J) per sample for large d: Lanczos on
    Hessian-vector products (forward-over-reverse) and on (I + J)ᵀ(I + J) (one jvp + one vjp)."""
    from torch.func import grad, jvp, vjp

    z = z.detach()
    Fb = (lambda zz: F(zz, *context)) if context else F
    r = (z - x + Fb(z)).detach()

    def g_sum(zz):
        return ((zz - x + Fb(zz)) ** 2).sum() / (2 * sigma**2)

    def weighted_sum(zz):
        return (r * Fb(zz)).sum()

    def hvp(f):
        return lambda v: jvp(grad(f), (z,), (v,))[1]

    _, vjp_fn = vjp(Fb, z)

    def normal_matvec(v):
        u = v + jvp(Fb, (z,), (v,))[1]
        return u + vjp_fn(u)[0]

    lam_min, _ = lanczos_eigenvalues(hvp(g_sum), z, iters, generator)
    w_min, w_max = lanczos_eigenvalues(hvp(weighted_sum), z, iters, generator)
    n_min, _ = lanczos_eigenvalues(normal_matvec, z, iters, generator)
    return {
        "true": lam_min,
        "weighted_hessian": torch.maximum(w_min.abs(), w_max.abs()),
        "sigma_min": n_min.clamp_min(0).sqrt(),
    }
