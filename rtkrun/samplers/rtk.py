"""Reverse transition kernels (Huang et al. 2024, arXiv 2405.16387): segment targets and the
inner Markov kernels (MALA, underdamped Langevin) shared by ``rtk_mala`` and ``rtk_uld``.

For a segment s < t with a = α_t/α_s and b = σ_t² − a²σ_s² (x_t | x_s ~ N(a x_s, b I)) the
target for x_s is π(y) ∝ p_s(y)·exp(−‖x_t − a y‖²/(2b)) with ∇log π(y) = score_s(y) +
a(x_t − a y)/b (REFERENCE.md §1.3). The quadratic adds curvature a²/b, which sets the scale of
the step sizes below. The DDDM target π(z) ∝ exp(−‖z − f(z, x_t, t)‖²/(2σ²)) lives here too.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rtkrun.diffusion.param import score_from_x0
from rtkrun.samplers.base import ddim_move


def _sum(v: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over all but the batch axis, shape (B,)."""
    return v.flatten(1).sum(1)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class SegmentTarget:
    """π(y) ∝ p_s(y)·exp(−‖x_t − a y‖²/(2b)) for one segment, with a choice of energy estimate.

    ``energy``: ``exact`` (the model's ``log_prob``), ``trapezoid`` (½(∇log p(y) + ∇log p(y'))·Δ,
    no extra NFE) or ``gauss_legendre`` (n extra evaluations on the segment y → y').
    """

    def __init__(self, net, schedule, x_t, t, s, energy: str = "trapezoid", gl_nodes: int = 3) -> None:
        self.net, self.x_t, self.energy = net, x_t, energy
        dtype = x_t.dtype
        self.s = s.to(dtype)
        a_t, s_t = schedule.alpha_sigma(t)
        self.alpha_s, self.sigma_s = schedule.alpha_sigma(s)
        self.a = (a_t / self.alpha_s).to(dtype)
        self.b = (s_t**2 - (a_t / self.alpha_s) ** 2 * self.sigma_s**2).clamp_min(1e-30).to(dtype)
        self.energy_evals = 0
        if energy == "gauss_legendre":
            nodes, weights = np.polynomial.legendre.leggauss(gl_nodes)
            self.gl = [(0.5 * (u + 1.0), 0.5 * w) for u, w in zip(nodes.tolist(), weights.tolist())]

    @property
    def curvature(self) -> torch.Tensor:
        """a²/b + 1/σ_s²: an upper scale of −∇²log π. The transition term adds a²/b, and
        −∇²log p_s ≼ I/σ_s² because p_s is the law of α_s x0 plus N(0, σ_s² I) noise (derived).
        a²/b alone is 0 on the first segment of a schedule with α(t_max) = 0."""
        return self.a**2 / self.b + 1.0 / self.sigma_s.to(self.b.dtype) ** 2

    def score(self, y: torch.Tensor) -> torch.Tensor:
        return score_from_x0(y, self.net(y, self.s), self.alpha_s, self.sigma_s).to(y.dtype)

    def grad_log_pi(self, y: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        return score + self.a * (self.x_t - self.a * y) / self.b

    def log_transition(self, y: torch.Tensor) -> torch.Tensor:
        return -_sum((self.x_t - self.a * y) ** 2) / (2 * self.b)

    def log_p_diff(self, y, y_new, score, score_new) -> torch.Tensor:
        """log p_s(y_new) − log p_s(y), shape (B,)."""
        if self.energy == "exact":
            self.energy_evals += 2
            return self.net.log_prob(y_new, self.s.expand(y.shape[0])) - self.net.log_prob(y, self.s.expand(y.shape[0]))
        delta = y_new - y
        if self.energy == "trapezoid":
            return 0.5 * _sum((score + score_new) * delta)
        return sum(w * _sum(self.score(y + u * delta) * delta) for u, w in self.gl)


def mala_step(target: SegmentTarget, y, score, tau, generator, center=None, radius=None):
    """One MALA step (Roberts & Tweedie 1996) with per-sample step sizes ``tau`` (shape (B,)).

    Proposal y' = y + τ∇log π(y) + √(2τ)ξ; accept with probability
    min(1, π(y')q(y | y')/(π(y)q(y' | y))), log q(y' | y) = −‖y' − y − τ∇log π(y)‖²/(4τ).
    Returns (y, score, accepted (B,) bool, log acceptance ratio).
    """
    tau_b = _bcast(tau, y)
    grad = target.grad_log_pi(y, score)
    proposal = y + tau_b * grad + torch.sqrt(2 * tau_b) * generator.randn(*y.shape[1:]).to(y.dtype)
    score_new = target.score(proposal)
    grad_new = target.grad_log_pi(proposal, score_new)
    log_q_forward = -_sum((proposal - y - tau_b * grad) ** 2) / (4 * tau)
    log_q_backward = -_sum((y - proposal - tau_b * grad_new) ** 2) / (4 * tau)
    log_ratio = (
        target.log_p_diff(y, proposal, score, score_new)
        + target.log_transition(proposal)
        - target.log_transition(y)
        + log_q_backward
        - log_q_forward
    )
    log_u = torch.log(generator.rand(1).reshape(-1).to(y.dtype))
    accept = log_u < log_ratio
    if radius is not None:
        accept &= (proposal - center).flatten(1).norm(dim=1) <= radius
    keep = _bcast(accept, y)
    return torch.where(keep, proposal, y), torch.where(keep, score_new, score), accept, log_ratio


def baoab_step(target: SegmentTarget, y, v, score, h, friction, generator):
    """One BAOAB step of underdamped Langevin dynamics (Leimkuhler & Matthews 2013) with unit
    mass: B (half kick), A (half drift), O (exact Ornstein–Uhlenbeck on v), A, B. One
    evaluation of ∇log π per step; no accept/reject. ``h`` and ``friction`` have shape (B,)."""
    h_b, c = _bcast(h, y), _bcast(torch.exp(-friction * h), y)
    v = v + 0.5 * h_b * target.grad_log_pi(y, score)
    y = y + 0.5 * h_b * v
    v = c * v + torch.sqrt(1 - c**2) * generator.randn(*y.shape[1:]).to(y.dtype)
    y = y + 0.5 * h_b * v
    score = target.score(y)
    v = v + 0.5 * h_b * target.grad_log_pi(y, score)
    return y, v, score


def segment_times(
    schedule, segments: int, segment_length: float | None, space: str, t_max: float, t_min: float
) -> torch.Tensor:
    """Segment boundaries from t_max down to t_min: ``segments`` equal pieces in t or log-SNR,
    or pieces of length ``segment_length`` (η) in that space (the last one shorter)."""
    if space == "t":
        lo, hi = t_min, t_max
    else:
        lo, hi = (v.item() for v in schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64)))
    if segment_length is not None:
        segments = max(1, math.ceil((hi - lo) / segment_length - 1e-9))
        pts = torch.tensor([hi - k * segment_length for k in range(segments)] + [lo], dtype=torch.float64)
        if space != "t":  # λ increases toward t = 0: walk upward from λ(t_max)
            pts = torch.tensor([lo + k * segment_length for k in range(segments)] + [hi], dtype=torch.float64)
    else:
        pts = torch.linspace(hi, lo, segments + 1, dtype=torch.float64)
        if space != "t":
            pts = torch.linspace(lo, hi, segments + 1, dtype=torch.float64)
    times = pts if space == "t" else schedule.t_from_log_snr(pts)
    times[0], times[-1] = t_max, t_min
    return times


def run_segments(net, x_T, schedule, times, generator, callback, kernel, energy="trapezoid", gl_nodes=3):
    """Huang et al. Alg. 1: for each segment t → s, initialise x_s by the DDIM jump from x_t, run
    ``kernel(target, y, score, segment)`` on the segment target, and finish with the denoised
    estimate at t_min. Returns (x0, per-segment kernel stats, energy evaluations)."""
    x = x_T
    times = times.to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(times)
    seg_stats, energy_evals = [], 0
    for k in range(len(times) - 1):
        t, s = times[k], times[k + 1]
        x0_hat = net(x, t.to(x.dtype))
        y = ddim_move(x, x0_hat, alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1])  # the DDIM jump
        target = SegmentTarget(net, schedule, x, t, s, energy=energy, gl_nodes=gl_nodes)
        score = target.score(y)
        y, stats = kernel(target, y, score, k, callback)
        seg_stats.append(stats)
        energy_evals += target.energy_evals
        x = y
    x0 = net(x, times[-1].to(x.dtype))
    if callback is not None:
        callback({"step": net.nfe - 1, "t": times[-1], "x": x0, "x0_hat": x0, "nfe": net.nfe})
    return x0, seg_stats, energy_evals
