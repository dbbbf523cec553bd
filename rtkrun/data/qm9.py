"""QM9 under the EDM protocol (Hoogeboom et al. 2022; docs/science.md, QM9).

A molecule is a (29, 9) array: centred positions in Å (3), the one-hot of H, C, N, O, F
scaled by 1/4 (5) and the atomic number scaled by 1/10 (1); rows past the atom count are zero.
Split: the 130,831 characterised molecules in QM9-index order, ``np.random.seed(0)``
permutation, then 100,000 train / 17,748 valid / 13,083 test. Noise on positions lives in the
zero-centre-of-mass subspace (:class:`MoleculeSpace`), and sampling draws the atom count from
the training histogram. The parsed table is cached as ``.npz`` (``runs.cache_dir()``), checked
by a digest of its arrays on every load.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtkrun import runs
from rtkrun.data import qm9_render
from rtkrun.data.base import DiffusionDataset
from rtkrun.data.qm9_files import (
    ATOMIC_NUMBER,
    ELEMENTS,
    FIELDS,
    MAX_ATOMS,
    MoleculeTable,
    qm9pack_files,
    read_figshare,
    read_qm9pack,
)
from rtkrun.diffusion.subspace import centre
from rtkrun.errors import RtkrunError
from rtkrun.metrics import molecules
from rtkrun.schemas.data import QM9Config

log = logging.getLogger("rtkrun")

N_TYPES = len(ELEMENTS)
N_FEATURES = 3 + N_TYPES + 1
ONE_HOT_SCALE, CHARGE_SCALE = 0.25, 0.1
EDM_TRAIN_SIZE, EDM_CHARACTERISED = 100_000, 130_831
NUMBER_OF_TYPE = torch.tensor([ATOMIC_NUMBER[e] for e in ELEMENTS])


def split_indices(n: int) -> dict[str, np.ndarray]:
    """EDM's split of n molecules: a seed-0 permutation cut into train, valid, test. For the full
    130,831 this is 100,000 / 17,748 / 13,083; smaller sets (fixtures) keep the proportions."""
    perm = np.random.RandomState(0).permutation(n)
    n_test = int(0.1 * n)
    n_train = min(EDM_TRAIN_SIZE, round(n * EDM_TRAIN_SIZE / EDM_CHARACTERISED))
    return {"train": perm[:n_train], "valid": perm[n_train : n - n_test], "test": perm[n - n_test :]}


def table_digest(table: MoleculeTable) -> str:
    h = hashlib.sha1()
    for key in FIELDS:
        h.update(np.ascontiguousarray(getattr(table, key)).tobytes())
    return h.hexdigest()


def _source_key(cfg: QM9Config) -> str:
    """What the cache depends on: the files read (path, size, modification time)."""
    if cfg.source == "qm9pack":
        files, parts = qm9pack_files(), [f"qm9pack {metadata.version('qm9pack')}"]
    else:
        root = Path(cfg.root).expanduser().resolve()
        if not root.exists():
            read_figshare(root)  # raises the message that says where the files should be
        files, parts = ([root] if root.is_file() else sorted(root.iterdir())), ["figshare"]
    parts += [f"{p} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def read_table(path: Path) -> MoleculeTable:
    """A molecule table .npz (the cache's format: the table's fields and their digest), checked.
    Raises ValueError (and the errors of a damaged file) when it does not hold one."""
    with np.load(path) as f:
        table, digest = MoleculeTable(*(f[k] for k in FIELDS)), str(f["digest"])
    if table_digest(table) != digest:
        raise ValueError("its molecules fail their digest check")
    return table


def load_table(cfg: QM9Config) -> MoleculeTable:
    """All characterised molecules of the configured source, from the cache when it is valid
    (``source=npz``: the given table itself, e.g. a cache file copied to a machine without qm9pack)."""
    if cfg.source == "npz":
        root = Path(cfg.root).expanduser()
        try:
            return read_table(root)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise RtkrunError(
                f"dataset.root={root} is not a molecule table ({e}); pass a QM9 cache file "
                f"({runs.cache_dir()}/qm9_qm9pack_*.npz) or use dataset.source=qm9pack"
            ) from None
    path = runs.cache_dir() / f"qm9_{cfg.source}_{_source_key(cfg)}.npz"
    if path.is_file() and not cfg.rebuild_cache:
        try:
            return read_table(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("%s is unreadable (%s); rebuilding it", path, e)
    log.info("reading QM9 from %s (once; cached as %s)", cfg.source, path)
    table = read_qm9pack() if cfg.source == "qm9pack" else read_figshare(cfg.root)
    buf = io.BytesIO()
    np.savez(buf, digest=table_digest(table), **table.arrays())
    runs.atomic_write_bytes(path, buf.getvalue())
    return table


def encode(table: MoleculeTable) -> torch.Tensor:
    """(M, 29, 9) float32: centred positions, one-hot/4, Z/10; zero rows for padding."""
    numbers = torch.from_numpy(table.numbers.astype(np.int64))
    mask = numbers > 0
    pos = torch.from_numpy(table.positions)
    pos = (pos - centre(pos, mask)) * mask[..., None]
    type_index = torch.searchsorted(NUMBER_OF_TYPE, numbers.clamp(min=1))
    one_hot = torch.nn.functional.one_hot(type_index, N_TYPES).float() * ONE_HOT_SCALE
    return torch.cat([pos, one_hot, (numbers.float() * CHARGE_SCALE)[..., None]], -1) * mask[..., None]


def mask_of(x0: torch.Tensor) -> torch.Tensor:
    """Which rows of clean molecules are atoms: exactly the rows with a one-hot entry."""
    return x0[..., 3 : 3 + N_TYPES].abs().sum(-1) > 0


class MoleculeSpace:
    """The linear subspace a batch of molecules lives in: real atoms only, positions with zero
    centre of mass. Dimension per molecule (n − 1)·3 + n·6. ``project`` is the orthogonal
    projection, so a projected standard normal is the standard normal of the subspace (EDM's
    zero-CoM Gaussian)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask  # (B, 29) bool
        self.entries = (mask.sum(1) * N_FEATURES).clamp(min=1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask[..., None].to(x.dtype)
        pos = x[..., :3] - centre(x[..., :3], self.mask)
        return torch.cat([pos, x[..., 3:]], -1) * m

    @property
    def cond(self) -> dict[str, torch.Tensor]:
        return {"node_mask": self.mask}

    def bind(self, model: torch.nn.Module) -> BoundDenoiser:
        """``model`` as a denoiser of this space's batch (the one sampler signature)."""
        return BoundDenoiser(model, self)

    def take(self, rows: torch.Tensor) -> MoleculeSpace:
        """The space of a subset of the batch (rows: a boolean mask or indices)."""
        return MoleculeSpace(self.mask[rows])

    def mean_sq(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-molecule mean of squares over its real entries (padding does not dilute it)."""
        return ((a - b) ** 2 * self.mask[..., None]).flatten(1).sum(1) / self.entries.to(a.dtype)

    def dim(self) -> torch.Tensor:
        n = self.mask.sum(1)
        return (n - 1) * 3 + n * (N_FEATURES - 3)


class SubspaceNoise:
    """A sample-noise source whose draws of the sample's shape are projected into the space;
    other draws (uniforms, per-sample scalars) pass through. Row i still depends only on (seed, i)."""

    def __init__(self, noise, space: MoleculeSpace, sample_shape: tuple[int, ...]) -> None:
        self.noise, self.space, self.sample_shape = noise, space, tuple(sample_shape)

    def randn(self, *shape: int) -> torch.Tensor:
        x = self.noise.randn(*shape)
        return self.space.project(x) if tuple(shape) == self.sample_shape else x

    def __getattr__(self, name: str):
        return getattr(self.noise, name)

    def __len__(self) -> int:
        return len(self.noise)


class BoundDenoiser(torch.nn.Module):
    """``denoiser(x_t, t, z)`` of a molecule model with the batch's node mask bound in, so every
    sampler keeps the one signature; outputs are projected into the batch's space."""

    def __init__(self, model: torch.nn.Module, space: MoleculeSpace) -> None:
        super().__init__()
        self.model, self.space = model, space
        # A model that can bind a mask does its per-batch work (padding trim, edge list) once
        # here, so that calls inside a sampler's loop never wait on the device.
        self.bound = model.bind(space.mask) if hasattr(model, "bind") else None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None, **kw) -> torch.Tensor:
        if self.bound is not None:
            return self.space.project(self.bound(x_t, t, z, **kw))
        return self.space.project(self.model(x_t, t, z, node_mask=self.space.mask, **kw))


class QM9Dataset(DiffusionDataset):
    """One split in memory; items are (molecule (29, 9), index within the split)."""

    data_std = 1.0
    on_subspace = True  # real atoms only, zero centre of mass

    def __init__(self, cfg: QM9Config) -> None:
        self.cfg = cfg
        table = load_table(cfg)
        splits = split_indices(len(table))
        train = table.take(splits["train"])
        self.table = table.take(splits[cfg.split])
        if cfg.limit is not None:
            self.table = self.table.take(np.arange(min(cfg.limit, len(self.table))))
        counts = np.bincount(train.n_atoms, minlength=MAX_ATOMS + 1).astype(np.float64)
        self.atom_count_prior = counts / counts.sum()  # p(N) from the training split, whatever split is used
        self.train = train  # novelty is measured against it
        self.x = encode(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], index

    @property
    def sample_shape(self) -> tuple[int, int]:
        return (MAX_ATOMS, N_FEATURES)

    def to(self, device: torch.device) -> QM9Dataset:
        self.x = self.x.to(device)
        return self

    def get_batch(self, indices: torch.Tensor, epoch: int | None = None, seed: int = 0) -> torch.Tensor:
        return self.x[indices.to(self.x.device)]

    def space_of(self, x0: torch.Tensor) -> MoleculeSpace:
        return MoleculeSpace(mask_of(x0))

    def sampling_start(self, noise, device: torch.device | str = "cpu"):
        """(x_T, space, noise): the atom count of sample i from p(N) by its own stream, then its
        zero-CoM Gaussian; the returned noise projects every later draw into the space."""
        cdf = torch.from_numpy(np.cumsum(self.atom_count_prior))
        u = noise.rand(1)[:, 0].double().cpu()
        n_atoms = torch.searchsorted(cdf, u * cdf[-1]).clamp(1, MAX_ATOMS)
        mask = (torch.arange(MAX_ATOMS)[None] < n_atoms[:, None]).to(noise.device)
        space = MoleculeSpace(mask)
        projected = SubspaceNoise(noise, space, self.sample_shape)
        return projected.randn(*self.sample_shape), space, projected

    def training_smiles(self) -> set[str]:
        """SMILES of the training molecules built by the scoring rule (novelty), cached by the
        data's digest."""
        key = table_digest(self.train)[:16]
        path = runs.cache_dir() / f"qm9_train_smiles_{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as f:
                    return set(f["smiles"].tolist())
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                log.warning("%s is unreadable; rebuilding it", path)
        log.info("building the training SMILES for novelty (once; cached as %s)", path)
        found: list[str] = []
        for start in range(0, len(self.train), 2000):
            chunk = self.train.take(np.arange(start, min(start + 2000, len(self.train))))
            found += [s for s in molecules.smiles_of(chunk.numbers, chunk.positions.astype(np.float64)) if s]
        buf = io.BytesIO()
        np.savez(buf, smiles=np.array(sorted(set(found)), dtype=str))
        runs.atomic_write_bytes(path, buf.getvalue())
        return set(found)

    def score(self, samples: torch.Tensor, evaluation=None, device=None, extras=None) -> dict[str, Any]:
        """EDM's atom and molecule stability, validity, uniqueness and novelty;
        ``extras["node_mask"]`` says which rows are atoms (else read off the one-hot rows)."""
        numbers, positions = decode(samples, node_mask_of(samples, (extras or {}).get("node_mask")))
        scores = molecules.score_molecules(numbers, positions, self.training_smiles())
        scores["nonfinite"] = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
        return scores

    @staticmethod
    def describe(scores: dict[str, Any]) -> str:
        return (
            f"atom stability {100 * scores['atom_stability']:.1f}, molecule stability "
            f"{100 * scores['mol_stability']:.1f}, valid {100 * scores['validity']:.1f}, "
            f"V×U {100 * scores['valid_x_unique']:.1f} (n={scores['n_molecules']})"
        )

    def save_picture(self, samples: torch.Tensor, path, title: str = "", extras=None) -> None:
        """A PNG grid of 2-D depictions (RDKit) of the first 16 samples; invalid ones drawn as
        their atoms with the inferred bonds, unsanitised."""
        mask = node_mask_of(samples, (extras or {}).get("node_mask"))
        numbers, positions = decode(samples[:16], mask[:16])
        qm9_render.save_grid(numbers, positions, path, title=title)

    def write_files(self, samples: torch.Tensor, path: Path, extras: dict | None, properties: dict[str, Any]) -> None:
        """``<path>.sdf``: every sample with its inferred bonds and 3-D coordinates, its index,
        SMILES, validity and stability, and ``properties`` (sampler, NFE, seed) on every record."""
        numbers, positions = decode(samples, node_mask_of(samples, (extras or {}).get("node_mask")))
        qm9_render.write_sdf(numbers, positions, Path(path).with_suffix(".sdf"), properties)


def decode(x: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(atomic numbers (B, 29) with 0 for padding, positions (B, 29, 3) in Å): the type is the
    arg-max of the one-hot part (EDM's rule; the Z/10 channel is not used)."""
    types = x[..., 3 : 3 + N_TYPES].argmax(-1)
    numbers = torch.where(mask, NUMBER_OF_TYPE.to(x.device)[types], 0)
    return numbers.cpu().numpy().astype(np.int8), (x[..., :3] * mask[..., None]).cpu().numpy().astype(np.float64)


def node_mask_of(samples: torch.Tensor, node_mask=None) -> torch.Tensor:
    """The saved node mask of molecule samples, or the mask read off clean one-hot rows."""
    return mask_of(samples) if node_mask is None else torch.as_tensor(node_mask, dtype=torch.bool)
