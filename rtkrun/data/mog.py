"""Mixture of Gaussians: the dataset. Its closed forms (marginals, score, Tweedie denoiser)
are :class:`rtkrun.diffusion.mixture.GaussianMixture`; this module builds the mixture a config
describes, draws the training set and plots samples against the modes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rtkrun import runs
from rtkrun.data.base import DiffusionDataset
from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.metrics import mog as mog_metrics
from rtkrun.schemas.data import MogConfig


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


class MogDataset(DiffusionDataset):
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

    def score(self, samples: torch.Tensor, evaluation, device=None, extras=None) -> dict[str, Any]:
        """Distances to the mixture, each with its true-vs-true baseline at the same n."""
        return mog_metrics.score_samples(
            self.mixture,
            samples,
            seed=evaluation.seed,
            n_projections=evaluation.n_projections,
            w2_max_n=evaluation.w2_max_n,
            mmd_max_n=evaluation.mmd_max_n,
        )

    @staticmethod
    def describe(scores: dict[str, Any]) -> str:
        line = (
            f"sliced W2 {scores['sliced_w2']:.4g} (true vs true {scores['baseline/sliced_w2']:.4g}), "
            f"mode TV {scores['mode_tv']:.3g}"
        )
        if scores.get("off_mode") is not None:  # the metric that exposes samples bridging the modes
            line += f", off-mode {100 * scores['off_mode']:.1f} %"
        return line

    def save_picture(self, samples: torch.Tensor, path, title: str = "", extras=None) -> None:
        plot_samples(samples, self.mixture, path, title=title)


def build(cfg: MogConfig) -> MogDataset:
    return MogDataset(cfg)


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
    # fixed margins: tight_layout measures every tick label, half the picture's cost, at every sampler
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.07, top=0.94)
    runs.save_figure(fig, path)
