"""Which model, batch sizes and budgets each benchmark preset uses, per dataset.

A case is a dataset preset exactly as ``rtkrun train dataset=<name>`` composes it, plus Hydra
overrides: ``tiny`` shrinks every model so that the whole benchmark runs on a CPU in about a
minute (the smoke test's size); ``reference`` keeps the paper's sizes (EDM's 9 × 256 EGNN, the
DDDM U-Net) and the batch sizes a GPU is run at.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rtkrun.build import build_parts
from rtkrun.config import validate
from rtkrun.data import cifar10
from rtkrun.paths import CONF_DIR


@dataclass(frozen=True)
class Case:
    dataset: str
    overrides: tuple[str, ...] = ()
    train_batch: int = 64
    sample_batch: int = 256
    diag_batch: int = 2
    nfe: int = 20  # the NFE budget of every sampler row
    exact_max_dim: int = 0  # the exact diagnostics chain runs up to this dimension
    diag_iters: int = 30  # the matrix-free chain's Lanczos steps, Hutchinson probes, ascent
    diag_probes: int = 16  # restarts × steps: ``rtkrun diagnose``'s defaults unless shrunk
    diag_ascent: tuple[int, int] = (2, 10)
    fake_images: int = 0  # CIFAR-10: random images per batch file (no real data here)


PRESETS: dict[str, tuple[Case, ...]] = {
    "tiny": (
        Case("mog", train_batch=512, sample_batch=2000, diag_batch=8, nfe=20, exact_max_dim=64),
        Case(
            "qm9",
            ("model=egnn_small", "dataset.limit=256"),
            train_batch=16,
            sample_batch=32,
            diag_batch=2,
            nfe=10,
            diag_iters=10,
            diag_probes=2,
            diag_ascent=(1, 2),
        ),
        Case(
            "cifar10",
            ("model=dddm_unet_small", "model.channels=8", "model.attention_resolutions=[]"),
            train_batch=4,
            sample_batch=4,
            diag_batch=1,
            nfe=4,
            diag_iters=5,
            diag_probes=2,
            diag_ascent=(1, 2),
            fake_images=16,
        ),
    ),
    "reference": (
        Case("mog", train_batch=512, sample_batch=10_000, diag_batch=64, nfe=50, exact_max_dim=64),
        Case("qm9", train_batch=64, sample_batch=1024, diag_batch=4, nfe=50, exact_max_dim=0),
        Case("cifar10", train_batch=128, sample_batch=256, diag_batch=2, nfe=20, fake_images=10_000),
    ),
}


def compose_train(overrides: list[str]):
    """The validated ``train`` config for ``overrides``, inside or outside a running Hydra app."""
    if GlobalHydra.instance().is_initialized():
        return validate(compose(config_name="train", overrides=overrides))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(compose(config_name="train", overrides=overrides))


def write_fake_cifar10(root: Path, n_per_batch: int) -> None:
    """Random images in the release's pickle format: throughput does not depend on pixel values,
    and the real loader reads them unchanged (no MD5 check at a size other than the release's)."""
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in cifar10.SPLITS["train"]:
        images = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        cifar10.write_batch(folder / name, images, np.zeros(n_per_batch))


class Parts:
    """A case's run config, dataset, schedule and model on ``device``; temporary files (fake
    CIFAR-10, the trainer's run directory) live until ``close``."""

    def __init__(self, case: Case, device: torch.device, seed: int = 0, molecules: str | None = None) -> None:
        self.case, self.device = case, device
        self._tmp = tempfile.TemporaryDirectory(prefix="rtkrun-bench-")
        self.tmp = Path(self._tmp.name)
        overrides = [f"dataset={case.dataset}", *case.overrides, f"trainer.batch_size={case.train_batch}"]
        if molecules is not None and case.dataset == "qm9":  # a machine without qm9pack
            overrides += ["dataset.source=npz", f"dataset.root={molecules}"]
        if case.fake_images:
            write_fake_cifar10(self.tmp / "cifar10", case.fake_images)
            overrides += [f"dataset.root={self.tmp / 'cifar10'}", "dataset.verify=never"]
        self.run = compose_train(overrides)
        self.run.seed = seed
        self.dataset, self.schedule, model = build_parts(self.run, seed)
        self.model = model.to(device)
        self.parameters = sum(p.numel() for p in self.model.parameters())

    @property
    def name(self) -> str:
        return f"{self.case.dataset} ({self.run.model.name}, {self.parameters:,} weights)"

    def close(self) -> None:
        self._tmp.cleanup()
