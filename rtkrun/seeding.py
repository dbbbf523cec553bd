"""Per-sample noise streams: sample i depends only on (seed, i).

The NVlabs/edm habit is one generator per sample. Drawing a few numbers per sample per step
from ten thousand generators costs microseconds each, which dominates small models, so each
sample's generator is read ahead in chunks and consumed from a buffer. Chunks are multiples of
16 scalars, growing from 64 to ``BLOCK``: torch's CPU normal sampler fills 16 values at a time,
so any such chunking reads exactly the numbers of one long draw (a test pins this). The k-th
scalar of sample i is therefore a fixed function of (seed, i, k): independent of the batch a
sample is drawn in, of the device, and of how requests are shaped. Seeds for a whole batch come
from one vectorised pass of NumPy's ``SeedSequence`` hash (``sample_seeds``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import numpy as np
import torch

BLOCK = 1024


FIRST_CHUNK = 64
_M32 = 0xFFFFFFFF
# The constants of NumPy's SeedSequence (O'Neill's seed_seq_fe, numpy/random/bit_generator.pyx).
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4


class Stream(enum.IntEnum):
    """The named random streams of a run besides the samples' own: ``stream_seed(seed, stream,
    k)`` seeds the k-th use of one (an epoch, a rank). The numbers are the offsets into the
    SeedSequence spawn keys that earlier versions used inline, kept so old runs reproduce; the
    samples' streams are indices 0, 1, … below them."""

    EPOCH_ORDER = 1_000_000  # + epoch: the permutation of training examples
    TRAINING_NOISE = 2_000_000  # the objective's times and noise
    DDDM_BUFFER = 3_000_000  # the initial DDDM estimates z_i
    IMAGE_FLIPS = 4_000_000  # + epoch: which images are mirrored
    DROPOUT = 5_000_000  # + rank: the global RNG under data parallelism
    FIXED_POINT_PROFILE = 6_000_000  # the points of the fixed-point profile at t_max
    ONE_STEP_PAIRS = 7_000_000  # x_T of the one-step (self-distillation) rows
    PREVIEW = 8_000_000  # the samples of the previews during training


def stream_seed(seed: int, stream: Stream, k: int = 0) -> int:
    """The seed of the k-th use of a named stream of a run seeded with ``seed``."""
    return sample_seed(seed, int(stream) + k)


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded with ``seed`` (SeedSequence mixing)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(2)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


def _hashmix(value, const: list[int]):
    value = value ^ const[0]
    const[0] = (const[0] * _MULT_A) & _M32
    value = (value * const[0]) & _M32
    return value ^ (value >> 16)


def _mix(x, y):
    out = (_MIX_L * x - _MIX_R * y) & _M32
    return out ^ (out >> 16)


