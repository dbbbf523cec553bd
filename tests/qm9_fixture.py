"""A small QM9 release in the original figshare layout, built by the tests from real molecules
(read from qm9pack): ``dsgdb9nsd.xyz.tar.bz2`` plus ``uncharacterized.txt``. One coordinate is
written with Mathematica's ``*^`` exponent, as in the real files, and one molecule is listed
as uncharacterised so the reader must drop it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from rtkrun.data.qm9_files import ELEMENTS, MoleculeTable

Z_TO_SYMBOL = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}
assert set(Z_TO_SYMBOL.values()) == set(ELEMENTS)


def mathematica(value: float) -> str:
    """1.2e-06 written as QM9 does for tiny numbers: 1.2*^-6."""
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{mantissa}*^{int(exponent)}"


def xyz_text(table: MoleculeTable, row: int, star_exponent: bool = False) -> str:
    n = int(table.n_atoms[row])
    props = "\t".join(["157.7118", "157.70997"] + ["0."] * 13)
    lines = [str(n), f"gdb {int(table.qm9_index[row])}\t{props}"]
    for k in range(n):
        x, y, z = (float(v) for v in table.positions[row, k])
        x_text = mathematica(1e-6 * (k + 1)) if star_exponent and k == 0 else f"{x:.10f}"
        symbol, charge = Z_TO_SYMBOL[int(table.numbers[row, k])], float(table.charges[row, k])
        lines.append(f"{symbol}\t{x_text}\t{y:.10f}\t{z:.10f}\t{charge:.6f}")
    smiles = str(table.smiles[row])
    lines += ["1341.307\t1341.3284", f"{smiles}\t{smiles}", "InChI=1S/x\tInChI=1S/x"]
    return "\n".join(lines) + "\n"


def uncharacterized_text(indices: list[int]) -> str:
    header = [f"header line {k}" for k in range(1, 10)]
    body = [f"  {i:6d}   0.1   0.2   0.3   0.4" for i in indices]
    return "\n".join(header + body + ["footer 1", "footer 2"]) + "\n"


def build_qm9_fixture(folder: Path, table: MoleculeTable, uncharacterised: int | None = None) -> Path:
    """Write ``table``'s molecules as the figshare tarball under ``folder``; the first molecule's
    first x coordinate is replaced by a ``*^`` number (its value is returned in the text)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tar:
        for row in range(len(table)):
            data = xyz_text(table, row, star_exponent=row == 0).encode()
            info = tarfile.TarInfo(f"dsgdb9nsd_{int(table.qm9_index[row]):06d}.xyz")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tarball = folder / "dsgdb9nsd.xyz.tar.bz2"
    tarball.write_bytes(buf.getvalue())
    skip = [] if uncharacterised is None else [uncharacterised]
    (folder / "uncharacterized.txt").write_text(uncharacterized_text(skip))
    return tarball


def pick_molecules(table: MoleculeTable, n: int) -> MoleculeTable:
    """n molecules spread over the table, including its largest (29 atoms) and a fluorinated one."""
    rows = set(np.linspace(0, len(table) - 1, n - 2).astype(int).tolist())
    rows.add(int(np.argmax(table.n_atoms)))
    rows.add(int(np.flatnonzero((table.numbers == 9).any(1))[0]))
    return table.take(np.array(sorted(rows)))


def first_real_molecules(n: int) -> MoleculeTable:
    """The first n molecules of qm9pack's first CSV, read without parsing the other 130,000."""
    import itertools

    from rtkrun.data.qm9_files import pack, qm9pack_files, read_qm9pack_csv

    path = qm9pack_files()[0]
    with path.open(newline="") as f:
        head = io.StringIO("".join(itertools.islice(f, n + 1)))
    return pack(read_qm9pack_csv(head, str(path)), str(path))
