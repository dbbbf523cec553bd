"""Closed forms of the mixture under VP noise, checked against autograd and quadrature (float64)."""

import math

import pytest
import torch

from rtkrun.data.mog import MogConfig, MogDataset, make_mixture
from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.errors import ConfigError


def mixture(d=3, k=4):
    g = torch.Generator().manual_seed(1)
    return GaussianMixture(torch.randn(k, d, generator=g, dtype=torch.float64) * 2, 0.7, [0.1, 0.2, 0.3, 0.4][:k])


def noisy_points(d=3, n=16):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    alpha = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x, alpha, (1 - alpha**2).sqrt()


def test_score_is_gradient_of_log_density():
    m = mixture()
    x, a, s = noisy_points()
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(x, a, s).sum(), x)
    torch.testing.assert_close(m.score(x.detach(), a, s), grad, atol=1e-12, rtol=1e-10)


def test_denoiser_is_tweedie():
    m = mixture()
    x, a, s = noisy_points()
    tweedie = (x + s[:, None] ** 2 * m.score(x, a, s)) / a[:, None]
    torch.testing.assert_close(m.denoise(x, a, s), tweedie, atol=1e-10, rtol=1e-10)


def test_denoiser_matches_posterior_quadrature_1d():
    # E[x0 | x_t] = ∫ x0 p0(x0) N(x_t; α x0, σ²) dx0 / ∫ p0(x0) N(x_t; α x0, σ²) dx0, on a fine grid.
    m = GaussianMixture(torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64), 0.4, [0.5, 0.3, 0.2])
    grid = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    for xt, alpha in [(-1.0, 0.3), (0.7, 0.8), (2.5, 0.95)]:
        sigma = math.sqrt(1 - alpha**2)
        log_w = m.log_prob(grid[:, None]) - (xt - alpha * grid) ** 2 / (2 * sigma**2)
        w = torch.softmax(log_w, 0)
        expected = (w * grid).sum()
        got = m.denoise(torch.tensor([[xt]], dtype=torch.float64), alpha, sigma)[0, 0]
        assert got.item() == pytest.approx(expected.item(), abs=1e-8)


def test_denoiser_jacobian_matches_autograd():
    m = mixture()
    x, a, s = noisy_points()
    jac = torch.func.vmap(torch.func.jacrev(lambda xi, ai, si: m.denoise(xi[None], ai[None], si[None])[0]))(x, a, s)
    torch.testing.assert_close(m.denoise_jacobian(x, a, s), jac, atol=1e-12, rtol=1e-10)


def test_exact_samples_have_the_mixture_moments():
    m = mixture(d=2)
    x = m.sample(200_000, torch.Generator().manual_seed(0))
    mean = (m.weights[:, None] * m.means).sum(0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    comp = m.responsibilities(x).argmax(1)
    freq = torch.bincount(comp, minlength=4).double() / len(x)
    torch.testing.assert_close(freq, m.weights, atol=0.02, rtol=0)


def test_layouts_and_training_set_are_seeded():
    ring = make_mixture(MogConfig(layout="ring", n_components=6, radius=3.0))
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((6,), 3.0, dtype=torch.float64))
    pair = make_mixture(MogConfig(dim=5, layout="pair", n_components=2, radius=2.0))
    torch.testing.assert_close(pair.means[0], -pair.means[1])
    a = MogDataset(MogConfig(dim=4, layout="random", train_size=50))
    b = MogDataset(MogConfig(dim=4, layout="random", train_size=50))
    assert torch.equal(a.data, b.data) and a.data.shape == (50, 4)
    x, i = a[7]
    assert i == 7 and torch.equal(x, a.data[7])


@pytest.mark.parametrize(
    "kwargs", [{"dim": 0}, {"dim": 3, "layout": "ring"}, {"layout": "pair"}, {"weights": [1.0, 2.0]}, {"layout": "x"}]
)
def test_bad_mixture_configs_raise(kwargs):
    with pytest.raises(ConfigError):
        MogConfig(**kwargs)
