"""Metrics of samples against a known Gaussian mixture (docs/science.md, mixture of Gaussians).

Every distance is reported next to the same distance between two independent exact sample
sets of the same size (``baseline/…``): at finite n no distance is zero, and a sampler is as
good as it can be shown to be once it reaches the baseline.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rtkrun.diffusion.mixture import GaussianMixture


def projection_directions(mixture: GaussianMixture, n_random: int, generator: torch.Generator) -> torch.Tensor:
    """Unit directions: ``n_random`` uniform ones plus an orthonormal basis of the span of the
    centred means (the directions along which mode errors show)."""
    d = mixture.dim
    rand = torch.randn(n_random, d, generator=generator, dtype=torch.float64)
    rand = rand / rand.norm(dim=1, keepdim=True)
    centred = mixture.means.detach().double().cpu()
    centred = centred - centred.mean(0) if centred.shape[0] > 1 else centred
    if centred.norm() > 0:
        u, s, _ = torch.linalg.svd(centred.T, full_matrices=False)
        span = u[:, s > 1e-9 * s.max()].T
        rand = torch.cat([rand, span])
    return rand


def sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> float:
    """√(mean over directions of W2² of the 1-D projections); sorted-sample W2 (equal n)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_w2 needs equal sample counts, got {x.shape[0]} and {y.shape[0]}")
    px = torch.sort(x.double() @ directions.T, dim=0).values
    py = torch.sort(y.double() @ directions.T, dim=0).values
    return math.sqrt(((px - py) ** 2).mean().item())


def projected_quantiles(mixture: GaussianMixture, directions: torch.Tensor, n: int, iters: int = 60) -> torch.Tensor:
    """(n, P) quantiles F⁻¹((i − ½)/n) of the exact 1-D projections uᵀX, X ~ mixture: each is the
    1-D mixture Σ w_k N(uᵀμ_k, s²‖u‖²), inverted by bisection on its CDF (float64)."""
    means = mixture.means.detach().double().cpu() @ directions.T  # (K, P)
    scale = mixture.std * directions.norm(dim=1)  # (P,)
    weights = mixture.weights.double()
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # (n,)
    lo = (means.min(0).values - 12 * scale.clamp_min(1e-12)).expand(n, -1).clone()
    hi = (means.max(0).values + 12 * scale.clamp_min(1e-12)).expand(n, -1).clone()
    for _ in range(iters):
        mid = (lo + hi) / 2
        z = (mid[:, None, :] - means[None]) / scale.clamp_min(1e-300)  # (n, K, P)
        cdf = (weights[None, :, None] * 0.5 * torch.erfc(-z / math.sqrt(2))).sum(1)
        below = cdf < levels[:, None]
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


_QUANTILES: dict[str, torch.Tensor] = {}  # a few per process: a step search reuses one set dozens of times


def _mixture_key(mixture: GaussianMixture, *extra: Any) -> str:
    """A digest of the mixture's parameters and ``extra`` (tensors by value)."""
    h = hashlib.sha1()
    for t in (mixture.means, mixture.weights, *[e for e in extra if isinstance(e, torch.Tensor)]):
        h.update(t.detach().double().cpu().numpy().tobytes())
    h.update(repr((mixture.std, *[e for e in extra if not isinstance(e, torch.Tensor)])).encode())
    return h.hexdigest()


def sliced_w2_to_mixture(mixture: GaussianMixture, x: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced W2 between the samples and the exact mixture itself: per direction, the sorted
    projections against the exact quantiles at (i − ½)/n. Unlike sample-vs-sample sliced W2 it
    carries no noise from a reference set, so its exact-sampler value (the baseline) is lower
    and steadier — what a search over step counts needs. The quantiles (a bisection over n × K ×
    P CDF values) are kept per (mixture, directions, n) within a process."""
    n = x.shape[0]
    key = _mixture_key(mixture, directions, n)
    if key not in _QUANTILES:
        if len(_QUANTILES) >= 8:
            _QUANTILES.pop(next(iter(_QUANTILES)))
        _QUANTILES[key] = projected_quantiles(mixture, directions, n)
    px = torch.sort(x.detach().double().cpu() @ directions.T, dim=0).values
    return math.sqrt(((px - _QUANTILES[key]) ** 2).mean().item())


def exact_w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W2 between two empirical measures by linear programming (POT)."""
    import ot

    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    cost = ot.dist(x.double().numpy(), y.double().numpy(), metric="sqeuclidean")
    return math.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: list[float]) -> float:
    """Unbiased MMD² with a sum of Gaussian kernels exp(−‖u − v‖²/(2h²)) over ``bandwidths``
    (several scales: one bandwidth at the spread of the data misses errors inside the modes)."""
    x, y = x.double(), y.double()

    def mean_kernel(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
        d2 = torch.cdist(a, b) ** 2
        k = sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)
        if same:
            n = a.shape[0]
            return ((k.sum() - k.diagonal().sum()) / (n * (n - 1))).item()
        return k.mean().item()

    return mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False)


