"""EDM's molecule metrics: the bond rule on hand-built cases, and the published data row
reproduced on the real QM9 training molecules."""

from __future__ import annotations

import numpy as np
import pytest

from rtkrun.data import qm9, qm9_render
from rtkrun.metrics import molecules


def _pair(z1: int, z2: int, distance_angstrom: float) -> tuple[np.ndarray, np.ndarray]:
    numbers = np.array([[z1, z2, 0]], np.int8)
    positions = np.zeros((1, 3, 3))
    positions[0, 1, 0] = distance_angstrom
    return numbers, positions


@pytest.mark.parametrize(
    "z1,z2,distance,order",
    [
        (1, 1, 0.74, 1),  # H–H at its length
        (1, 1, 0.839, 1),  # 74 + 10 pm margin, just inside
        (1, 1, 0.841, 0),  # just outside
        (6, 6, 1.54, 1),
        (6, 6, 1.385, 2),  # below 134 + 5 pm
        (6, 6, 1.395, 1),  # above it: single
        (6, 6, 1.20, 3),
        (6, 6, 1.235, 2),  # above 120 + 3 pm: double
        (7, 8, 1.21, 2),  # N–O has no triple bond
        (9, 9, 1.42, 1),
        (6, 9, 1.46, 0),  # 135 + 10 pm = 1.45 Å
    ],
)
def test_bond_order_follows_the_tabulated_lengths_and_margins(z1, z2, distance, order):
    numbers, positions = _pair(z1, z2, distance)
    orders = molecules.bond_orders(numbers, positions)
    assert orders[0, 0, 1] == orders[0, 1, 0] == order
    assert orders[0, 2].sum() == 0 and orders[0, :, 2].sum() == 0  # padding has no bonds


def test_stability_of_hydrogen_and_of_a_broken_molecule():
    numbers, positions = _pair(1, 1, 0.74)
    assert molecules.stability(numbers, positions) == {"atom_stability": 1.0, "mol_stability": 1.0, "n_molecules": 1}
    numbers, positions = _pair(1, 6, 1.09)  # C with one H: H stable, C not
    scores = molecules.stability(numbers, positions)
    assert scores["atom_stability"] == 0.5 and scores["mol_stability"] == 0.0


def test_validity_uses_the_largest_fragment():
    # Two molecules far apart (H2 and H2O-like O with two H): the largest fragment is water.
    numbers = np.array([[8, 1, 1, 1, 1]], np.int8)
    positions = np.array([[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [10, 0, 0], [10.74, 0, 0]]], float)
    assert molecules.smiles_of(numbers, positions) == ["[H]O[H]"]  # hydrogens are explicit atoms, as in EDM


@pytest.fixture(scope="module")
def training_molecules(real_qm9_table):
    return real_qm9_table.take(qm9.split_indices(len(real_qm9_table))["train"][:10_000])


def test_metrics_on_real_training_molecules_reproduce_the_published_data_row(training_molecules):
    """EDM's table, data row: atom 99.0, molecule 95.2, valid 97.7, V×U 97.7 (Hoogeboom et al. 2022, Table 1)."""
    scores = molecules.score_molecules(training_molecules.numbers, training_molecules.positions.astype(np.float64))
    atom, mol, valid, vxu = molecules.PUBLISHED["data (EDM table)"]
    assert abs(100 * scores["mol_stability"] - mol) <= 0.5, scores
    assert abs(100 * scores["validity"] - valid) <= 0.5, scores
    assert abs(100 * scores["valid_x_unique"] - vxu) <= 0.5, scores
    assert 99.0 <= 100 * scores["atom_stability"] <= 99.6, scores  # we measure 99.4; the paper prints 99.0
    novel = molecules.score_molecules(
        training_molecules.numbers[:200], training_molecules.positions[:200].astype(np.float64), reference_smiles=set()
    )
    assert novel["novelty"] == 1.0
    own = set(s for s in molecules.smiles_of(training_molecules.numbers[:200], training_molecules.positions[:200]) if s)
    assert molecules.score_molecules(
        training_molecules.numbers[:200], training_molecules.positions[:200].astype(np.float64), reference_smiles=own
    )["novelty"] == pytest.approx(0.0)


def test_sdf_round_trips_through_rdkit(training_molecules, tmp_path):
    from rdkit import Chem

    numbers, positions = training_molecules.numbers[:5].copy(), training_molecules.positions[:5].astype(np.float64)
    positions[4] *= 0.5  # squeezed: every bond too short, so not stable (and not valid)
    qm9_render.write_sdf(numbers, positions, tmp_path / "m.sdf", {"sampler": "ddim", "nfe": 50, "seed": 3})
    read = [m for m in Chem.SDMolSupplier(str(tmp_path / "m.sdf"), sanitize=False)]
    assert len(read) == 5
    smiles = molecules.smiles_of(numbers, positions)
    stable = molecules.stable_molecules(numbers, molecules.stable_atoms(numbers, positions))
    assert stable[:4].all() and not stable[4]
    for b, mol in enumerate(read):
        n = int((numbers[b] > 0).sum())
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == numbers[b, :n].tolist()
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), positions[b, :n], atol=1e-4)
        props = mol.GetPropsAsDict()
        assert props["index"] == b and props["sampler"] == "ddim" and props["nfe"] == 50 and props["seed"] == 3
        assert props["smiles"] == (smiles[b] or "") and props["valid"] == int(smiles[b] is not None)
        assert props["stable"] == int(stable[b])


def test_the_molecule_grid_carries_its_metrics_title(training_molecules, tmp_path):
    from PIL import Image

    numbers, positions = training_molecules.numbers[:5], training_molecules.positions[:5].astype(np.float64)
    qm9_render.save_grid(numbers, positions, tmp_path / "plain.png")
    qm9_render.save_grid(numbers, positions, tmp_path / "titled.png", title="ddim: atom stability 99.0")
    plain, titled = Image.open(tmp_path / "plain.png"), Image.open(tmp_path / "titled.png")
    assert titled.size == (plain.size[0], plain.size[1] + 28) and titled.text["Title"] == "ddim: atom stability 99.0"
    banner = np.asarray(titled.convert("L"))[:28]
    assert (banner < 128).sum() > 50  # the text is drawn, not only stored as metadata
    np.testing.assert_array_equal(np.asarray(titled)[28:], np.asarray(plain))  # the tiles, moved down


def test_a_collapsed_sample_is_drawn_as_atoms_without_a_bond_tangle(training_molecules, tmp_path):
    """Atoms fallen together are within bond range of many others: drawn as atoms alone and
    labelled "collapsed"; a real molecule keeps its bonds and SMILES."""
    from PIL import Image

    numbers = training_molecules.numbers[:2].copy()
    positions = training_molecules.positions[:2].astype(np.float64).copy()
    positions[1] *= 0.05  # the second molecule collapses onto its centre
    orders = molecules.bond_orders(numbers, positions)
    real, label = qm9_render.depiction(numbers[0], positions[0], orders[0])
    assert real.GetNumBonds() > 0 and label == molecules.smiles_of(numbers[:1], positions[:1])[0]
    collapsed, label = qm9_render.depiction(numbers[1], positions[1], orders[1])
    assert label == "collapsed" and collapsed.GetNumBonds() == 0
    assert collapsed.GetNumAtoms() == int((numbers[1] > 0).sum())
    qm9_render.save_grid(numbers, positions, tmp_path / "grid.png")
    tile = np.asarray(Image.open(tmp_path / "grid.png").convert("L"))[:, 220:440]
    assert (tile < 200).sum() > 100  # the collapsed sample's tile is drawn, not left blank
