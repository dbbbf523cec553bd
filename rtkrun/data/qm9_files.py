"""Readers of the QM9 files into one record type (docs/science.md, QM9).

Two sources give the same molecules: the CSVs shipped in the PyPI package ``qm9pack`` (the
default: offline, read through importlib.resources) and the original figshare release, a
directory of ``dsgdb9nsd_NNNNNN.xyz`` files or the ``dsgdb9nsd.xyz.tar.bz2`` tarball, with
``uncharacterized.txt`` beside it. xyz layout: atom count; ``gdb <index>`` and 15 properties;
one ``El x y z q`` line per atom (numbers may write the exponent as ``*^``, Mathematica's
form); frequencies; the GDB and relaxed SMILES; the InChI pair. Every problem is a
:class:`DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtkrun.errors import RtkrunError

ELEMENTS = ("H", "C", "N", "O", "F")
ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
MAX_ATOMS = 29
TARBALL = "dsgdb9nsd.xyz.tar.bz2"
UNCHARACTERIZED = "uncharacterized.txt"
QM9PACK_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


class DataError(RtkrunError):
    """A dataset file is missing, malformed or inconsistent."""


@dataclass
class MoleculeTable:
    """Molecules padded to ``MAX_ATOMS``; atomic number 0 marks padding."""

    qm9_index: np.ndarray  # (M,) int32, the QM9 ``gdb`` index
    numbers: np.ndarray  # (M, 29) int8
    positions: np.ndarray  # (M, 29, 3) float32, Å
    charges: np.ndarray  # (M, 29) float32, Mulliken partial charges
    smiles: np.ndarray  # (M,) str, the GDB SMILES

    def __len__(self) -> int:
        return len(self.qm9_index)

    @property
    def n_atoms(self) -> np.ndarray:
        return (self.numbers > 0).sum(1)

    def take(self, rows: np.ndarray) -> MoleculeTable:
        return MoleculeTable(*(getattr(self, k)[rows] for k in FIELDS))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in FIELDS}


FIELDS = ("qm9_index", "numbers", "positions", "charges", "smiles")


@dataclass
class Record:
    index: int
    elements: list[str]
    positions: list[list[float]]
    charges: list[float]
    smiles: str


def _is_count(token: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts '¹' and other digits ``int`` rejects)."""
    return token.isascii() and token.isdigit()


def parse_number(token: str, where: str) -> float:
    """A float, accepting Mathematica's ``*^`` exponent (``1.2*^-6`` = 1.2e-6)."""
    try:
        return float(token.replace("*^", "e"))
    except ValueError:
        raise DataError(f"{where}: {token!r} is not a number") from None


def parse_xyz(text: str, name: str) -> Record:
    """One molecule from the text of a QM9 ``.xyz`` file."""
    lines = text.splitlines()
    if not lines or not _is_count(lines[0].strip()):
        raise DataError(f"{name} line 1: expected the atom count, got {lines[0][:40] if lines else 'an empty file'!r}")
    n = int(lines[0])
    if not 1 <= n <= MAX_ATOMS:
        raise DataError(f"{name} line 1: {n} atoms; QM9 molecules have 1 to {MAX_ATOMS}")
    if len(lines) < n + 5:
        raise DataError(f"{name}: {len(lines)} lines, a molecule of {n} atoms needs {n + 5}; the file is truncated")
    header = lines[1].split()
    if len(header) < 2 or header[0] != "gdb" or not _is_count(header[1]):
        raise DataError(f"{name} line 2: expected 'gdb <index> ...', got {lines[1][:40]!r}")
    elements, positions, charges = [], [], []
    for k in range(n):
        where = f"{name} line {k + 3}"
        fields = lines[k + 2].split()
        if len(fields) != 5:
            raise DataError(f"{where}: expected 'element x y z charge', got {lines[k + 2][:60]!r}")
        if fields[0] not in ATOMIC_NUMBER:
            raise DataError(f"{where}: unknown element {fields[0]!r}; QM9 has {', '.join(ELEMENTS)}")
        elements.append(fields[0])
        positions.append([parse_number(v, where) for v in fields[1:4]])
        charges.append(parse_number(fields[4], where))
    smiles = lines[n + 3].split()
    if not smiles:
        raise DataError(f"{name} line {n + 4}: expected the SMILES pair, got an empty line")
    return Record(int(header[1]), elements, positions, charges, smiles[0])