def nearest_component(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return mixture.responsibilities(x.double()).argmax(dim=1)


def mode_weight_tv(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """½ Σ_k |ŵ_k − w_k|, ŵ the fraction of samples whose most likely component is k."""
    k = mixture.means.shape[0]
    counts = torch.bincount(nearest_component(mixture, x), minlength=k).double()
    return 0.5 * (counts / x.shape[0] - mixture.weights).abs().sum().item()


def off_mode_fraction(mixture: GaussianMixture, x: torch.Tensor, quantile: float = 0.999) -> float:
    """Fraction of samples farther than the χ²_d ``quantile`` from every component (true: 1 − q)."""
    if mixture.std == 0:
        return float("nan")
    d2 = torch.cdist(x.double(), mixture.means.detach().double().cpu()) ** 2 / mixture.std**2
    from scipy.stats import chi2  # here, not at import: scipy.stats costs every rtkrun command ~1 s

    return (d2.min(dim=1).values > chi2.ppf(quantile, mixture.dim)).double().mean().item()


def cross_entropy(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """−mean log p_0(x) under the true mixture (nats)."""
    return -mixture.log_prob(x.double()).mean().item()


def mean_recovery(mu_learned: torch.Tensor, mu_true: torch.Tensor, symmetric: bool) -> dict[str, float]:
    """Angle (degrees) and distance between learned and true means. Symmetric K = 2: μ vs ±μ*;
    otherwise components are matched by the Hungarian assignment on distances."""
    mu_learned, mu_true = mu_learned.detach().double().cpu(), mu_true.detach().double().cpu()
    if symmetric:
        m, s = mu_learned[0], mu_true[0]
        cos = (m @ s).abs() / (m.norm() * s.norm()).clamp_min(1e-300)
        dist = min((m - s).norm(), (m + s).norm())
        return {"angle_deg": math.degrees(math.acos(min(cos.item(), 1.0))), "distance": dist.item()}
    cost = torch.cdist(mu_learned, mu_true).numpy()
    from scipy.optimize import linear_sum_assignment  # here, not at import (as chi2)

    rows, cols = linear_sum_assignment(cost)
    a, b = mu_learned[rows], mu_true[cols]
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    angles = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    return {"angle_deg": angles.max().item(), "distance": (a - b).norm(dim=1).max().item()}


def _distances(mixture: GaussianMixture, a: torch.Tensor, ref: _Reference, exact: bool = True) -> dict[str, float]:
    out = {
        "sliced_w2": sliced_w2(a, ref.samples, ref.directions),
        "mode_tv": mode_weight_tv(mixture, a),
        "off_mode": off_mode_fraction(mixture, a),
        "cross_entropy": cross_entropy(mixture, a),
    }
    if exact:  # the costly ones: an n² transport problem and n² kernel sums
        out["w2"] = exact_w2(a[: ref.n_w2], ref.samples[: ref.n_w2])
        out["mmd"] = mmd(a[: ref.n_mmd], ref.samples[: ref.n_mmd], ref.bandwidths)
    return out


@dataclass(frozen=True)
class _Reference:
    samples: torch.Tensor  # the exact set every sample set is compared with
    directions: torch.Tensor
    bandwidths: list[float]
    n_w2: int
    n_mmd: int
    baseline: dict[str, float]  # true vs true at the same n


_REFERENCES: dict[str, _Reference] = {}  # a few per process: every sampler of a run shares one


def _reference(
    mixture: GaussianMixture, n: int, seed: int, n_projections: int, n_w2: int, n_mmd: int, repeats: int
) -> _Reference:
    """The exact reference set, projections, MMD bandwidths and true-vs-true baselines for one
    (mixture, n, seed, settings). They do not depend on the samples scored, and their W2 and MMD
    are most of a score's cost, so a process computes them once for all the samplers it scores."""
    key = _mixture_key(mixture, n, seed, n_projections, n_w2, n_mmd, repeats)
    if key in _REFERENCES:
        return _REFERENCES[key]
    gen = torch.Generator().manual_seed(seed)
    samples, independent = mixture.sample(n, gen), mixture.sample(n, gen)
    directions = projection_directions(mixture, n_projections, gen)
    pairwise = torch.pdist(samples[: min(n, 1000)])
    scale = pairwise.median().item() if pairwise.numel() else 1.0
    bandwidths = [scale * f for f in (0.03, 0.1, 0.3, 1.0)]
    ref = _Reference(samples, directions, bandwidths, n_w2, n_mmd, {})
    baseline = _distances(mixture, independent, ref)
    extra = [_distances(mixture, mixture.sample(n, gen), ref, exact=False) for _ in range(repeats - 1)]
    for k in extra[0] if extra else []:
        baseline[k] = sum([baseline[k], *(e[k] for e in extra)]) / repeats
    ref.baseline.update(baseline)
    if len(_REFERENCES) >= 8:
        _REFERENCES.pop(next(iter(_REFERENCES)))
    _REFERENCES[key] = ref
    return ref


def score_samples(
    mixture: GaussianMixture,
    samples: torch.Tensor,
    seed: int = 0,
    n_projections: int = 128,
    w2_max_n: int = 2000,
    mmd_max_n: int = 2000,
    baseline_repeats: int = 5,
) -> dict[str, float]:
    """All MoG metrics of ``samples`` and their true-vs-true baselines at the same n.

    At n = 10⁴ the true-vs-true sliced W2 of a mixture varies by ±30 % from draw to draw (the
    multinomial mode counts), so the cheap baselines are averaged over ``baseline_repeats``
    independent exact sets; the costly W2 and MMD baselines use one. Non-finite samples are
    counted (``nonfinite``) and make the metrics NaN: a diverged sample is never averaged away.
    """
    x = samples.detach().double().cpu().reshape(samples.shape[0], -1)
    n = x.shape[0]
    ref = _reference(mixture, n, seed, n_projections, min(n, w2_max_n), min(n, mmd_max_n), baseline_repeats)
    nonfinite = int((~torch.isfinite(x)).any(dim=1).sum())
    out: dict[str, float] = {"n": n, "nonfinite": nonfinite}
    if nonfinite:
        out.update({k: float("nan") for k in ref.baseline})
    else:
        out.update(_distances(mixture, x, ref))
    out.update({f"baseline/{k}": v for k, v in ref.baseline.items()})
    return out
