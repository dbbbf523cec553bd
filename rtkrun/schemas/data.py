"""Schemas of the ``dataset`` group (implementations: ``rtkrun/data/<name>.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from rtkrun.errors import ConfigError

MOG_LAYOUTS = ("ring", "random", "pair")
CIFAR10_SPLITS = ("train", "test")
QM9_SPLITS = ("train", "valid", "test")
QM9_SOURCES = ("qm9pack", "figshare", "npz")


@dataclass
class MogConfig:
    name: str = "mog"
    dim: int = 2  # dimension d
    n_components: int = 8  # K
    layout: str = "ring"  # ring (2-D), random, pair (±μ*, the seed's symmetric mixture)
    radius: float = 2.0  # ring radius / norm of μ* / typical norm of random means
    component_std: float = 0.15  # s: every component is N(μ_k, s²I)
    weights: list[float] | None = None  # None: uniform
    mixture_seed: int = 0  # draws random means and the training set
    train_size: int = 10_000  # training examples drawn once

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"dim must be >= 1, got {self.dim}")
        if self.n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {self.n_components}")
        if self.layout not in MOG_LAYOUTS:
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


@dataclass
class Cifar10Config:
    name: str = "cifar10"
    root: str = "data/cifar10"  # the directory that holds cifar-10-batches-py/
    split: str = "train"  # train (50,000 images) | test (10,000)
    hflip: bool = True  # random horizontal flips in training
    download: bool = False  # fetch with torchvision when the files are missing (needs a network)
    verify: str = "auto"  # auto: MD5 when a batch has the real size | always | never
    limit: int | None = None  # use only the first n images (debugging; off for real runs)

    def __post_init__(self) -> None:
        if self.split not in CIFAR10_SPLITS:
            raise ConfigError(f"split={self.split!r} is unknown; choose train or test")
        if self.verify not in ("auto", "always", "never"):
            raise ConfigError(f"verify={self.verify!r} is unknown; choose auto, always or never")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or null, got {self.limit}")


@dataclass
class QM9Config:
    name: str = "qm9"
    source: str = "qm9pack"  # qm9pack (PyPI, offline) | figshare (root: xyz directory or tarball) | npz (root: a table)
    root: str | None = None  # figshare: the xyz directory or tarball; npz: a molecule table (rtkrun's QM9 cache file)
    split: str = "train"  # train | valid | test
    limit: int | None = None  # first n molecules of the split (debugging, tests)
    rebuild_cache: bool = False  # re-parse instead of reading the cached table

    def __post_init__(self) -> None:
        if self.source not in QM9_SOURCES:
            raise ConfigError(f"source={self.source!r} is unknown; choose qm9pack, figshare or npz")
        if self.source == "figshare" and not self.root:
            raise ConfigError("source=figshare needs dataset.root=<directory of xyz files or dsgdb9nsd.xyz.tar.bz2>")
        if self.source == "npz" and not self.root:
            raise ConfigError("source=npz needs dataset.root=<a molecule table .npz, e.g. rtkrun's QM9 cache file>")
        if self.split not in QM9_SPLITS:
            raise ConfigError(f"split={self.split!r} is unknown; choose train, valid or test")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or null, got {self.limit}")


DATASET_SCHEMAS = {"mog": MogConfig, "cifar10": Cifar10Config, "qm9": QM9Config}
USES_CACHE = ("cifar10", "qm9")  # keep files under RTKRUN_CACHE (FID statistics; the parsed table and SMILES)
