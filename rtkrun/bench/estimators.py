"""Cost and accuracy of the regularity estimators (``rtkrun/diagnostics``) against the exact
path, on fixed random maps z -> F(z) of growing dimension: a SiLU MLP, a small SiLU conv net on
image-shaped z, and (preset ``reference``) the DDDM map F(z) = x − f(z, x, t) of an untrained
``dddm_unet_small`` at one image x and t = 0.5.

Per map: seconds, forward-pass equivalents (seconds ÷ one forward call of the batch), the
largest relative error of ‖J‖₂ against the exact float64 value (jacrev + SVD, one sample at a
time) and the iterations used, for Golub–Kahan–Lanczos (stopped once every residual β_k|p_k| is
≤ 1e-5·σ_max, which bounds its error), power iteration (30 steps) and the Hutchinson estimate of
Σ‖H_i‖²_F (16 probes). Unlike the ``diagnostics`` section, which times the whole chain on each
dataset's model, this one measures what each estimator buys in accuracy per cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rtkrun.bench.timing import measure
from rtkrun.diagnostics.hessian import hutchinson_frobenius
from rtkrun.diagnostics.jacobian import exact_singular_values, lanczos_singular_values, power_iteration_norm

Map = Callable[[torch.Tensor], torch.Tensor]


def _scaled(module: torch.nn.Module, fan_in: Callable[[torch.Tensor], int]) -> torch.nn.Module:
    """Weights N(0, 1/fan-in) from a fixed seed, float64: the same map on every machine."""
    g = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=g) / max(fan_in(p), 1) ** 0.5
    return module.double()


def mlp(d: int, width: int = 512) -> torch.nn.Module:
    layers = [torch.nn.Linear(d, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU()]
    return _scaled(torch.nn.Sequential(*layers, torch.nn.Linear(width, d)), lambda p: p.shape[-1])


def conv(channels: int, size: int, width: int = 32) -> tuple[torch.nn.Module, Map]:
    body = torch.nn.Sequential(
        torch.nn.Conv2d(channels, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, channels, 3, padding=1),
    )
    body = _scaled(body, lambda p: p[0].numel())
    return body, lambda z: body(z.reshape(z.shape[0], channels, size, size)).reshape(z.shape[0], -1)


def unet_map(device: torch.device) -> Map:
    """F(z) = x − f(z, x, t) of an untrained ``dddm_unet_small`` at one fixed image x, t = 0.5,
    for every z of the batch (rows stay independent: GroupNorm is per sample)."""
    from rtkrun.diffusion.schedules import LinearSchedule
    from rtkrun.models.unet import DDDMUNet, UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(channels=16, channel_mult=[1, 2], blocks_per_level=1, dropout=0.0, groups=8)
    model = DDDMUNet(cfg, (3, 32, 32), LinearSchedule(), 0.5).double().eval().to(device)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    t = torch.full((1,), 0.5, dtype=torch.float64, device=device)

    def F(z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        xs = x.expand(n, -1, -1, -1)
        return (xs - model(xs, t.expand(n), z.reshape(n, 3, 32, 32))).reshape(n, -1)

    return F


def maps(preset: str, device: torch.device) -> list[tuple[str, int, Map]]:
    """(name, d, F) per preset: ``tiny`` for a smoke run on a CPU, ``reference`` as in
    docs/diagnostics-bench.md (up to d = 3072, where the exact path takes minutes on a CPU)."""
    out: list[tuple[str, int, Map]] = [("mlp", 64, mlp(64).to(device))]
    if preset == "tiny":
        body, F = conv(3, 8)
        body.to(device)
        return [*out, ("conv 3x8x8", 192, F)]
    out.append(("mlp", 768, mlp(768).to(device)))
    for size in (16, 32):
        body, F = conv(3, size)
        body.to(device)
        out.append((f"conv 3x{size}x{size}", 3 * size * size, F))
        if size == 16:
            out.append(("mlp", 3072, mlp(3072).to(device)))
    out.append(("dddm_unet_small 3x32x32", 3072, unet_map(device)))
    return out


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``fn()`` and its last result."""
    out: list[Any] = []
    seconds = measure(lambda: out.append(fn()), device, warmup=warmup, repeats=repeats).seconds
    return seconds, out[-1]


def _map_rows(name: str, d: int, F: Map, device: torch.device, warmup: int, repeats: int, batch: int, chunk: int):
    z = torch.randn(batch, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    with torch.no_grad():
        forward = measure(lambda: F(z), device, warmup=warmup, repeats=repeats).seconds

    def exact_sv() -> torch.Tensor:  # one sample at a time: vmap over samples × cotangents multiplies memory
        return torch.cat([exact_singular_values(F, z[i : i + 1], chunk_size=chunk) for i in range(len(z))])

    def gen() -> torch.Generator:  # CPU draws moved to the device: the same numbers everywhere
        return torch.Generator().manual_seed(0)

    few = 1 if d > 768 else repeats  # the exact path takes seconds to minutes there: time it once
    t_exact, sv = _timed(exact_sv, device, min(warmup, 1), few)
    exact = sv[:, 0]
    t_lanczos, lz = _timed(
        lambda: lanczos_singular_values(F, z, iters=60, tol=1e-5, generator=gen()), device, 1, repeats
    )
    t_power, power = _timed(lambda: power_iteration_norm(F, z, iters=30, generator=gen()), device, 1, repeats)
    t_hutch, _ = _timed(lambda: hutchinson_frobenius(F, z, probes=16, generator=gen()), device, 0, 1)
    rows = []
    for estimator, seconds, estimate, iterations in (
        ("exact (jacrev + SVD)", t_exact, None, d),
        ("Lanczos (GKL), residual ≤ 1e-5·σ", t_lanczos, lz.sigma_max, lz.iters),
        ("power iteration", t_power, power, 30),
        ("Hutchinson Σ‖H‖²_F, 16 probes", t_hutch, None, 16),
    ):
        rows.append(
            {
                "model": name,
                "dim": d,
                "estimator": estimator,
                "batch": batch,
                "seconds": seconds,
                "forward_equivalents": seconds / forward,
                "rel_error": None if estimate is None else ((estimate - exact).abs() / exact).max().item(),
                "iterations": iterations,
                "speedup_vs_exact": t_exact / seconds if estimator.startswith("Lanczos") else None,
            }
        )
    return rows


def bench_estimators(
    preset: str, device: torch.device, *, warmup: int, repeats: int, batch: int = 4, chunk: int = 256
) -> list[dict[str, Any]]:
    return [
        row
        for name, d, F in maps(preset, device)
        for row in _map_rows(name, d, F, device, warmup, repeats, batch, chunk)
    ]