def in_index_order(table: MoleculeTable, source: str) -> MoleculeTable:
    """The table sorted by QM9 index; an index that appears twice is an error."""
    table = table.take(np.argsort(table.qm9_index, kind="stable"))
    repeated = np.flatnonzero(np.diff(table.qm9_index) == 0)
    if len(repeated):
        raise DataError(f"{source}: QM9 index {table.qm9_index[repeated[0]]} appears twice")
    return table


def pack(records: list[Record], source: str) -> MoleculeTable:
    """Records (in any order) as a table sorted by QM9 index."""
    m = len(records)
    numbers = np.zeros((m, MAX_ATOMS), np.int8)
    positions = np.zeros((m, MAX_ATOMS, 3), np.float32)
    charges = np.zeros((m, MAX_ATOMS), np.float32)
    for i, r in enumerate(records):
        n = len(r.elements)
        if n > MAX_ATOMS:
            raise DataError(f"{source}: molecule {r.index} has {n} atoms; QM9 molecules have at most {MAX_ATOMS}")
        numbers[i, :n] = [ATOMIC_NUMBER[e] for e in r.elements]
        positions[i, :n] = r.positions
        charges[i, :n] = r.charges
    index = np.array([r.index for r in records], np.int32)
    table = MoleculeTable(index, numbers, positions, charges, np.array([r.smiles for r in records], dtype=str))
    return in_index_order(table, source)


def read_uncharacterized(path: Path) -> set[int]:
    """The 3,054 indices the QM9 authors flag: 9 header lines, 2 footer lines, index first."""
    if not path.is_file():
        raise DataError(f"{path} is missing: the figshare release ships it beside {TARBALL}; put it there")
    lines = path.read_text().splitlines()[9:-2]
    out = set()
    for k, line in enumerate(lines, start=10):
        fields = line.split()
        if not fields or not _is_count(fields[0]):
            raise DataError(f"{path} line {k}: expected a QM9 index first, got {line[:40]!r}")
        out.add(int(fields[0]))
    return out


def _xyz_texts(root: Path):
    """(name, text) of every xyz file under a directory or in the tarball, in name order."""
    if root.is_dir():
        for path in sorted(root.glob("dsgdb9nsd_*.xyz")):
            yield str(path), path.read_text()
        return
    try:
        with tarfile.open(root, "r:*") as tar:
            for member in sorted((m for m in tar.getmembers() if m.name.endswith(".xyz")), key=lambda m: m.name):
                yield f"{root}:{member.name}", tar.extractfile(member).read().decode()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(
            f"{root} cannot be read ({e}); the archive is truncated or corrupt: download it again"
        ) from None


def read_figshare(root: str | Path) -> MoleculeTable:
    """The characterised molecules of the original release (a directory or the tarball)."""
    root = Path(root).expanduser()
    if root.is_dir() and (root / TARBALL).is_file() and not any(root.glob("dsgdb9nsd_*.xyz")):
        root = root / TARBALL
    if not root.exists():
        raise DataError(
            f"{root} does not exist: point dataset.root at the directory of dsgdb9nsd_*.xyz files or at "
            f"{TARBALL} (figshare, 'QM9 dataset'), or use dataset.source=qm9pack (pip install qm9pack)"
        )
    skip = read_uncharacterized((root if root.is_dir() else root.parent) / UNCHARACTERIZED)
    records = [r for name, text in _xyz_texts(root) if (r := parse_xyz(text, name)).index not in skip]
    if not records:
        raise DataError(f"{root} holds no dsgdb9nsd_*.xyz file")
    return pack(records, str(root))


def _parse_list(text: str) -> list[str]:
    return [v.strip(" '\"") for v in text.strip("[] ").replace("[", "").replace("]", "").split(",") if v.strip()]


def read_qm9pack_csv(stream: io.TextIOBase, name: str) -> list[Record]:
    """Records of one qm9pack CSV (columns Index, SMILES, N_atoms, Elements, XYZ_Ang, Mulliken_pop)."""
    reader = csv.DictReader(stream)
    try:
        return _read_rows(reader, name)
    except csv.Error as e:
        raise DataError(f"{name} line {reader.line_num}: {e}") from None


