"""Schedules, grids and parametrisation conversions against exact answers."""

import math

import pytest
import torch

from rtkrun.diffusion import param
from rtkrun.diffusion.grids import GRIDS, edm_grid, logsnr_grid, make_grid
from rtkrun.diffusion.schedules import CosineSchedule, LinearSchedule, PolynomialSchedule
from rtkrun.errors import ConfigError

SCHEDULES = [LinearSchedule(), CosineSchedule(), PolynomialSchedule()]
t = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_variance_preserving_and_log_snr_inverse(schedule):
    a, s = schedule.alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), atol=1e-12, rtol=0)
    assert (a[1:] <= a[:-1]).all(), "alpha must decrease with t"
    inner = t[50:-50]
    torch.testing.assert_close(schedule.t_from_log_snr(schedule.log_snr(inner)), inner, atol=1e-9, rtol=0)


def test_linear_matches_discrete_ddpm():
    # Ho et al.: ᾱ_i = Π_{j<=i}(1 − β_j), β linear 1e-4 … 0.02 over 1000 steps.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    ti = torch.arange(1, 1001, dtype=torch.float64) / 1000
    cont = LinearSchedule().alpha(ti) ** 2
    # −log ᾱ agrees to 1% (the discrete sum has the extra β²/2 terms of −log(1 − β)).
    rel = (cont.log() / alpha_bar.log() - 1).abs()
    assert rel[100:].max() < 0.01, rel[100:].max()  # early steps differ by the O(1/i) offset


def test_cosine_and_polynomial_closed_forms():
    cos = CosineSchedule(s=0.008)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for u in (0.0, 0.3, 0.77):
        assert cos.alpha(torch.tensor(u, dtype=torch.float64)).item() ** 2 == pytest.approx(f(u) / f(0.0), rel=1e-12)
    poly = PolynomialSchedule(power=2, precision=1e-5)
    for u in (0.0, 0.5, 1.0):
        expected = (1 - 2e-5) * (1 - u**2) ** 2 + 1e-5
        assert poly.alpha(torch.tensor(u, dtype=torch.float64)).item() ** 2 == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_grids_are_decreasing_and_pinned(name, schedule):
    for steps in (1, 2, 7, 50):
        g = make_grid(name, schedule, steps, t_max=1.0, t_min=1e-3)
        assert g.shape == (steps + 1,)
        assert g[0] == 1.0 and g[-1] == 0.0
        if steps > 1:
            assert g[-2] == pytest.approx(1e-3)
            assert (g[1:] < g[:-1]).all(), f"{name} grid not strictly decreasing: {g}"


def test_logsnr_and_edm_grids_have_their_spacing():
    sch = CosineSchedule()
    lam = sch.log_snr(logsnr_grid(sch, 10, t_max=0.9, t_min=0.01)[:-1])
    diffs = lam[1:] - lam[:-1]
    torch.testing.assert_close(diffs, diffs.mean().expand_as(diffs), atol=1e-8, rtol=0)
    rho = 7.0
    sig = torch.exp(-sch.log_snr(edm_grid(sch, 10, t_max=0.9, t_min=0.01, rho=rho)[:-1]) / 2)
    d = sig ** (1 / rho)
    torch.testing.assert_close(d[1:] - d[:-1], (d[1] - d[0]).expand(9), atol=1e-8, rtol=0)


def test_grid_rejects_bad_settings():
    with pytest.raises(ConfigError):
        make_grid("uniform", CosineSchedule(), 0)
    with pytest.raises(ConfigError):
        make_grid("uniform", CosineSchedule(), 5, t_min=0.5, t_max=0.1)
    with pytest.raises(ConfigError):
        make_grid("nope", CosineSchedule(), 5)


def test_parametrisation_roundtrips():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    alpha = torch.rand(4, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps
    torch.testing.assert_close(param.eps_from_x0(x_t, x0, alpha, sigma), eps)
    torch.testing.assert_close(param.x0_from_eps(x_t, eps, alpha, sigma), x0)
    score = param.score_from_x0(x_t, x0, alpha, sigma)
    torch.testing.assert_close(score, -eps / sigma[:, None])
    torch.testing.assert_close(param.x0_from_score(x_t, score, alpha, sigma), x0)
