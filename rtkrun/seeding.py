"""Per-sample noise streams: sample i depends only on (seed, i).

The NVlabs/edm habit is one generator per sample. Drawing a few numbers per sample per step
from ten thousand generators costs microseconds each, which dominates small models, so each
sample's generator is read in fixed blocks of ``BLOCK`` scalars and consumed from a buffer.
The k-th scalar of sample i is therefore a fixed function of (seed, i, k): independent of the
batch a sample is drawn in, of the device, and of how requests are shaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

BLOCK = 1024


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded with ``seed`` (SeedSequence mixing)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(2)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


class SampleNoise:
    """Independent standard-normal streams, one per sample, stacked along the batch axis.

    ``randn(*shape)`` returns a (B, *shape) tensor whose row i continues sample i's stream;
    ``rand`` maps the same stream through the normal CDF, so uniforms come from it too.
    """

    def __init__(
        self,
        seed: int,
        indices: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        self.device = torch.device(device)
        self.dtype = dtype
        self._generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]
        self._buffer = torch.empty(len(self.indices), 0, dtype=dtype)
        self._pos = 0

    @classmethod
    def for_range(
        cls,
        seed: int,
        start: int,
        stop: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> SampleNoise:
        return cls(seed, range(start, stop), device=device, dtype=dtype)

    def __len__(self) -> int:
        return len(self.indices)

    def _take(self, n: int) -> torch.Tensor:
        available = self._buffer.shape[1] - self._pos
        if available < n:
            blocks = math.ceil((n - available) / BLOCK)
            fresh = torch.stack(
                [
                    torch.cat([torch.randn(BLOCK, generator=g, dtype=self.dtype) for _ in range(blocks)])
                    for g in self._generators
                ]
            )
            self._buffer = torch.cat([self._buffer[:, self._pos :], fresh], dim=1)
            self._pos = 0
        out = self._buffer[:, self._pos : self._pos + n]
        self._pos += n
        return out

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normals of shape (B, *shape) on ``self.device``."""
        n = math.prod(shape)
        return self._take(n).reshape(len(self), *shape).to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniforms on (0, 1) of shape (B, *shape): Φ(standard normal), computed in float64."""
        normal = self.randn(*shape).double()
        uniform = 0.5 * torch.erfc(-normal / math.sqrt(2.0))
        return uniform.clamp(1e-300, 1.0).to(self.dtype)
