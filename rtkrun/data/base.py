"""The dataset contract: what every dataset gives the trainer, the samplers' wiring, the scoring
and the run directory, so that no caller probes for capabilities or switches on dataset names.

A dataset is a torch ``Dataset`` of (x0, index) that also knows

* its shape and scale: ``sample_shape``, ``data_std`` (EDM's σ_data);
* its batches: ``get_batch`` (augmentation a pure function of (seed, epoch, index)),
  ``mirrored`` (which rows training flips; None without augmentation), ``to(device)``;
* its space: ``space_of(x0)`` (None in R^d; molecules live on a linear subspace) and
  ``sampling_start(noise)`` (x_T for a batch of per-sample noise streams);
* its closed forms, when it has them: ``mixture`` (the MoG's exact marginals), ``fresh_batch``;
* its scoring: ``score`` (metrics/ does the arithmetic) and ``describe`` (one line for logs and
  picture titles);
* its artefacts: ``save_picture`` (PNG) and ``write_files`` (SDF for molecules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.errors import RtkrunError


class DiffusionDataset(Dataset):
    """Base of every dataset: the contract above, with the defaults of data in R^d."""

    cfg: Any
    data_std: float = 1.0
    mixture: GaussianMixture | None = None  # exact marginals (MoG): oracles, Rao-Blackwell, exact samples
    on_subspace: bool = False  # samples live on a linear subspace (``space_of`` is not None)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def get_batch(self, indices: torch.Tensor, epoch: int | None = None, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device) -> DiffusionDataset:
        return self

    def mirrored(self, indices: torch.Tensor, epoch: int, seed: int) -> torch.Tensor | None:
        """Which rows training mirrors in ``epoch`` (None: no augmentation)."""
        return None

    def fresh_batch(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n new examples (``trainer.fresh_data``), for data with a known law."""
        raise RtkrunError(
            f"trainer.fresh_data=true needs a dataset that can draw new examples (mog), not {self.cfg.name}"
        )

    def space_of(self, x0: torch.Tensor) -> Any | None:
        """The linear subspace a batch lives in (project, bind, mean_sq); None for R^d."""
        return None

    def sampling_start(self, noise) -> tuple[torch.Tensor, Any | None, Any]:
        """(x_T, space or None, noise) for a batch of per-sample noise streams: here N(0, I)."""
        return noise.randn(*self.sample_shape), None, noise

    def score(
        self, samples: torch.Tensor, evaluation: Any, device: torch.device, extras: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def describe(scores: dict[str, Any]) -> str:
        raise NotImplementedError

    def save_picture(self, samples: torch.Tensor, path: Path, title: str = "", extras: dict | None = None) -> None:
        raise NotImplementedError

    def write_files(self, samples: torch.Tensor, path: Path, extras: dict | None, properties: dict[str, Any]) -> None:
        """Files besides the ``.npz`` and the picture (molecules: an SDF); none by default."""
