"""‖J‖₂ and σ_min(I + J) of J = ∂F/∂z, per sample: exact (float64 SVD) and matrix-free
(Golub–Kahan–Lanczos bidiagonalisation on jvp/vjp; power iteration for comparison)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.func import jacrev, jvp, vjp, vmap

# torch's first forward-mode call imports its jvp decompositions, which go through
# torch.jit.script, which torch itself has deprecated: a FutureWarning about torch's internals
# that users can do nothing about. Import them here, once, with that one notice silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401

BatchMap = Callable[..., torch.Tensor]  # F(z, *context) -> (B, d); row i depends on row i only


def single(F: BatchMap) -> Callable[..., torch.Tensor]:
    """F on one sample (z_i, *context_i), for vmap of jacrev/hessian."""
    return lambda zi, *ci: F(zi[None], *(c[None] for c in ci))[0]


def exact_jacobian(F: BatchMap, z: torch.Tensor, context: tuple = (), chunk_size: int | None = None) -> torch.Tensor:
    """Per-sample Jacobians (B, d, d) of a row-independent map, by vmap(jacrev); ``chunk_size``
    bounds how many vjps run at once (memory at large d)."""
    return vmap(jacrev(single(F), chunk_size=chunk_size))(z, *context)


def exact_singular_values(
    F: BatchMap, z: torch.Tensor, shift_identity: bool = False, context: tuple = (), chunk_size: int | None = None
):
    """Singular values (B, d) of J (or of I + J), descending."""
    jac = exact_jacobian(F, z, context, chunk_size)
    if shift_identity:
        jac = jac + torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return torch.linalg.svdvals(jac)


def _bind(F: BatchMap, context: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
    return (lambda zz: F(zz, *context)) if context else F


def _bnorm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-300)


def _bscale(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return v * s.reshape(-1, *([1] * (v.ndim - 1)))


def _orthogonalise(v: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    for q in basis:  # full reorthogonalisation (twice is enough, Kahan)
        v = v - _bscale(q, (q * v).flatten(1).sum(1))
    for q in basis:
        v = v - _bscale(q, (q * v).flatten(1).sum(1))
    return v


class LanczosSVD(NamedTuple):
    sigma_max: torch.Tensor  # (B,) top Ritz singular value (converges from below)
    sigma_min: torch.Tensor  # (B,) smallest Ritz singular value of the Krylov bidiagonal
    iters: int
    residual_max: torch.Tensor  # (B,) β_k |p_k|: the top triplet's residual, a bound on its error
    residual_min: torch.Tensor  # (B,) the same for the smallest triplet


def lanczos_singular_values(
    F: BatchMap,
    z: torch.Tensor,
    iters: int = 30,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
    shift_identity: bool = False,
    context: tuple = (),
) -> LanczosSVD:
    """Extreme singular values of J (or I + J) per sample by Golub–Kahan–Lanczos
    bidiagonalisation with full reorthogonalisation (Golub & Van Loan, Alg. 10.4.1).

    After k steps A V_k = U_k B_k and Aᵀ U_k = V_k B_kᵀ + β_k v_{k+1} e_kᵀ with B_k upper
    bidiagonal. For a singular triplet B_k q = σ p of B_k, the Ritz triplet (σ, U_k p, V_k q)
    satisfies A V_k q = σ U_k p exactly and ‖Aᵀ U_k p − σ V_k q‖ = β_k |e_kᵀ p|: the residual,
    which bounds the distance from σ to a singular value of A. The loop stops when every
    sample's top residual is ≤ tol·σ_max (or after ``iters`` steps, or at k = d, where it is
    exact). One jvp and one vjp (about 3 forward passes) per step."""
    z = z.detach()
    F = _bind(F, context)
    _, vjp_fn = vjp(F, z)

    def matvec(v):
        out = jvp(F, (z,), (v,))[1]
        return out + v if shift_identity else out

    def rmatvec(u):
        out = vjp_fn(u)[0]
        return out + u if shift_identity else out

    v = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    v = _bscale(v, 1 / _bnorm(v))
    vs, us, alphas, betas = [v], [], [], []
    u = matvec(v)
    limit = min(iters, z[0].numel())
    for k in range(1, limit + 1):
        alpha = _bnorm(u)
        u = _bscale(u, 1 / alpha)
        us.append(u)
        alphas.append(alpha)
        w = _orthogonalise(rmatvec(u) - _bscale(v, alpha), vs)
        beta = _bnorm(w)
        bidiag = torch.diag_embed(torch.stack(alphas, 1))
        if betas:
            bidiag = bidiag + torch.diag_embed(torch.stack(betas, 1), offset=1)
        left, s, _ = torch.linalg.svd(bidiag)
        last = beta if k < z[0].numel() else torch.zeros_like(beta)  # the Krylov space is all of R^d
        res_max, res_min = last * left[:, -1, 0].abs(), last * left[:, -1, -1].abs()
        if k == limit or (res_max <= tol * s[:, 0]).all():
            break
        v = _bscale(w, 1 / beta)
        vs.append(v)
        betas.append(beta)
        u = _orthogonalise(matvec(v) - _bscale(u, beta), us)
    return LanczosSVD(s[:, 0].detach(), s[:, -1].detach(), k, res_max.detach(), res_min.detach())


def power_iteration_norm(
    F: BatchMap, z: torch.Tensor, iters: int = 30, generator: torch.Generator | None = None, context: tuple = ()
):
    """‖J‖₂ by power iteration on JᵀJ (an underestimate that stalls when the top two singular
    values are close; kept for comparison with Lanczos)."""
    z = z.detach()
    F = _bind(F, context)
    _, vjp_fn = vjp(F, z)
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    v = _bscale(v, 1 / _bnorm(v))
    for _ in range(iters):
        w = vjp_fn(jvp(F, (z,), (v,))[1])[0]
        v = _bscale(w, 1 / _bnorm(w))
    return _bnorm(jvp(F, (z,), (v,))[1])
