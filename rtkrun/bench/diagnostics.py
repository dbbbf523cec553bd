"""Diagnostics cost per point: the matrix-free chain (Lanczos, Hutchinson, ascent) against the
exact float64 chain (full Jacobians and Hessians), on noised training examples of each case, as
``rtkrun diagnose`` evaluates them: float64, F(z) = x_t − f(z, x_t, t) at t = 0.5.

Cost is given in seconds per point and in forward-pass equivalents: seconds per point over the
seconds of one forward call per point at the same batch. The exact chain runs only up to the
case's ``exact_max_dim`` (its Hessians take d² memory per point); both chains are batched over
the points (``torch.func.vmap`` and batched products), so a batch costs about one point's
sequence of network calls.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rtkrun.bench.presets import Parts
from rtkrun.bench.timing import measure
from rtkrun.diagnostics.convexity import bound_chain, matrix_free_chain
from rtkrun.sampling import bind_to_data
from rtkrun.trainer import get_batch


def bench_diagnostics(parts: Parts, *, warmup: int, repeats: int) -> list[dict[str, Any]]:
    case, device = parts.case, parts.device
    model = parts.model.double().eval().requires_grad_(False)
    x0 = get_batch(parts.dataset, torch.arange(case.diag_batch), 0, parts.run.seed).to(device, torch.float64)
    denoiser = bind_to_data(model, parts.dataset, x0)
    t_value = 0.5
    alpha, sigma = (v.item() for v in parts.schedule.alpha_sigma(torch.tensor(t_value, dtype=torch.float64)))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    space = parts.dataset.space_of(x0)
    if space is not None:
        noise = space.project(noise)
    x = alpha * x0 + sigma * noise
    t = torch.full((len(x),), t_value, dtype=torch.float64, device=device)
    with torch.no_grad():
        z = denoiser(x, t)

    def F(zz, xx, tt):
        return xx - denoiser(xx, tt, zz)

    dim = math.prod(x0.shape[1:])
    with torch.no_grad():
        forward = measure(lambda: denoiser(x, t, z), device, warmup=warmup, repeats=repeats)

    def matrix_free():
        gen = torch.Generator().manual_seed(0)
        restarts, steps = case.diag_ascent
        return matrix_free_chain(
            F,
            x,
            z,
            sigma,
            iters=case.diag_iters,
            tol=1e-4,
            probes=case.diag_probes,
            restarts=restarts,
            ascent_steps=steps,
            generator=gen,
            context=(x, t),
        )

    chains = [("matrix-free (Lanczos)", matrix_free)]
    if dim <= case.exact_max_dim:
        chains.insert(0, ("exact (float64 jacrev + hessian)", lambda: bound_chain(F, x, z, sigma, context=(x, t))))
    rows, reference = [], None
    for name, fn in chains:
        timed = measure(fn, device, warmup=min(warmup, 1), repeats=max(1, repeats // 2))
        reference = reference or timed.seconds
        rows.append(
            {
                "case": parts.name,
                "dim": dim,
                "chain": name,
                "batch": len(x),
                "s_per_point": timed.seconds / len(x),
                "forward_equivalents": timed.seconds / forward.seconds,
                "speedup_vs_exact": reference / timed.seconds if dim <= case.exact_max_dim else None,
                "peak_mib": None if timed.peak_bytes is None else timed.peak_bytes / 2**20,
            }
        )
    model.float().requires_grad_(True)
    return rows
