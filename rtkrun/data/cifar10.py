"""CIFAR-10 in its python-pickle release (docs/science.md, CIFAR-10): ``cifar-10-batches-py/`` with
``data_batch_1..5``, ``test_batch`` and ``batches.meta``; each batch a pickled dict whose
``data`` is uint8 (n, 3072) stored as R, G and B planes, and ``labels`` a list of n ints.

The real files are checked against their published MD5s; a directory in the same format with
other sizes (the tests' fixture, a subset) is read unchanged without that check
(``verify=auto``). Images are served in [−1, 1]; the item index is the global example index
(the DDDM buffer's key). Horizontal flips are a pure function of (seed, epoch, index), so an
interrupted and resumed run sees the same augmented batches.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtkrun import runs
from rtkrun.data.base import DiffusionDataset
from rtkrun.errors import RtkrunError
from rtkrun.metrics import images as image_metrics
from rtkrun.metrics.images import to_uint8
from rtkrun.runs import file_digest
from rtkrun.schemas.data import Cifar10Config
from rtkrun.seeding import Stream, stream_seed

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# Published MD5s of the python release (the values torchvision checks too).
MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
REAL_BATCH_SIZE = 10_000


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 3, 32, 32), labels int64 (n,)) from one pickled batch file."""
    try:
        with open(path, "rb") as f:
            # The release was pickled by Python 2: latin1 turns its str keys into str.
            record = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise RtkrunError(f"{path} is not a CIFAR-10 batch file ({type(e).__name__}: {e}); re-download it") from None
    if not isinstance(record, dict):
        raise RtkrunError(f"{path} is not a CIFAR-10 batch file (it holds a {type(record).__name__}, not a dict)")
    record = {k.decode() if isinstance(k, bytes) else k: v for k, v in record.items()}
    data, labels = record.get("data"), record.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise RtkrunError(f"{path}: 'data' must be a uint8 array of shape (n, 3072); re-download the dataset")
    if labels is None or len(labels) != data.shape[0]:
        raise RtkrunError(f"{path}: 'labels' must list one label per image; re-download the dataset")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images (n, 3, 32, 32) uint8 and labels as one batch file in the release's format
    (used by the tests' fixture builder and by anyone making a subset)."""
    record = {
        "batch_label": path.name,
        "labels": [int(v) for v in labels],
        "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072),
        "filenames": [f"{path.name}_{i}.png" for i in range(len(images))],
    }
    buf = io.BytesIO()
    pickle.dump(record, buf, protocol=2)
    path.write_bytes(buf.getvalue())


def locate(cfg: Cifar10Config) -> Path:
    """The ``cifar-10-batches-py`` folder (downloading it when asked), or a clear error."""
    root = Path(cfg.root).expanduser()
    folder = root / FOLDER
    needed = SPLITS[cfg.split]
    if all((folder / f).is_file() for f in needed):
        return folder
    if cfg.download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=cfg.split == "train", download=True)
        return folder
    missing = next(f for f in needed if not (folder / f).is_file())
    raise RtkrunError(
        f"CIFAR-10 not found: {folder / missing} is missing. With a network, add dataset.download=true; "
        f"otherwise extract {URL} so that {folder} exists, or point dataset.root=<dir> at it"
    )


def load_split(cfg: Cifar10Config) -> tuple[np.ndarray, np.ndarray, bool]:
    """(images, labels, verified): the split's batches in order, MD5-checked when they are real."""
    folder = locate(cfg)
    images, labels, verified = [], [], True
    for name in SPLITS[cfg.split]:
        path = folder / name
        x, y = read_batch(path)
        check = cfg.verify == "always" or (cfg.verify == "auto" and len(x) == REAL_BATCH_SIZE)
        if check:
            got = file_digest(path, "md5")
            if got != MD5[name]:
                raise RtkrunError(
                    f"{path} has MD5 {got}, the published file has {MD5[name]}: the file is corrupt or "
                    "modified; re-download it (dataset.download=true), or set dataset.verify=never for a custom set"
                )
        verified &= check
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels), verified


