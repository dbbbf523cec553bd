"""Reverse transition kernels (Huang et al. 2024, arXiv 2405.16387): segment targets, the inner
Markov kernels (MALA, underdamped Langevin) and the step-size warm-up shared by ``rtk_mala``
and ``rtk_uld``.

For a segment s < t with a = α_t/α_s and b = σ_t² − a²σ_s² (x_t | x_s ~ N(a x_s, b I)) the
target for x_s is π(y) ∝ p_s(y)·exp(−‖x_t − a y‖²/(2b)) with ∇log π(y) = score_s(y) +
a(x_t − a y)/b (docs/science.md). The quadratic adds curvature a²/b; the rest of −∇²log π is
the curvature of −log p_s, which the warm-up estimates (``curvature_guess``) and then measures
through the acceptance rate (``tune_mala``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from rtkrun.diffusion.param import score_from_x0, x0_from_score
from rtkrun.samplers.base import ddim_move

log = logging.getLogger("rtkrun")


def _sum(v: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over all but the batch axis, shape (B,)."""
    return v.flatten(1).sum(1)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class SegmentTarget:
    """π(y) ∝ p_s(y)·exp(−‖x_t − a y‖²/(2b)) for one segment, with a choice of energy estimate.

    ``energy``: ``exact`` (the model's ``log_prob``, counted in ``energy_evals``, not NFE),
    ``trapezoid`` (½(∇log p(y) + ∇log p(y'))·Δ, no extra NFE) or ``gauss_legendre`` (n extra
    evaluations on the segment y → y').
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
        # exact energy: log p_s of the chain's current state, kept from the step that made it
        # (the accepted proposal's value, or the value the rejection kept), so each MALA step
        # calls log_prob once, at its proposal
        self._log_p: tuple[torch.Tensor, torch.Tensor] | None = None  # (state, log p_s(state))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (old, proposal) of the last diff
        if energy == "gauss_legendre":
            nodes, weights = np.polynomial.legendre.leggauss(gl_nodes)
            self.gl = [(0.5 * (u + 1.0), 0.5 * w) for u, w in zip(nodes.tolist(), weights.tolist())]

    @property
    def transition_curvature(self) -> torch.Tensor:
        """a²/b: the curvature the transition term adds (0 on a first segment with α(t_max) = 0)."""
        return self.a**2 / self.b

    @property
    def curvature_bound(self) -> torch.Tensor:
        """a²/b + 1/σ_s², an upper bound of −∇²log π: −∇²log p_s ≼ I/σ_s² because p_s is the law
        of α_s x0 plus N(0, σ_s² I) noise (derived). Near s → 0 it exceeds the data's own
        curvature by orders of magnitude (1/σ_s² against 1/s² for a component of width s)."""
        return self.transition_curvature + 1.0 / self.sigma_s.to(self.b.dtype) ** 2

    def score(self, y: torch.Tensor) -> torch.Tensor:
        return score_from_x0(y, self.net(y, self.s), self.alpha_s, self.sigma_s).to(y.dtype)

    def denoised(self, y: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_s = y] from the score at y by Tweedie: no network evaluation."""
        return x0_from_score(y, score, self.alpha_s, self.sigma_s).to(y.dtype)

    def grad_log_pi(self, y: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        return score + self.a * (self.x_t - self.a * y) / self.b

    def log_transition(self, y: torch.Tensor) -> torch.Tensor:
        return -_sum((self.x_t - self.a * y) ** 2) / (2 * self.b)

    def log_p_diff(self, y, y_new, score, score_new) -> torch.Tensor:
        """log p_s(y_new) − log p_s(y), shape (B,)."""
        if self.energy == "exact":
            s = self.s.expand(y.shape[0])
            if self._log_p is not None and self._log_p[0] is y:
                old = self._log_p[1]
            else:
                old = self.net.log_prob(y, s)
                self.energy_evals += 1
            new = self.net.log_prob(y_new, s)
            self.energy_evals += 1
            self._pending = (old, new)
            return new - old
        delta = y_new - y
        if self.energy == "trapezoid":
            return 0.5 * _sum((score + score_new) * delta)
        return sum(w * _sum(self.score(y + u * delta) * delta) for u, w in self.gl)

    def moved(self, state: torch.Tensor, accept: torch.Tensor) -> None:
        """The chain is now ``state`` (the proposal where ``accept``): keep its log p_s."""
        if self._pending is not None:
            old, new = self._pending
            self._log_p, self._pending = (state, torch.where(accept, new, old)), None


def curvature_guess(target: SegmentTarget, y: torch.Tensor, score: torch.Tensor, how: str, generator) -> torch.Tensor:
    """A per-sample scale (B,) of −∇²log π near y, the start of the step-size search.

    ``model``: the model's own ``hessian_scale(y, s)`` (the MoG oracle's is exact). ``probe``:
    one Hutchinson-style probe of the denoiser Jacobian J = ∂x0_hat/∂y by a forward difference
    (one NFE, any network, no autograd); Tweedie gives −∇²log p_s = (I − α_s J)/σ_s², whose mean
    eigenvalue is estimated by (1 − α_s uᵀJu/uᵀu)/σ_s² for a Gaussian u. ``bound``: a²/b + 1/σ_s².
    ``auto``: ``model`` where the model has ``hessian_scale``, else ``probe``.
    """
    if how == "auto":
        how = "model" if hasattr(target.net, "hessian_scale") else "probe"
    if how == "bound":
        return target.curvature_bound.expand(y.shape[0]).to(y.dtype)
    if how == "model":
        data = target.net.hessian_scale(y, target.s.expand(y.shape[0]))
    else:
        alpha, sigma = target.alpha_s.to(y.dtype), target.sigma_s.to(y.dtype)
        # A Gaussian probe from the sample's own stream: on a subspace (molecules) the stream is
        # projected, so the probe stays in it; uᵀJu/uᵀu is then the mean eigenvalue there.
        u = generator.randn(*y.shape[1:]).to(y.dtype)
        eps = 1e-2 * sigma.clamp_min(1e-3)  # a step well inside the scale σ_s on which x0_hat bends
        x0 = target.denoised(y, score)
        jvp = (target.net(y + eps * u, target.s) - x0) / eps
        data = (1 - alpha * _sum(u * jvp) / _sum(u * u).clamp_min(1e-30)) / sigma**2
    # A region between modes has negative curvature; the search needs a positive scale.
    floor = 1e-3 / (target.alpha_s**2 + target.sigma_s**2).to(y.dtype)
    return target.transition_curvature.to(y.dtype) + data.to(y.dtype).clamp_min(floor)


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
    state = torch.where(keep, proposal, y)
    if hasattr(target, "moved"):  # a target that keeps the energy of the chain's state
        target.moved(state, accept)
    return state, torch.where(keep, score_new, score), accept, log_ratio


def acceptance_probability(log_ratio: torch.Tensor) -> torch.Tensor:
    """min(1, exp(log ratio)) with NaN (an overflowing proposal) as 0."""
    return torch.nan_to_num(log_ratio, nan=-math.inf).clamp_max(0.0).exp()


class StepSizeSearch:
    """Per-sample search for the step size whose acceptance probability is ``target_accept``,
    over ``steps`` updates, then frozen.

    The first half of the updates doubles or halves τ (it can move by orders of magnitude from a
    poor guess); the second half is the dual averaging of Hoffman & Gelman (2014, Alg. 5, with
    γ = 0.05, t₀ = 10, κ = 0.75 and μ = the log τ the doubling reached) on the acceptance
    probability min(1, ratio), which is less noisy than the accept indicator. ``frozen`` is the
    averaged iterate. Per sample, so no sample's τ depends on the rest of its batch.
    """

    def __init__(self, tau: torch.Tensor, steps: int, target_accept: float) -> None:
        self.log_tau = tau.log()
        self.doubling = (steps + 1) // 2
        self.target_accept = target_accept
        self.mu, self.h_bar, self.log_tau_bar, self.updates = (
            self.log_tau,
            torch.zeros_like(self.log_tau),
            self.log_tau,
            0,
        )

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def update(self, p: torch.Tensor) -> None:
        self.updates += 1
        if self.updates <= self.doubling:
            self.log_tau = self.log_tau + math.log(2.0) * torch.where(p > self.target_accept, 1.0, -1.0).to(p)
            self.mu = self.log_tau_bar = self.log_tau
            return
        m = self.updates - self.doubling
        self.h_bar = (1 - 1 / (m + 10)) * self.h_bar + (self.target_accept - p) / (m + 10)
        self.log_tau = self.mu - math.sqrt(m) / 0.05 * self.h_bar
        weight = m**-0.75
        self.log_tau_bar = weight * self.log_tau + (1 - weight) * self.log_tau_bar

    def frozen(self) -> torch.Tensor:
        return self.log_tau_bar.exp()


def tune_mala(target, y, score, tau, steps: int, target_accept: float, generator, callback=None, segment=0):
    """The warm-up of one segment: ``steps`` MALA steps that move the chain while a
    :class:`StepSizeSearch` tunes τ. Returns the chain, its score, the τ to freeze for the rest
    of the segment and the per-step acceptance probabilities. Freezing is what keeps the inner
    steps that follow π-invariant: adapting τ on every step from the sample's own accept
    indicator does not (on N(0, I₁₆) it inflates E‖x‖²/d by 5 %)."""
    search, probabilities = StepSizeSearch(tau, steps, target_accept), []
    for i in range(steps):
        y, score, accepted, log_ratio = mala_step(target, y, score, search.tau, generator)
        p = acceptance_probability(log_ratio)
        probabilities.append(p)
        search.update(p)
        report_step(callback, target, segment, i, y, accepted, warmup=True)
    return y, score, search.frozen(), probabilities


def report_step(callback, target: SegmentTarget, segment: int, inner: int, y, accepted=None, **extra) -> None:
    """The callback after one inner step: the point the network last read (``x`` at ``t``) and
    what it returned, plus the chain's state after the step (``state``)."""
    if callback is None:
        return
    x, t, x0_hat = target.net.last_call
    callback(
        {
            "step": target.net.nfe - 1,
            "segment": segment,
            "inner": inner,
            "t": t.reshape(-1)[0],
            "x": x,
            "x0_hat": x0_hat,
            "state": y,
            "accepted": accepted,
            "nfe": target.net.nfe,
            **extra,
        }
    )


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
    """Segment boundaries from t_max down to t_min: ``segments`` equal pieces in t, log-SNR or the
    VP angle φ = arctan(σ/α), or pieces of length ``segment_length`` (η) in that space (the last
    one shorter). Equal angles are equal t on the cosine schedule, whatever the schedule."""
    if space == "angle":
        ends = schedule.alpha_sigma(torch.tensor([t_max, t_min], dtype=torch.float64))
        hi, lo = torch.atan2(ends[1], ends[0]).tolist()
        if segment_length is not None:
            segments = max(1, math.ceil((hi - lo) / segment_length - 1e-9))
            phi = torch.tensor([hi - k * segment_length for k in range(segments)] + [lo], dtype=torch.float64)
        else:
            phi = torch.linspace(hi, lo, segments + 1, dtype=torch.float64)
        times = schedule.t_from_alpha_bar(torch.cos(phi) ** 2).clamp(t_min, t_max)
        times[0], times[-1] = t_max, t_min
        return times
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


def run_segments(net, x_T, schedule, times, callback, kernel, energy="trapezoid", gl_nodes=3):
    """Huang et al. Alg. 1: for each segment t → s, initialise x_s by the DDIM jump from x_t, run
    ``kernel(target, y, score, segment, callback)`` on the segment target, and finish with the
    denoised estimate at t_min. Every score is computed once: the x0_hat that starts a segment,
    and the final one, follow by Tweedie from the score the previous segment ended with, so
    NFE = 1 + Σ over segments of (1 + the kernel's evaluations).
    Returns (x0, per-segment kernel stats, energy evaluations)."""
    x = x_T
    times = times.to(x_T.device)
    alphas, sigmas = schedule.alpha_sigma(times)
    seg_stats, energy_evals = [], 0
    x0_hat = net(x, times[0].to(x.dtype))
    for k in range(len(times) - 1):
        t, s = times[k], times[k + 1]
        y = ddim_move(x, x0_hat, alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1])  # the DDIM jump
        target = SegmentTarget(net, schedule, x, t, s, energy=energy, gl_nodes=gl_nodes)
        score = target.score(y)
        report_step(callback, target, k, -1, y)
        y, score, stats = kernel(target, y, score, k, callback)
        seg_stats.append(stats)
        energy_evals += target.energy_evals
        x, x0_hat = y, target.denoised(y, score)
    return x0_hat, seg_stats, energy_evals


