"""DDDM's fixed-point iteration at one noise level, measured (T8): how fast it contracts and how
large ‖∂f/∂z‖₂ is where the sampler starts.

The DDDM sampler iterates z_{k+1} = f(z_k) with f(z) = x_t − F(z, x_t, t) (Zhang, Wang & Luo
2024, eq. 8). Banach's theorem needs L = ‖∂F/∂z‖₂ = ‖∂f/∂z‖₂ < 1 for the iteration to converge
from any start; the measured ratio ‖z_{k+1} − z_k‖ / ‖z_k − z_{k−1}‖ says what it does.
"""

from __future__ import annotations

import torch

from rtkrun.diagnostics.jacobian import BatchMap, lanczos_singular_values

LANCZOS_MAX_STEPS = 64  # Golub–Kahan–Lanczos is exact (up to rounding) once it has taken d steps


def _norms(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


def spectral_norm(f: BatchMap, z: torch.Tensor, context: tuple = ()) -> torch.Tensor:
    """‖∂f/∂z‖₂ per row of f(z, *context) by Golub–Kahan–Lanczos on jvp/vjp: exact for
    d ≤ 64 (the Krylov space is all of R^d), a lower bound with a residual above."""
    generator = torch.Generator().manual_seed(0)
    return lanczos_singular_values(f, z, iters=LANCZOS_MAX_STEPS, generator=generator, context=context).sigma_max


def fixed_point_profile(f: BatchMap, z0: torch.Tensor, context: tuple = (), iterations: int = 4) -> dict[str, float]:
    """Medians over rows of: ``L_start`` = ‖∂f/∂z‖₂ at z⁽⁰⁾, ``L_end`` at the last iterate, and
    ``contraction`` = (‖z_K − z_{K−1}‖ / ‖z_1 − z_0‖)^{1/(K−1)}, the per-iteration factor by
    which the steps shrink (< 1: converging; for f(z) = c·z + b it is exactly |c|). ``f(z,
    *context)`` must be row-independent (the context: x_t and t of each row)."""
    if iterations < 2:
        raise ValueError(f"a contraction ratio needs at least 2 iterations, got {iterations}")
    with torch.no_grad():
        zs = [z0]
        for _ in range(iterations):
            zs.append(f(zs[-1], *context))
    first, last = _norms(zs[1] - zs[0]), _norms(zs[-1] - zs[-2])
    ratio = (last / first.clamp_min(1e-30)) ** (1.0 / (iterations - 1))
    return {
        "L_start": float(spectral_norm(f, z0, context).median()),
        "L_end": float(spectral_norm(f, zs[-2], context).median()),
        "contraction": float(ratio.median()),
    }
