"""Mixture of Gaussians: the dataset, and its exact marginals under a VP schedule.

Components N(μ_k, s²I) with weights w_k. Under x_t = α x0 + σ ε the marginal is
p_t = Σ w_k N(α μ_k, v I) with v = α²s² + σ² (docs/science.md, mixture of Gaussians), so log p_t, the score, the
posterior responsibilities r_k(x_t), the denoiser E[x0 | x_t] (Tweedie) and its Jacobian are
closed form. Derived (ours): with c = α s²/v,
    E[x0 | x_t] = Σ_k r_k (μ_k + c (x_t − α μ_k)),
    ∂E[x0 | x_t]/∂x_t = c I + (α σ²/v²) Cov_r(μ),   Cov_r(μ) = Σ_k r_k (μ_k − μ̄)(μ_k − μ̄)ᵀ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from rtkrun import runs
from rtkrun.errors import ConfigError


@dataclass
class MogConfig:
    name: str = "mog"
    dim: int = 2
    n_components: int = 8
    layout: str = "ring"  # ring (2-D), random, pair (±μ*, the seed's symmetric mixture)
    radius: float = 2.0  # ring radius / norm of μ* / typical norm of random means
    component_std: float = 0.15
    weights: list[float] | None = None  # None: uniform
    mixture_seed: int = 0  # draws random means and the training set
    train_size: int = 10_000

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"dim must be >= 1, got {self.dim}")
        if self.n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {self.n_components}")
        if self.layout not in ("ring", "random", "pair"):
            raise ConfigError(f"layout={self.layout!r} is unknown; choose ring, random or pair")
        if self.layout == "ring" and self.dim != 2:
            raise ConfigError(f"layout=ring needs dim=2 (got dim={self.dim}); use layout=random")
        if self.layout == "pair" and self.n_components != 2:
            raise ConfigError(f"layout=pair needs n_components=2 (got {self.n_components})")
        if not self.component_std > 0:  # a zero width makes every density and metric degenerate
            raise ConfigError(f"component_std must be > 0, got {self.component_std}")
        if self.weights is not None:
            if len(self.weights) != self.n_components or min(self.weights) <= 0:
                raise ConfigError(
                    f"weights must be {self.n_components} positive numbers (one per component), got {self.weights}"
                )
        if self.train_size < 1:
            raise ConfigError(f"train_size must be >= 1, got {self.train_size}")


def _broadcast(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Scalar or per-sample (B,) α/σ as a (B, 1) or scalar tensor in x's dtype."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, 1) if v.ndim else v


class GaussianMixture:
    """Σ_k w_k N(μ_k, s² I) in R^d, with closed forms of its VP-noised marginals.

    Methods take x of shape (B, d) and α, σ as scalars or (B,) tensors; they work for any
    ``means`` tensor, including learnable ones (the tanh student reuses them).
    """

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None) -> None:
        self.means = means
        self.std = float(std)
        k = means.shape[0]
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, device: torch.device | str) -> GaussianMixture:
        return GaussianMixture(self.means.to(device), self.std, self.weights)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact samples (float64 on the CPU)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means.detach().double().cpu()[comp] + self.std * noise

    # -- closed forms under x_t = α x0 + σ ε -------------------------------------------------
    def _logits(self, x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-component terms of log p_t: (logits up to a per-row constant, that constant, v).

        ‖x − αμ_k‖² is expanded as ‖x‖² − 2α xᵀμ_k + α²‖μ_k‖² so the work is one matmul; the
        ‖x‖² part is common to all k and kept apart (exact responsibilities, no cancellation).
        """
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2  # (B, 1) or scalar
        means = self.means.to(x)
        cross = a * (x @ means.T) - 0.5 * a**2 * (means**2).sum(-1)  # (B, K)
        logits = torch.log(self.weights.to(x)) + cross / var
        row = -(x**2).sum(-1, keepdim=True) / (2 * var) - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logits, row, var

    def log_prob(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """log p_t(x), shape (B,)."""
        logits, row, _ = self._logits(x, alpha, sigma)
        return torch.logsumexp(logits, dim=-1) + row.reshape(-1).expand(x.shape[0])

    def responsibilities(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities r_k(x), shape (B, K)."""
        logits, _, _ = self._logits(x, alpha, sigma)
        return torch.softmax(logits, dim=-1)

    def score(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """∇_x log p_t(x) = Σ_k r_k (α μ_k − x)/v."""
        r = self.responsibilities(x, alpha, sigma)
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2
        return (a * (r @ self.means.to(x)) - x) / var

    def denoise(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x0 | x_t = x] = Σ_k r_k (μ_k + c (x − α μ_k)), c = α s²/v."""
        r = self.responsibilities(x, alpha, sigma)
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2
        c = a * self.std**2 / var
        mean_mu = r @ self.means.to(x)
        return mean_mu + c * (x - a * mean_mu)

    def denoise_jacobian(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """∂E[x0 | x_t]/∂x_t = c I + (α σ²/v²) Cov_r(μ), shape (B, d, d)."""
        r = self.responsibilities(x, alpha, sigma)
        a, s = _broadcast(alpha, x), _broadcast(sigma, x)
        var = a**2 * self.std**2 + s**2
        means = self.means.to(x)
        centred = means[None] - (r @ means)[:, None, :]  # (B, K, d)
        cov = torch.einsum("bk,bki,bkj->bij", r, centred, centred)
        c = (a * self.std**2 / var).unsqueeze(-1)  # (B, 1, 1) or (1,)
        k = (a * s**2 / var**2).unsqueeze(-1)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return c * eye + k * cov


def make_mixture(cfg: MogConfig) -> GaussianMixture:
    """The mixture a config describes; random parts come from ``mixture_seed``."""
    rng = np.random.default_rng(cfg.mixture_seed)
    k, d = cfg.n_components, cfg.dim
    if cfg.layout == "ring":
        angles = 2 * math.pi * np.arange(k) / k
        means = cfg.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif cfg.layout == "pair":
        direction = rng.standard_normal(d)
        mu_star = cfg.radius * direction / np.linalg.norm(direction)
        means = np.stack([mu_star, -mu_star])
    else:
        means = cfg.radius * rng.standard_normal((k, d)) / math.sqrt(d)
    return GaussianMixture(torch.tensor(means, dtype=torch.float64), cfg.component_std, cfg.weights)


class MogDataset(Dataset):
    """A finite training set of ``train_size`` exact samples drawn once from ``mixture_seed``.

    Items are (x0, index): the global index feeds per-example state such as the DDDM buffer.
    """

    def __init__(self, cfg: MogConfig) -> None:
        self.cfg = cfg
        self.mixture = make_mixture(cfg)
        gen = torch.Generator().manual_seed(cfg.mixture_seed + 1)
        self.data = self.mixture.sample(cfg.train_size, gen).float()

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], index

    def get_batch(self, indices: torch.Tensor, epoch: int | None = None, seed: int = 0) -> torch.Tensor:
        """Fast path for in-memory data: the rows at ``indices`` (no augmentation)."""
        return self.data[indices]

    def fresh_batch(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n new exact samples (population-gradient training, ``trainer.fresh_data``)."""
        return self.mixture.sample(n, generator).float()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.cfg.dim,)

    @property
    def data_std(self) -> float:
        """Per-coordinate standard deviation of the training set (input scaling for models)."""
        return float(self.data.std().clamp_min(1e-3))


def build(cfg: MogConfig) -> MogDataset:
    return MogDataset(cfg)


def prior(noise, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T ~ N(0, I): the VP prior (α(1) ≈ 0, σ(1) ≈ 1)."""
    return noise.randn(*shape)


def plot_samples(samples: torch.Tensor, mixture: GaussianMixture, path, title: str = "") -> None:
    """Scatter plot of samples over exact ones; d > 2 is projected on the top two directions of
    the means (where the modes separate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = samples.detach().double().cpu()
    gen = torch.Generator().manual_seed(0)
    truth = mixture.sample(min(len(x), 5000), gen)
    means = mixture.means.detach().double().cpu()
    if mixture.dim > 2:
        centred = means - means.mean(0)
        basis = (
            torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
            if centred.norm() > 0
            else torch.eye(mixture.dim, 2, dtype=torch.float64)
        )
        if basis.shape[1] < 2:
            basis = torch.cat([basis, torch.eye(mixture.dim, 1, dtype=torch.float64)], dim=1)
        x, truth, means = x @ basis, truth @ basis, means @ basis
    elif mixture.dim == 1:
        x, truth, means = (torch.cat([v, torch.zeros_like(v)], dim=1) for v in (x, truth, means))
    x = x[torch.isfinite(x).all(dim=1)]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(truth[:, 0], truth[:, 1], s=2, c="0.75", label="exact")
    ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", label="samples")
    ax.scatter(means[:, 0], means[:, 1], s=30, c="tab:red", marker="x", label="means")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    runs.save_figure(fig, path)


def save_picture(samples: torch.Tensor, dataset: MogDataset, path, title: str = "") -> None:
    plot_samples(samples, dataset.mixture, path, title=title)