RTK_MIN_STEPS = 6  # MALA/BAOAB steps a segment needs before another segment is worth its cost


def rtk_budget(s: dict[str, Any], nfe: int) -> dict[str, Any]:
    """Segments and steps for an RTK sampler within ``nfe``, favouring steps over segments.

    NFE = 1 + segments·(1 + probe + c·(warm-up + inner steps)): the first x0_hat, then per
    segment the score at the DDIM jump, the curvature probe (one evaluation, unless
    ``curvature`` is ``model`` or ``bound``; ``auto`` counts it, so a model with an exact
    Hessian scale spends one fewer per segment than the budget) and c evaluations per step
    (1, or 1 + gl_nodes for Gauss–Legendre energies). The last x0_hat and the x0_hat that
    starts each segment come from scores already computed. A segment gives half its steps to
    the warm-up, at most ``warmup_steps``.
    """
    per_step = 1 + s["gl_nodes"] if s.get("energy") == "gauss_legendre" else 1
    probe = 0 if s["curvature"] in ("model", "bound") else 1
    if nfe < 2:  # the budget is a promise: say where it cannot be kept (the counted NFE is recorded)
        log.warning(
            "an RTK sampler needs at least 2 NFE (the first x0_hat and a score after the jump); nfe=%d runs 2", nfe
        )
    segments = max(1, min(s["segments"], (nfe - 1) // (1 + probe + per_step * RTK_MIN_STEPS)))
    steps = ((nfe - 1) // segments - 1 - probe) // per_step
    if steps <= 0:  # no room for a step: the probe would be wasted too
        return {**s, "segment_length": None, "segments": segments, "warmup_steps": 0, "inner_steps": 0}
    warmup = min(s["warmup_steps"], steps // 2)
    return {**s, "segment_length": None, "segments": segments, "warmup_steps": warmup, "inner_steps": steps - warmup}
