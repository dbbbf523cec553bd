"""Molecule metrics as EDM reports them (Hoogeboom et al. 2022, §5.2; docs/science.md, QM9).

Bonds come from pairwise distances alone: a pair is bonded with order k when its distance is
below the tabulated length of order k plus a margin (10, 5, 3 pm for single, double, triple),
taking the highest such order. An atom is stable when its bond orders sum to its valence
(H 1, C 4, N 3, O 2, F 1); a molecule when all its atoms are; atom stability pools atoms.
Validity: an RDKit molecule with exactly those bonds sanitises; its largest fragment's
canonical SMILES is the molecule's SMILES. Uniqueness is over valid molecules, novelty against
the training molecules' SMILES built by the same rule. Stability is computed for the whole batch
at once on (B, 29, 29) arrays; only RDKit runs per molecule.
"""

from __future__ import annotations

import logging

import numpy as np

from rtkrun.errors import RtkrunError

log = logging.getLogger("rtkrun")

ELEMENTS = ("H", "C", "N", "O", "F")
TYPE_OF_NUMBER = {1: 0, 6: 1, 7: 2, 8: 3, 9: 4}
VALENCE = np.array([1, 4, 3, 2, 1])
MARGINS_PM = (10.0, 5.0, 3.0)
# Tabulated bond lengths in pm: (single, double, triple); absent orders omitted.
BOND_LENGTHS_PM = {
    ("H", "H"): (74,),
    ("H", "C"): (109,),
    ("H", "N"): (101,),
    ("H", "O"): (96,),
    ("H", "F"): (92,),
    ("C", "C"): (154, 134, 120),
    ("C", "N"): (147, 129, 116),
    ("C", "O"): (143, 120, 113),
    ("C", "F"): (135,),
    ("N", "N"): (145, 125, 110),
    ("N", "O"): (140, 121),
    ("N", "F"): (136,),
    ("O", "O"): (148, 121),
    ("O", "F"): (142,),
    ("F", "F"): (142,),
}
PUBLISHED = {  # quoted from the papers' tables, in percent: atom stability, molecule stability, validity, V×U
    "data (EDM table)": (99.0, 95.2, 97.7, 97.7),
    "EDM, 1000 steps": (98.7, 82.0, 91.9, 90.7),
    "GeoBFN, 50 steps": (98.3, 85.1, 92.3, 90.7),
}


def _threshold_table() -> np.ndarray:
    """(3, 5, 5) distance thresholds in pm (length + margin) per bond order; −inf: no such bond."""
    table = np.full((3, 5, 5), -np.inf)
    for (a, b), lengths in BOND_LENGTHS_PM.items():
        i, j = ELEMENTS.index(a), ELEMENTS.index(b)
        for k, length in enumerate(lengths):
            table[k, i, j] = table[k, j, i] = length + MARGINS_PM[k]
    return table


THRESHOLDS_PM = _threshold_table()


def type_indices(numbers: np.ndarray) -> np.ndarray:
    """Atomic numbers (0 = padding) → indices into ELEMENTS (−1 = padding)."""
    lookup = np.full(10, -1)
    for z, k in TYPE_OF_NUMBER.items():
        lookup[z] = k
    if numbers.max(initial=0) > 9 or numbers.min(initial=0) < 0 or np.isin(numbers, [2, 3, 4, 5]).any():
        raise RtkrunError("atomic numbers must be 0 (padding) or one of H, C, N, O, F (1, 6, 7, 8, 9)")
    return lookup[numbers]


