"""Strong convexity of the DDDM proxy energy g(z) = ‖z − x + F(z)‖²/(2σ²) (seed paper, Prop. 2)
and the chain of bounds of docs/science.md, the regularity bound. With r = z − x + F(z):
    σ²∇²g = (I + J)ᵀ(I + J) + Σ_i r_i H_i,
    σ²λ_min ≥ σ_min(I + J)² − ‖Σ r_i H_i‖ ≥ (1 − L)₊² − R√B_sq ≥ (1 − L)₊² − R(Σ‖H_i‖²_F)^{1/2}.
The paper states (1 − L)² − R·B_sq, which is not a bound when B_sq < 1 or L > 1; it is reported
as ``paper_margin`` next to the corrected ``margin`` (both divided by σ²)."""

from __future__ import annotations

import torch
from torch.func import hessian, vmap

from rtkrun.diagnostics.hessian import (
    b_sq_lower_bound,
    exact_b_sq,
    hutchinson_frobenius,
    residual_weighted_hessian_norm,
)
from rtkrun.diagnostics.jacobian import BatchMap, exact_singular_values, lanczos_singular_values, single


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


def matrix_free_chain(
    F: BatchMap,
    x: torch.Tensor,
    z: torch.Tensor,
    sigma: float,
    iters: int = 30,
    tol: float = 1e-4,
    probes: int = 16,
    restarts: int = 2,
    ascent_steps: int = 10,
    generator: torch.Generator | None = None,
    context: tuple = (),
) -> dict[str, torch.Tensor]:
    """The chain of ``bound_chain`` without forming Jacobians or Hessians, for large d.

    L by Golub–Kahan–Lanczos (with its residual bound ``L_residual``); σ_min(I + J), λ_min(∇²g)
    and ‖Σ r_i H_i‖ by Lanczos on matrix-vector products. B_sq is bracketed:
    ``B_sq`` = the ascent lower bound max_u ‖D²F[u,u]‖² ≤ B_sq and ``frobenius_sq`` ± ``frobenius_se``
    = the Hutchinson estimate of Σ‖H_i‖²_F ≥ B_sq. The corrected ``margin`` certifies with the
    conservative values: L + ``L_residual`` (GKL's L alone is an underestimate) and
    Σ‖H_i‖²_F + 3 se in place of B_sq, so it is never optimistic; ``paper_margin`` uses the lower
    bound, so it is at least as optimistic as the paper's own expression (docs/science.md, the regularity bound).
    Lanczos's λ_min and σ_min approach from above: with too few iterations they overstate
    convexity, which the tests bound against the exact path."""
    Fb = (lambda zz: F(zz, *context)) if context else F
    r = (z - x + Fb(z)).detach()
    R = r.flatten(1).norm(dim=1)
    top = lanczos_singular_values(F, z, iters=iters, tol=tol, generator=generator, context=context)
    curvatures = lanczos_curvatures(F, x, z, sigma, iters=iters, generator=generator, context=context)
    frob, frob_se = hutchinson_frobenius(F, z, probes=probes, generator=generator, context=context)
    b_lower = b_sq_lower_bound(F, z, restarts=restarts, steps=ascent_steps, generator=generator, context=context)
    L, sigma_min, weighted = top.sigma_max, curvatures["sigma_min"], curvatures["weighted_hessian"]
    # GKL's L underestimates ‖J‖₂; L + its residual bound does not, so the certified margin uses it
    s2, L_upper = sigma**2, L + top.residual_max
    plus = (1 - L_upper).clamp_min(0) ** 2
    frob_upper = frob + 3 * frob_se
    return {
        "L": L,
        "L_residual": top.residual_max,
        "sigma_min": sigma_min,
        "R": R,
        "B_sq": b_lower,
        "frobenius_sq": frob,
        "frobenius_se": frob_se,
        "weighted_hessian": weighted,
        "true": curvatures["true"],
        "link_sigma_min": (sigma_min**2 - weighted) / s2,
        "margin": (plus - R * frob_upper.sqrt()) / s2,
        "margin_frobenius": ((1 - L).clamp_min(0) ** 2 - R * frob.clamp_min(0).sqrt()) / s2,
        "paper_margin": ((1 - L) ** 2 - R * b_lower) / s2,
    }
