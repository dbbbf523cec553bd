"""The one interface every sampler shares (the k-diffusion habit):

    sampler(denoiser, x_T, schedule, *, generator, callback=None, **settings) -> SampleResult

``denoiser(x_t, t, z=None) -> x0_hat`` is any model; ``generator`` is a
:class:`rtkrun.seeding.SampleNoise` (one stream per sample); ``callback(info)`` is called after
every step with at least ``step``, ``t``, ``x``, ``x0_hat`` and ``nfe``, where (``x``, ``t``)
is a point the network was evaluated at in that step (the state before the move, at its own
time) and ``x0_hat`` is what it returned; DDDM adds the estimate ``z`` the network read.
Diagnostics evaluate the network at these points, so they must be points a sampler visits.
NFE is counted by wrapping the denoiser, never computed by formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Callback = Callable[[dict[str, Any]], None]


@dataclass
class SampleResult:
    x0: torch.Tensor
    nfe: int
    stats: dict[str, Any] = field(default_factory=dict)


class CountingDenoiser:
    """Wraps a denoiser; every call is one network evaluation for the whole batch."""

    def __init__(self, denoiser: Callable[..., torch.Tensor]) -> None:
        self.denoiser = denoiser
        self.nfe = 0
        self.last_call: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (x_t, t, x0_hat)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        self.nfe += 1
        t = t.to(device=x_t.device, dtype=x_t.dtype).expand(x_t.shape[0]) if t.ndim == 0 else t
        out = self.denoiser(x_t, t, z)
        self.last_call = (x_t, t, out)
        return out

    def __getattr__(self, name: str) -> Any:  # log_prob, score, … of the wrapped model
        return getattr(self.denoiser, name)


def merge_batch_stats(batches: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One run's sampler stats from its batches' (size, stats): numbers, and lists of numbers
    element by element, are averaged weighted by batch size (an acceptance rate covers every
    sample, not the last batch); anything else (names, settings) is taken from the first."""
    if not batches:
        return {}
    total = sum(n for n, _ in batches)

    def merge(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, bool) or not isinstance(first, (int, float, list)) or None in values:
            return first
        if isinstance(first, list):
            if any(not isinstance(v, list) or len(v) != len(first) for v in values):
                return first
            return [merge([v[i] for v in values]) for i in range(len(first))]
        if all(v == first for v in values):
            return first  # per-sample counts (energy_evals) stay integers
        return sum(n * v for (n, _), v in zip(batches, values)) / total

    keys = batches[0][1].keys()
    return {k: merge([stats.get(k) for _, stats in batches]) for k in keys}


def report(callback: Callback | None, **info: Any) -> None:
    if callback is not None:
        callback(info)


def ddim_move(x: torch.Tensor, x0_hat: torch.Tensor, alpha_t, sigma_t, alpha_s, sigma_s) -> torch.Tensor:
    """The deterministic DDIM move from t to s < t given x0_hat (Song et al. 2021, eq. 12, η = 0):
    α_s x0_hat + σ_s ε_hat with ε_hat = (x − α_t x0_hat)/σ_t, written as
    (σ_s/σ_t)·x + (α_s − σ_s α_t/σ_t)·x0_hat so that α_t = 0 needs no special case."""
    keep = sigma_s / sigma_t
    return (keep * x + (alpha_s - keep * alpha_t) * x0_hat).to(x.dtype)