class Cifar10Dataset(DiffusionDataset):
    """The split in memory as uint8 (150 MB for the training set); items are (image in [−1, 1],
    global index). ``to(device)`` moves the uint8 store so that batches are gathered there."""

    data_std = 0.5  # the per-pixel standard deviation EDM assumes for images in [−1, 1]

    def __init__(self, cfg: Cifar10Config) -> None:
        self.cfg = cfg
        images, labels, self.verified = load_split(cfg)
        if cfg.limit is not None:
            images, labels = images[: cfg.limit], labels[: cfg.limit]
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self._flips: tuple[tuple[int, int], torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_float(self.images[index]), index

    def to(self, device: torch.device) -> Cifar10Dataset:
        self.images = self.images.to(device)
        return self

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def flips(self, seed: int, epoch: int) -> torch.Tensor:
        """Which images are mirrored in ``epoch``: a (n,) bool, fixed by (seed, epoch)."""
        if self._flips is None or self._flips[0] != (seed, epoch):
            gen = torch.Generator().manual_seed(stream_seed(seed, Stream.IMAGE_FLIPS, epoch))
            self._flips = ((seed, epoch), torch.rand(len(self), generator=gen) < 0.5)
        return self._flips[1]

    def mirrored(self, indices: torch.Tensor, epoch: int, seed: int) -> torch.Tensor | None:
        """Which of the images at ``indices`` training mirrors in ``epoch`` (None: no flips)."""
        return self.flips(seed, epoch)[indices.cpu()] if self.cfg.hflip else None

    def get_batch(self, indices: torch.Tensor, epoch: int | None = None, seed: int = 0) -> torch.Tensor:
        """Images at ``indices`` in [−1, 1], mirrored per ``flips`` when training (epoch given)."""
        x = to_float(self.images[indices.to(self.images.device)])
        mirror = self.mirrored(indices, epoch, seed) if epoch is not None else None
        return x if mirror is None else torch.where(mirror.to(x.device)[:, None, None, None], x.flip(-1), x)

    def fingerprint(self) -> str:
        """SHA-1 of the images actually used (keys cached FID statistics)."""
        return hashlib.sha1(self.images.cpu().numpy().tobytes()).hexdigest()

    def score(self, samples: torch.Tensor, evaluation, device=None, extras=None) -> dict[str, Any]:
        """FID against the training images, with its sample counts."""
        return image_metrics.score_samples(
            self, samples, evaluation.fid_weights, device or torch.device("cpu"), evaluation.fid_batch_size
        )

    @staticmethod
    def describe(scores: dict[str, Any]) -> str:
        return f"FID {scores['fid']:.3f} (n={scores['fid_n']} vs {scores['fid_reference_n']} training images)"

    def save_picture(self, samples: torch.Tensor, path, title: str = "", extras=None) -> None:
        """A PNG grid of the first 64 samples (8 per row), quantised as they are scored."""
        from PIL import Image

        x = torch.nan_to_num(samples[:64].detach().cpu(), nan=0.0)
        n, rows = x.shape[0], (x.shape[0] + 7) // 8
        cols = min(n, 8)
        grid = torch.zeros(3, rows * 34 + 2, cols * 34 + 2, dtype=torch.uint8)
        for i, img in enumerate(to_uint8(x)):
            r, c = divmod(i, 8)
            grid[:, 2 + r * 34 : 2 + r * 34 + 32, 2 + c * 34 : 2 + c * 34 + 32] = img
        image = Image.fromarray(grid.permute(1, 2, 0).numpy())
        runs.atomic_save(path, lambda buf: image.save(buf, format="PNG"))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [−1, 1]."""
    return images.float() / 127.5 - 1.0


def build(cfg: Cifar10Config) -> Cifar10Dataset:
    return Cifar10Dataset(cfg)
