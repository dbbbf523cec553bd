"""Second derivatives of F: the exact tensor H_i = ∇²F_i (small d), B_sq = Σ_i ‖H_i‖²_op, an
unbiased Hutchinson estimate of Σ_i ‖H_i‖²_F, a lower bound sup_u ‖D²F[u, u]‖² ≤ B_sq, and
‖Σ_i r_i H_i‖ as the Hessian of the scalar ⟨stopgrad(r), F(z)⟩ (no 3-tensor needed)."""

from __future__ import annotations

import torch
from torch.func import grad_and_value, hessian, jacfwd, jacrev, jvp, vmap

from rtkrun.diagnostics.jacobian import BatchMap, _bind, single


def exact_hessians(F: BatchMap, z: torch.Tensor, context: tuple = ()) -> torch.Tensor:
    """(B, d_out, d, d): H[b, i] = ∇²F_i at z[b]."""
    return vmap(jacfwd(jacrev(single(F))))(z, *context)


def exact_b_sq(F: BatchMap, z: torch.Tensor, context: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_sq = Σ_i ‖H_i‖²_op, Σ_i ‖H_i‖²_F) per sample, from the full tensor (symmetric H_i:
    operator norm = largest |eigenvalue|)."""
    hess = exact_hessians(F, z, context)
    op = torch.linalg.eigvalsh(hess).abs().amax(-1)
    return (op**2).sum(-1), (hess**2).sum((-1, -2, -3))


def second_directional(F: BatchMap, z: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D²F[u, v] per sample by nested jvp: d/ds (J(z + s v) u) at s = 0."""
    return jvp(lambda y: jvp(F, (y,), (u,))[1], (z,), (v,))[1]


PROBE_ELEMENTS = 1 << 16  # probes of one vmapped call × the batch's elements: small problems in one call


def _chunk(count: int, z: torch.Tensor) -> int:
    """How many probes (or starts) one vmapped call takes: ``count`` × ``z.numel()`` ≤
    ``PROBE_ELEMENTS``, at least one (large d: one at a time, as memory allows)."""
    return max(1, min(count, PROBE_ELEMENTS // max(z.numel(), 1)))


def hutchinson_frobenius(
    F: BatchMap, z: torch.Tensor, probes: int = 64, generator: torch.Generator | None = None, context: tuple = ()
):
    """Unbiased Σ_i ‖H_i‖²_F = E‖D²F[u, v]‖² with independent Rademacher u, v; returns
    (mean, standard error) per sample over ``probes`` pairs (2 nested jvps each).

    The probes are drawn in order (u, v per pair, as a loop would) and evaluated by ``vmap``
    over the pairs, as many at once as keep probes × ``z.numel()`` within ``PROBE_ELEMENTS``:
    for a small d one call does the work of the 64 the loop made, whose cost was overhead. F's
    batch stays as it is, so a denoiser bound to its batch (a molecule's node mask) still fits."""
    z, F = z.detach(), _bind(F, context)
    pairs = []
    for _ in range(probes):
        u = torch.randint(0, 2, z.shape, generator=generator).to(z) * 2 - 1
        v = torch.randint(0, 2, z.shape, generator=generator).to(z) * 2 - 1
        pairs.append((u, v))
    chunk = _chunk(probes, z)
    per_pair = vmap(lambda u, v: (second_directional(F, z, u, v) ** 2).flatten(1).sum(1))
    draws = []
    for start in range(0, probes, chunk):
        us, vs = zip(*pairs[start : start + chunk])
        draws.append(per_pair(torch.stack(us), torch.stack(vs)))
    stack = torch.cat(draws)
    return stack.mean(0), stack.std(0) / probes**0.5


def b_sq_lower_bound(
    F: BatchMap,
    z: torch.Tensor,
    restarts: int = 8,
    steps: int = 20,
    generator: torch.Generator | None = None,
    context: tuple = (),
) -> torch.Tensor:
    """max over unit u of ‖D²F[u, u]‖² ≤ Σ_i ‖H_i‖²_op = B_sq, maximised by projected ascent
    from random starts; any u gives a valid lower bound, the ascent only tightens it. The starts
    are drawn in order and climb together (``vmap`` over them, chunked as Hutchinson's probes)."""
    z, F = z.detach(), _bind(F, context)

    def value(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_sample = (second_directional(F, z, u, u) ** 2).flatten(1).sum(1)
        return per_sample.sum(), per_sample  # rows are independent: the sum's gradient is each row's

    ascent = vmap(grad_and_value(value, has_aux=True))
    starts = [torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device) for _ in range(restarts)]
    best = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    chunk = _chunk(restarts, z)
    for first in range(0, restarts, chunk):
        u = torch.stack(starts[first : first + chunk])
        for _ in range(steps + 1):
            u = u / u.flatten(2).norm(dim=2).reshape(*u.shape[:2], *([1] * (u.ndim - 2)))
            u, (_, values) = ascent(u)
            best = torch.maximum(best, values.amax(0))
    return best


def residual_weighted_hessian_norm(F: BatchMap, z: torch.Tensor, r: torch.Tensor, context: tuple = ()):
    """‖Σ_i r_i H_i‖₂ per sample (exact, small d): the Hessian of ⟨stopgrad(r), F(z)⟩."""
    f = single(F)
    hess = vmap(hessian(lambda zi, ri, *ci: (ri * f(zi, *ci)).sum()))(z, r.detach(), *context)
    return torch.linalg.eigvalsh(hess).abs().amax(-1)