def sample_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """``[sample_seed(seed, i) for i in indices]`` in one vectorised pass: the seed's four pool
    words are mixed once, then every index word is hashed into them at once (uint64 arithmetic
    reduced mod 2³²). Seeds ≥ 2¹²⁸ or indices ≥ 2³² take the scalar path."""
    seed, idx = int(seed), np.asarray(list(indices), dtype=np.int64)
    if not 0 <= seed < 2**128 or (idx.size and (idx.min() < 0 or idx.max() >= 2**32)):
        return [sample_seed(seed, int(i)) for i in idx]
    words = [(seed >> (32 * k)) & _M32 for k in range(max(1, (seed.bit_length() + 31) // 32))]
    words += [0] * (_POOL - len(words))  # SeedSequence pads the run entropy when spawn keys follow
    const = [_INIT_A]
    pool = [_hashmix(w, const) for w in words]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], _hashmix(pool[src], const))
    value = idx.astype(np.uint64)
    mixed = [_mix(np.uint64(p), _hashmix(value, const)) for p in pool]  # the index word, into each pool word
    state, const_b = [], _INIT_B
    for k in range(2):  # generate_state(2)
        v = mixed[k] ^ np.uint64(const_b)
        const_b = (const_b * _MULT_B) & _M32
        v = (v * np.uint64(const_b)) & np.uint64(_M32)
        state.append(v ^ (v >> np.uint64(16)))
    out = ((state[0] << np.uint64(31)) ^ state[1]) & np.uint64(2**63 - 1)
    return [int(v) for v in out]


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
        self._generators = [torch.Generator().manual_seed(s) for s in sample_seeds(seed, self.indices)]
        self._buffer = torch.empty(len(self.indices), 0, dtype=dtype)
        self._pos = 0
        self._chunk = FIRST_CHUNK // 2

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
            self._chunk = min(BLOCK, 2 * self._chunk)
            size = max(16 * math.ceil((n - available) / 16), self._chunk)
            fresh = torch.empty(len(self._generators), available + size, dtype=self.dtype)
            fresh[:, :available] = self._buffer[:, self._pos :]
            for row, g in zip(fresh[:, available:].unbind(0), self._generators):
                row.normal_(generator=g)  # the same numbers as torch.randn(size, generator=g)
            self._buffer, self._pos = fresh, 0
        out = self._buffer[:, self._pos : self._pos + n]
        self._pos += n
        return out

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normals of shape (B, *shape) on ``self.device``."""
        n = math.prod(shape)
        # contiguous: a strided view of the buffer would slow every op that reads it (x_T)
        return self._take(n).reshape(len(self), *shape).contiguous().to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniforms on (0, 1) of shape (B, *shape): Φ(standard normal), computed in float64."""
        normal = self.randn(*shape).double()
        uniform = 0.5 * torch.erfc(-normal / math.sqrt(2.0))
        return uniform.clamp(1e-300, 1.0).to(self.dtype)


# -- counter-based streams on the samples' device ---------------------------------------------------
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Salmon et al. 2011, Philox4x32 multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # the key's Weyl increments (golden ratio, √3 − 1)
_PHILOX_ROUNDS = 10


def _mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a·m for a < 2³² (int64 tensor) and a 32-bit constant m,
    in int64 arithmetic without overflow: m is split into 16-bit halves."""
    p_lo, p_hi = a * (m & 0xFFFF), a * (m >> 16)  # each < 2⁴⁸
    low_sum = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (low_sum >> 32), low_sum & _M32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
    SC 2011): four 32-bit counter words (int64 tensors of one shape) and a 64-bit key give four
    32-bit outputs, a bijection of the counter for each key. Checked against Random123's
    known-answer vectors."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(_PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
        hi0, lo0 = _mulhilo32(c0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo32(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


class PhiloxNoise:
    """Per-sample standard-normal streams computed where the samples live, with the interface of
    :class:`SampleNoise` (``noise=philox``).

    The k-th normal of sample i is a pure function of (seed, i, k): Philox4x32-10 with the seed as
    its 64-bit key and the counter (k // 4, 0, i mod 2³², i // 2³²) gives four 32-bit words, which
    Box–Muller turns into normals k − k mod 4 … +3. No generator objects: set-up is one index
    tensor, and every draw of a batch is a few integer kernels on its device, so a sample is the
    same whatever the batch split or the number of devices (up to the last bits of log, cos and
    sin between devices). Uniforms are Φ(normal), as in :class:`SampleNoise`.
    """

    def __init__(
        self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        self.seed, self.device, self.dtype = int(seed), torch.device(device), dtype
        index = torch.as_tensor(indices if isinstance(indices, torch.Tensor) else list(indices), dtype=torch.int64)
        self._index = index.to(self.device)
        self._key = (self.seed & _M32, (self.seed >> 32) & _M32)
        self._pos = 0  # normals drawn so far per sample

    @classmethod
    def for_range(
        cls, seed: int, start: int, stop: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> PhiloxNoise:
        return cls(seed, torch.arange(start, stop, dtype=torch.int64), device=device, dtype=dtype)

    def __len__(self) -> int:
        return len(self._index)

    def normals(self, first: int, n: int) -> torch.Tensor:
        """Normals first … first + n − 1 of every sample's stream, (B, n) in float64."""
        blocks = torch.arange(first // 4, (first + n + 3) // 4, dtype=torch.int64, device=self.device)
        shape = (len(self._index), len(blocks))
        c0 = (blocks & _M32).expand(shape)
        c1 = (blocks >> 32).expand(shape)
        c2 = (self._index & _M32)[:, None].expand(shape)
        c3 = (self._index >> 32)[:, None].expand(shape)
        words = philox4x32((c0, c1, c2, c3), self._key)
        u = [(w.double() + 0.5) * 2.0**-32 for w in words]  # in (0, 1): the log never sees 0
        radius01, radius23 = torch.sqrt(-2.0 * torch.log(u[0])), torch.sqrt(-2.0 * torch.log(u[2]))
        angle01, angle23 = 2.0 * math.pi * u[1], 2.0 * math.pi * u[3]
        z = torch.stack(
            [
                radius01 * torch.cos(angle01),
                radius01 * torch.sin(angle01),
                radius23 * torch.cos(angle23),
                radius23 * torch.sin(angle23),
            ],
            dim=-1,
        ).reshape(shape[0], -1)
        return z[:, first % 4 : first % 4 + n]

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normals of shape (B, *shape) on ``self.device``: the stream's next values."""
        n = math.prod(shape)
        out = self.normals(self._pos, n)
        self._pos += n
        return out.to(self.dtype).reshape(len(self), *shape)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniforms on (0, 1) of shape (B, *shape): Φ(standard normal), computed in float64."""
        n = math.prod(shape)
        normal = self.normals(self._pos, n)
        self._pos += n
        uniform = 0.5 * torch.erfc(-normal / math.sqrt(2.0))
        return uniform.clamp(1e-300, 1.0).to(self.dtype).reshape(len(self), *shape)


NOISE = {"cpu_streams": SampleNoise, "philox": PhiloxNoise}  # evaluation.noise / noise