def bond_orders(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(B, N, N) int bond orders 0–3 from distances, the EDM rule (order k needs order k − 1)."""
    types = type_indices(numbers)
    real = types >= 0
    t = np.where(real, types, 0)
    dist_pm = 100.0 * np.linalg.norm(positions[:, :, None, :] - positions[:, None, :, :], axis=-1)
    order = np.zeros(dist_pm.shape, np.int64)
    still = np.ones(dist_pm.shape, bool)
    for k in range(3):
        still &= dist_pm < THRESHOLDS_PM[k][t[:, :, None], t[:, None, :]]
        order += still
    pair = real[:, :, None] & real[:, None, :] & ~np.eye(numbers.shape[1], dtype=bool)[None]
    return order * pair


def stable_atoms(numbers: np.ndarray, positions: np.ndarray, orders: np.ndarray | None = None) -> np.ndarray:
    """(B, N) bool: real atoms whose bond orders sum to their valence."""
    types = type_indices(numbers)
    real = types >= 0
    orders = bond_orders(numbers, positions) if orders is None else orders
    return (orders.sum(-1) == VALENCE[np.where(real, types, 0)]) & real


def stable_molecules(numbers: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """(B,) bool: molecules with at least one atom, all of them stable."""
    real = numbers > 0
    return (stable | ~real).all(1) & real.any(1)


def stability(numbers: np.ndarray, positions: np.ndarray, orders: np.ndarray | None = None) -> dict[str, float]:
    """Atom stability (pooled over atoms) and molecule stability, as fractions."""
    stable = stable_atoms(numbers, positions, orders)
    return {
        "atom_stability": float(stable.sum() / max((numbers > 0).sum(), 1)),
        "mol_stability": float(stable_molecules(numbers, stable).mean()),
        "n_molecules": int(len(numbers)),
    }


def rdkit_chem():
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise RtkrunError("molecule validity needs RDKit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def build_molecule(numbers: np.ndarray, positions: np.ndarray, orders: np.ndarray):
    """An RDKit molecule with one atom per real row and exactly the inferred bonds (with a 3-D
    conformer, so it can be written as SDF)."""
    Chem = rdkit_chem()
    bond_type = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    real = np.flatnonzero(numbers > 0)
    mol = Chem.RWMol()
    for i in real:
        mol.AddAtom(Chem.Atom(int(numbers[i])))
    slot = {int(i): k for k, i in enumerate(real)}
    is_real = numbers > 0
    bonded = np.triu(orders, 1) * (is_real[:, None] & is_real[None, :])
    for i, j in zip(*np.nonzero(bonded)):  # row by row, i < j: the order a scan of all pairs gives
        mol.AddBond(slot[int(i)], slot[int(j)], bond_type[int(orders[i, j])])
    conformer = Chem.Conformer(len(real))
    for k, i in enumerate(real):
        conformer.SetAtomPosition(k, [float(v) for v in positions[i]])
    mol.AddConformer(conformer, assignId=True)
    return mol.GetMol()


def canonical_smiles(mol) -> str | None:
    """Canonical SMILES of the largest fragment when the molecule sanitises, else None."""
    Chem = rdkit_chem()
    try:
        Chem.SanitizeMol(mol)
        fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    except (ValueError, RuntimeError):  # RDKit raises its sanitisation errors as these
        return None
    largest = max(fragments, key=lambda m: m.GetNumAtoms(), default=mol)
    return Chem.MolToSmiles(largest)


def smiles_of(numbers: np.ndarray, positions: np.ndarray, orders: np.ndarray | None = None) -> list[str | None]:
    orders = bond_orders(numbers, positions) if orders is None else orders
    return [canonical_smiles(build_molecule(numbers[b], positions[b], orders[b])) for b in range(len(numbers))]


def score_molecules(
    numbers: np.ndarray, positions: np.ndarray, reference_smiles: set[str] | None = None
) -> dict[str, float]:
    """Stability, validity, uniqueness (over valid), V×U and novelty (over unique valid)."""
    orders = bond_orders(numbers, positions)  # once, for stability and for the SMILES
    out = stability(numbers, positions, orders)
    smiles = smiles_of(numbers, positions, orders)
    valid = [s for s in smiles if s is not None]
    unique = set(valid)
    n = max(len(numbers), 1)
    out["validity"] = len(valid) / n
    out["uniqueness"] = len(unique) / len(valid) if valid else 0.0
    out["valid_x_unique"] = len(unique) / n
    if reference_smiles is not None:
        out["novelty"] = len(unique - reference_smiles) / len(unique) if unique else 0.0
    return out
