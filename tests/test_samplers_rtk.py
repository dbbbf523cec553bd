"""PF-ODE, DDDM fixed point, RTK-MALA and RTK-ULD: exactness on the MoG oracle and the
building blocks against exact answers."""

import math

import pytest
import torch

from rtkrun.data.mog import GaussianMixture, MogConfig, MogDataset
from rtkrun.diffusion.schedules import CosineSchedule
from rtkrun.metrics.mog import score_samples
from rtkrun.models.oracle import MogFlowOracle, MogFlowOracleConfig, MogOracle
from rtkrun.samplers import SAMPLERS
from rtkrun.samplers.base import CountingDenoiser
from rtkrun.samplers.dddm import dddm
from rtkrun.samplers.rtk import SegmentTarget, mala_step
from rtkrun.seeding import SampleNoise
from tests.test_samplers import MIXTURES

EXACT_SETTINGS = {
    "pf_ode": {"steps": 100, "solver": "heun"},
    "dddm": {"levels": 1, "iterations": 1},
    "rtk_mala": {"segments": 10, "inner_steps": 40, "energy": "exact"},
    "rtk_uld": {"segments": 10, "inner_steps": 100, "step_size": 0.15},
}


def _model(name, mixture, schedule):
    if name == "dddm":
        return MogFlowOracle(MogFlowOracleConfig(ode_steps=100), mixture, schedule)
    return MogOracle(mixture, schedule)


@pytest.mark.parametrize("dim", [2, pytest.param(16, marks=pytest.mark.slow)])  # d = 16: -m slow (suite time)
@pytest.mark.parametrize("name", list(EXACT_SETTINGS))
def test_exact_with_the_oracle(name, dim):
    cfg = MIXTURES[dim]
    dataset = MogDataset(MogConfig(**{**cfg.__dict__, "train_size": 1}))
    schedule = CosineSchedule()
    model = _model(name, dataset.mixture, schedule)
    runs = []
    for seed in (0, 1):
        noise = SampleNoise.for_range(seed, 0, 10_000)
        result = SAMPLERS[name][1](model, noise.randn(dim), schedule, generator=noise, **EXACT_SETTINGS[name])
        runs.append(score_samples(dataset.mixture, result.x0, seed=7, w2_max_n=300, mmd_max_n=300))
    mean = {k: sum(r[k] for r in runs) / 2 for k in ("sliced_w2", "mode_tv", "baseline/sliced_w2", "baseline/mode_tv")}
    assert mean["sliced_w2"] <= 1.5 * mean["baseline/sliced_w2"], runs
    assert mean["mode_tv"] <= 1.5 * mean["baseline/mode_tv"], runs


class GaussianTarget:
    """A stand-in segment target with π = N(m, diag(v)) and its exact energy."""

    def __init__(self, m, v):
        self.m, self.v = m, v
        self.net = CountingDenoiser(lambda x, t, z=None: x)

    def score(self, y):
        return -(y - self.m) / self.v

    def grad_log_pi(self, y, score):
        return score

    def log_transition(self, y):
        return torch.zeros(y.shape[0], dtype=y.dtype)

    def log_p_diff(self, y, y_new, score, score_new):
        return (-((y_new - self.m) ** 2) / (2 * self.v) + (y - self.m) ** 2 / (2 * self.v)).sum(1)


def test_mala_leaves_a_gaussian_invariant_and_converges_to_it():
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    target = GaussianTarget(m, v)
    n = 20_000
    noise = SampleNoise.for_range(0, 0, n, dtype=torch.float64)
    tau = torch.full((n,), 0.8, dtype=torch.float64)  # a large step: many rejections
    y = m + v.sqrt() * noise.randn(3)  # start in the target
    far = torch.full((n, 3), 6.0, dtype=torch.float64)  # start far away
    score, score_far, acc = target.score(y), target.score(far), []
    for _ in range(60):
        y, score, a, _ = mala_step(target, y, score, tau, noise)
        far, score_far, _, _ = mala_step(target, far, score_far, tau, noise)
        acc.append(a.double().mean())
    assert 0.2 < torch.stack(acc).mean() < 0.95
    for chain in (y, far):
        torch.testing.assert_close(chain.mean(0), m, atol=0.04, rtol=0)
        torch.testing.assert_close(chain.var(0), v, atol=0, rtol=0.05)


class FixedNoise:
    def __init__(self, xi, u):
        self.xi, self.u = xi, u

    def randn(self, *shape):
        return self.xi

    def rand(self, *shape):
        return self.u


def test_metropolis_ratio_matches_a_float64_hand_computation():
    target = GaussianTarget(torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64))
    y = torch.tensor([[1.1]], dtype=torch.float64)
    tau, xi = 0.25, 0.4
    _, _, accepted, log_ratio = mala_step(
        target,
        y,
        target.score(y),
        torch.tensor([tau], dtype=torch.float64),
        FixedNoise(torch.tensor([[xi]], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64)),
    )
    # By hand: log π(x) = −(x − 0.3)²/1.4, ∇log π(x) = −(x − 0.3)/0.7
    grad = lambda x: -(x - 0.3) / 0.7  # noqa: E731
    log_pi = lambda x: -((x - 0.3) ** 2) / 1.4  # noqa: E731
    x0 = 1.1
    x1 = x0 + tau * grad(x0) + math.sqrt(2 * tau) * xi
    log_q_fwd = -((x1 - x0 - tau * grad(x0)) ** 2) / (4 * tau)
    log_q_bwd = -((x0 - x1 - tau * grad(x1)) ** 2) / (4 * tau)
    expected = log_pi(x1) - log_pi(x0) + log_q_bwd - log_q_fwd
    assert log_ratio.item() == pytest.approx(expected, abs=1e-12)
    assert accepted.item() == (math.log(0.5) < expected)