def _read_rows(reader: csv.DictReader, name: str) -> list[Record]:
    need = {"Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", "Mulliken_pop"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise DataError(f"{name}: not a qm9pack CSV (needs the columns {', '.join(sorted(need))})")
    records = []
    for row in reader:
        where = f"{name} line {reader.line_num}"
        try:
            elements = _parse_list(row["Elements"])
            flat = [parse_number(v, where) for v in _parse_list(row["XYZ_Ang"])]
            charges = [parse_number(v, where) for v in _parse_list(row["Mulliken_pop"])]
            n, index = int(row["N_atoms"]), int(row["Index"])
        except (TypeError, ValueError, AttributeError):
            raise DataError(f"{where}: malformed row") from None
        if len(elements) != n or len(flat) != 3 * n or len(charges) != n:
            raise DataError(f"{where}: N_atoms={n} but {len(elements)} elements and {len(flat) // 3} positions")
        if not 1 <= n <= MAX_ATOMS:
            raise DataError(f"{where}: {n} atoms; QM9 molecules have 1 to {MAX_ATOMS}")
        unknown = set(elements) - set(ATOMIC_NUMBER)
        if unknown:
            raise DataError(f"{where}: unknown element {sorted(unknown)[0]!r}; QM9 has {', '.join(ELEMENTS)}")
        positions = [flat[3 * k : 3 * k + 3] for k in range(n)]
        records.append(Record(index, elements, positions, charges, row["SMILES"]))
    return records


def qm9pack_files() -> list[Path]:
    """The CSVs inside the installed qm9pack, found without importing it (its ``__init__``
    imports pkg_resources, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset.source=qm9pack needs the package qm9pack (pip install qm9pack), or use "
            "dataset.source=figshare dataset.root=<dir or dsgdb9nsd.xyz.tar.bz2>"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in QM9PACK_PARTS if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]} is missing: reinstall qm9pack (pip install --force-reinstall qm9pack)")
    return [folder / name for name in QM9PACK_PARTS]


def read_qm9pack() -> MoleculeTable:
    """The 130,831 characterised molecules shipped in qm9pack."""
    parts = []
    for path in qm9pack_files():
        with path.open(newline="") as f:
            parts.append(read_qm9pack_table(f, str(path)))
    return in_index_order(MoleculeTable(*(np.concatenate([getattr(t, k) for t in parts]) for k in FIELDS)), "qm9pack")


UNQUOTE = str.maketrans("", "", "[]'\" ")  # a qm9pack list cell ("['C','H']", "[[x,y,z],…]") to "C,H" / "x,y,z,…"


def read_qm9pack_table(stream: io.TextIOBase, name: str) -> MoleculeTable:
    """The molecules of one qm9pack CSV, parsed column by column: the same table as
    ``pack(read_qm9pack_csv(stream, name), name)``, several times faster (each number is parsed
    once by NumPy instead of by a Python loop). A file the bulk parse cannot take whole is read
    again by :func:`read_qm9pack_csv`, whose error names the line."""
    text = stream.read()
    rows = list(csv.reader(io.StringIO(text)))
    try:
        header = rows[0]
        col = {key: header.index(key) for key in ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", "Mulliken_pop")}
        body = rows[1:]
        counts = np.array([int(r[col["N_atoms"]]) for r in body], np.int64)
        index = np.array([int(r[col["Index"]]) for r in body], np.int32)
        elements = [r[col["Elements"]].translate(UNQUOTE).split(",") for r in body]
        xyz = np.array(",".join(r[col["XYZ_Ang"]] for r in body).translate(UNQUOTE).split(","), np.float64)
        charges = np.array(",".join(r[col["Mulliken_pop"]] for r in body).translate(UNQUOTE).split(","), np.float64)
        atomic = np.array([ATOMIC_NUMBER[e] for row in elements for e in row], np.int8)
        whole = (
            len(body) > 0
            and counts.min() >= 1
            and counts.max() <= MAX_ATOMS
            and [len(e) for e in elements] == counts.tolist()
            and len(xyz) == 3 * counts.sum() == 3 * len(charges) == 3 * len(atomic)
        )
    except (ValueError, KeyError, IndexError):
        whole = False
    if not whole:
        return pack(read_qm9pack_csv(io.StringIO(text), name), name)
    m = len(body)
    row = np.repeat(np.arange(m), counts)  # each atom's molecule and its slot in the padded row
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    numbers = np.zeros((m, MAX_ATOMS), np.int8)
    positions = np.zeros((m, MAX_ATOMS, 3), np.float32)
    padded_charges = np.zeros((m, MAX_ATOMS), np.float32)
    numbers[row, slot] = atomic
    positions[row, slot] = xyz.reshape(-1, 3)
    padded_charges[row, slot] = charges
    smiles = np.array([r[col["SMILES"]] for r in body], dtype=str)
    return in_index_order(MoleculeTable(index, numbers, positions, padded_charges, smiles), name)
