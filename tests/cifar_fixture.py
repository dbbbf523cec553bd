"""A tiny CIFAR-10 in the release's on-disk format, built by the tests themselves (the real
dataset cannot be downloaded here). Images are smooth random colour fields with a bright square,
so they have structure at several scales; the real loader reads them unchanged."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtkrun.data.cifar10 import FOLDER, SPLITS, write_batch


def make_images(n: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    x = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False) * 200
    for i in range(n):
        r, c = torch.randint(0, 24, (2,), generator=gen).tolist()
        x[i, :, r : r + 8, c : c + 8] += 55
    x += 8 * torch.rand(x.shape, generator=gen)
    return x.clamp(0, 255).round().to(torch.uint8).numpy()


def build_cifar10_fixture(root: Path, per_batch: int = 8, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` with five training batches, a test batch and the meta
    file; returns ``root`` (what ``dataset.root`` takes)."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(SPLITS["train"] + SPLITS["test"]):
        images = make_images(per_batch, seed + k)
        labels = np.arange(per_batch) % 10
        write_batch(folder / name, images, labels)
    meta = {
        "num_cases_per_batch": per_batch,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Path(root)