def test_energy_differences_trapezoid_and_gauss_legendre_against_exact():
    mixture = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64), 0.3)
    schedule = CosineSchedule()
    net = CountingDenoiser(MogOracle(mixture, schedule))
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(500, 2, generator=g, dtype=torch.float64)
    t, s = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    y = 1.5 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    y_new = y + 0.3 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    errors = {}
    for energy in ("trapezoid", "gauss_legendre"):
        target = SegmentTarget(net, schedule, x_t, t, s, energy=energy, gl_nodes=5)
        exact = SegmentTarget(net, schedule, x_t, t, s, energy="exact")
        sc, sc_new = target.score(y), target.score(y_new)
        diff = target.log_p_diff(y, y_new, sc, sc_new) - exact.log_p_diff(y, y_new, sc, sc_new)
        errors[energy] = diff.abs().mean().item()
    assert errors["gauss_legendre"] < 1e-3 < errors["trapezoid"], errors
    assert errors["gauss_legendre"] < errors["trapezoid"] / 100, errors


def test_dddm_converges_at_the_contraction_rate_and_counts_nfe():
    A = torch.diag(torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64))
    b = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    model = lambda x, t, z: x - (z @ A.T + b)  # f = x − F(z), F(z) = Az + b  # noqa: E731
    noise = SampleNoise.for_range(0, 0, 64, dtype=torch.float64)
    x_T = noise.randn(3)
    result = dddm(model, x_T, CosineSchedule(), generator=noise, levels=1, iterations=30)
    assert result.nfe == 30
    fixed = torch.linalg.solve(torch.eye(3, dtype=torch.float64) + A, (x_T - b).T).T
    torch.testing.assert_close(result.x0, fixed, atol=1e-8, rtol=0)
    ratios = result.stats["contraction"][0]
    assert ratios[-1] == pytest.approx(0.5, abs=1e-3)  # ‖A‖₂ = 0.5, the slowest mode dominates
    multi = dddm(model, x_T, CosineSchedule(), generator=noise, levels=3, iterations=7, t_max=0.9)
    assert multi.nfe == 21 and len(multi.stats["residual"]) == 3


@pytest.mark.parametrize("name", ["pf_ode", "dddm", "rtk_mala", "rtk_uld"])
def test_sample_i_does_not_depend_on_batch_size(name):
    cfg = MIXTURES[2]
    dataset = MogDataset(MogConfig(**{**cfg.__dict__, "train_size": 1}))
    schedule = CosineSchedule()
    model = MogOracle(dataset.mixture, schedule)
    settings = {
        "pf_ode": {"steps": 5},
        "dddm": {"levels": 3, "iterations": 2},
        "rtk_mala": {"segments": 2, "inner_steps": 3},
        "rtk_uld": {"segments": 2, "inner_steps": 3},
    }[name]

    def run(start, stop):
        noise = SampleNoise.for_range(3, start, stop)
        return SAMPLERS[name][1](model, noise.randn(2), schedule, generator=noise, **settings).x0

    whole = run(0, 10)
    assert torch.equal(whole, torch.cat([run(0, 4), run(4, 10)]))
    assert torch.equal(whole, run(0, 10))


def test_rtk_mala_dddm_target_samples_the_proxy_energy():
    # f(z) = x − (Az + b): r(z) = (I + A)z − (x − b), so π(z) ∝ exp(−‖r‖²/(2σ²)) is Gaussian with
    # mean (I + A)⁻¹(x − b) and covariance σ²((I + A)ᵀ(I + A))⁻¹.
    from rtkrun.samplers.rtk_mala import rtk_mala

    A = torch.tensor([[0.3, 0.1], [0.0, -0.2]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64)
    model = lambda x, t, z=None: x - (b if z is None else z @ A.T + b)  # noqa: E731
    schedule = CosineSchedule()
    n = 20_000
    noise = SampleNoise.for_range(0, 0, n, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64).expand(n, 2).contiguous()
    out = rtk_mala(model, x, schedule, generator=noise, target="dddm", segments=1, inner_steps=150, t_max=0.5)
    sigma2 = schedule.sigma(torch.tensor(0.5, dtype=torch.float64)).item() ** 2
    M = torch.eye(2, dtype=torch.float64) + A
    mean = torch.linalg.solve(M, x[0] - b)
    cov = sigma2 * torch.linalg.inv(M.T @ M)
    torch.testing.assert_close(out.x0.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(out.x0.T), cov, atol=0.03 * cov.abs().max().item(), rtol=0)
    assert 0.3 < out.stats["acceptance"][0] < 0.9
