"""QM9 artefacts a person reads: an SDF of all samples and a PNG grid of 2-D depictions (RDKit).
Bonds, stability and SMILES come from :mod:`rtkrun.metrics.molecules`, the rules that score them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from rtkrun import runs
from rtkrun.metrics import molecules


def write_sdf(
    numbers: np.ndarray, positions: np.ndarray, path: str | Path, properties: dict[str, Any] | None = None
) -> None:
    """All molecules, with their inferred bonds and 3-D coordinates, as one SDF (atomically);
    molecules that do not sanitise are written unsanitised, so nothing is dropped. Each record
    carries its index, canonical SMILES (empty when invalid), valid and stable (0/1), plus
    ``properties`` shared by every record (sampler, NFE, seed)."""
    Chem = molecules.rdkit_chem()
    orders = molecules.bond_orders(numbers, positions)
    stable = molecules.stable_molecules(numbers, molecules.stable_atoms(numbers, positions, orders))
    buf = io.StringIO()
    writer = Chem.SDWriter(buf)
    writer.SetKekulize(False)
    for b in range(len(numbers)):
        mol = molecules.build_molecule(numbers[b], positions[b], orders[b])
        smiles = molecules.canonical_smiles(Chem.Mol(mol))
        mol.SetProp("_Name", f"sample {b}")
        record = {"index": b, "smiles": smiles or "", "valid": int(smiles is not None), "stable": int(stable[b])}
        for key, value in {**record, **(properties or {})}.items():
            mol.SetProp(key, str(value))
        writer.write(mol)
    writer.close()
    runs.atomic_write_bytes(path, buf.getvalue().encode())


MAX_NEIGHBOURS = 4  # no H, C, N, O or F atom bonds to more than four others


def depiction(numbers: np.ndarray, positions: np.ndarray, orders: np.ndarray) -> tuple[Any, str]:
    """(RDKit molecule, label) to draw for one sample: its inferred bonds and its SMILES, or
    "invalid". A collapsed sample (an atom within bond range of more than four others, as when
    the atoms fall together) is drawn as its atoms alone, labelled "collapsed", not as a tangle
    of inferred bonds."""
    Chem = molecules.rdkit_chem()
    if (orders > 0).sum(-1).max(initial=0) > MAX_NEIGHBOURS:
        return molecules.build_molecule(numbers, positions, np.zeros_like(orders)), "collapsed"
    mol = molecules.build_molecule(numbers, positions, orders)
    smiles = molecules.canonical_smiles(Chem.Mol(mol))
    return mol, smiles if smiles is not None else "invalid"


def save_grid(numbers: np.ndarray, positions: np.ndarray, path: str | Path, title: str = "") -> None:
    """2-D depictions (RDKit) of the molecules in a 4-wide PNG grid, each labelled with its SMILES,
    "invalid" or "collapsed" (:func:`depiction`); a molecule RDKit cannot lay out is left blank."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo
    from rdkit.Chem import AllChem, Draw

    orders = molecules.bond_orders(numbers, positions)
    size, per_row = 220, 4
    rows = max((len(numbers) + per_row - 1) // per_row, 1)
    banner = 28 if title else 0  # the metrics line, drawn above the tiles as the MoG plots have it
    grid = Image.new("RGB", (per_row * size, rows * size + banner), "white")
    if title:
        ImageDraw.Draw(grid).text((8, 8), title, fill="black")
    for b in range(len(numbers)):
        mol, legend = depiction(numbers[b], positions[b], orders[b])
        try:
            mol.UpdatePropertyCache(strict=False)
            AllChem.Compute2DCoords(mol)
            tile = Draw.MolToImage(mol, size=(size, size), legend=legend)
        except (RuntimeError, ValueError):
            continue
        grid.paste(tile, ((b % per_row) * size, banner + (b // per_row) * size))
    info = PngInfo()
    info.add_text("Title", title)  # the metrics line, kept with the picture
    runs.atomic_save(path, lambda buf: grid.save(buf, format="PNG", pnginfo=info))
