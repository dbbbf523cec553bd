"""QM9 data: the EDM split on the real qm9pack data, both readers, the cache, the sampling
start and every bad-input path."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from rtkrun.data import qm9
from rtkrun.data.qm9_files import DataError, parse_xyz, read_figshare
from rtkrun.schemas.data import QM9_SPLITS
from rtkrun.seeding import SampleNoise
from tests.qm9_fixture import build_qm9_fixture, pick_molecules, xyz_text


@pytest.fixture(scope="module")
def real_table(real_qm9_table):
    return real_qm9_table


def test_edm_split_reproduces_the_published_training_histogram(real_table):
    assert len(real_table) == 130_831
    splits = qm9.split_indices(len(real_table))
    assert [len(splits[k]) for k in QM9_SPLITS] == [100_000, 17_748, 13_083]
    train = real_table.take(splits["train"])
    counts = np.bincount(train.n_atoms, minlength=30)
    assert round(float(train.n_atoms.mean()), 2) == 18.03
    expected = {3: 1, 4: 4, 5: 5, 6: 9, 7: 16, 8: 49, 9: 124, 10: 362, 19: 13832, 29: 25}
    assert {k: int(counts[k]) for k in expected} == expected
    per_element = {z: int((train.numbers == z).sum()) for z in (1, 6, 7, 8, 9)}
    assert per_element == {1: 923_537, 6: 635_559, 7: 101_476, 8: 140_202, 9: 2_323}


def test_figshare_tarball_reads_the_same_molecules_as_qm9pack(real_table, tmp_path):
    picked = pick_molecules(real_table, 12)
    dropped = int(picked.qm9_index[5])
    tarball = build_qm9_fixture(tmp_path / "qm9", picked, uncharacterised=dropped)
    table = read_figshare(tarball)
    keep = picked.qm9_index != dropped
    expected = picked.take(np.flatnonzero(keep))
    np.testing.assert_array_equal(table.qm9_index, expected.qm9_index)
    np.testing.assert_array_equal(table.numbers, expected.numbers)
    np.testing.assert_array_equal(table.smiles, expected.smiles)
    np.testing.assert_allclose(table.charges, expected.charges, atol=1e-6)
    star = table.positions[0, 0, 0]  # written as 1.000000*^-6
    assert star == pytest.approx(1e-6, rel=1e-6)
    np.testing.assert_allclose(table.positions[0, 1:], expected.positions[0, 1:], atol=1e-9)
    np.testing.assert_allclose(table.positions[1:], expected.positions[1:], atol=1e-9)
    # The directory layout (the tarball unpacked) reads identically.
    folder = tmp_path / "unpacked"
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, filter="data")
    (folder / "uncharacterized.txt").write_text((tarball.parent / "uncharacterized.txt").read_text())
    same = read_figshare(folder)
    for key in ("qm9_index", "numbers", "positions", "charges", "smiles"):
        np.testing.assert_array_equal(getattr(same, key), getattr(table, key))


def test_parse_reads_mathematica_exponents():
    text = "1\ngdb 7\t0\nC\t1.5*^-3\t-2.0*^2\t0.0\t-1.25*^-1\n1.0\nC\tC\nInChI\tInChI\n"
    record = parse_xyz(text, "x.xyz")
    assert record.index == 7 and record.positions[0] == [1.5e-3, -200.0, 0.0] and record.charges == [-0.125]


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda lines: lines.__setitem__(3, "C\t0.1\t0.2\n"), "line 4: expected 'element x y z charge'"),
        (lambda lines: lines.__setitem__(2, "Cl\t0.1\t0.2\t0.3\t0.0"), "line 3: unknown element 'Cl'"),
        (lambda lines: lines.__setitem__(4, "C\t0.1\tabc\t0.3\t0.0"), "line 5: 'abc' is not a number"),
        (lambda lines: lines.__setitem__(0, "30"), "line 1: 30 atoms"),
        (lambda lines: lines.__setitem__(1, "xyz 1"), "line 2: expected 'gdb <index> ...'"),
        (lambda lines: lines.__delitem__(slice(4, None)), "the file is truncated"),
    ],
)
def test_malformed_xyz_names_the_file_and_line(real_table, edit, message):
    lines = xyz_text(real_table, 20).splitlines()
    edit(lines)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as err:
        parse_xyz("\n".join(lines), "dsgdb9nsd_000021.xyz")
    assert "dsgdb9nsd_000021.xyz" in str(err.value)


def test_truncated_tarball_fails_clearly_and_writes_no_cache(real_table, tmp_path, monkeypatch):
    monkeypatch.setenv("RTKRUN_CACHE", str(tmp_path / "cache"))
    tarball = build_qm9_fixture(tmp_path / "qm9", pick_molecules(real_table, 40))
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        qm9.QM9Dataset(qm9.QM9Config(source="figshare", root=str(tarball)))
    assert str(tarball) in str(err.value)
    assert not list((tmp_path / "cache").glob("qm9_*"))


def test_missing_source_says_where_the_files_go(tmp_path, monkeypatch):
    monkeypatch.setenv("RTKRUN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="does not exist: point dataset.root"):
        qm9.QM9Dataset(qm9.QM9Config(source="figshare", root=str(tmp_path / "nowhere")))
    folder = tmp_path / "no_list"
    folder.mkdir()
    (folder / "dsgdb9nsd_000001.xyz").write_text("1\n")
    with pytest.raises(DataError, match="uncharacterized.txt is missing"):
        read_figshare(folder)


def test_cache_is_used_verified_and_rebuilt_when_corrupt(real_table, tmp_path, monkeypatch):
    monkeypatch.setenv("RTKRUN_CACHE", str(tmp_path / "cache"))
    tarball = build_qm9_fixture(tmp_path / "qm9", pick_molecules(real_table, 20))
    cfg = qm9.QM9Config(source="figshare", root=str(tarball))
    first = qm9.load_table(cfg)
    (cache,) = (tmp_path / "cache").glob("qm9_figshare_*.npz")
    reads = []
    monkeypatch.setattr(qm9, "read_figshare", lambda root: reads.append(root) or first)
    np.testing.assert_array_equal(qm9.load_table(cfg).positions, first.positions)
    assert reads == []  # served from the cache
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache.write_bytes(bytes(data))
    np.testing.assert_array_equal(qm9.load_table(cfg).positions, first.positions)
    assert len(reads) == 1  # the damaged cache was noticed and rebuilt


def test_encoding_centres_positions_and_scales_features(real_table):
    table = real_table.take(np.arange(50))
    x = qm9.encode(table)
    mask = torch.from_numpy(table.numbers > 0)
    assert torch.equal(qm9.mask_of(x), mask)
    assert (x[~mask] == 0).all()
    com = (x[..., :3] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-5
    one_hot = x[..., 3:8][mask]
    assert torch.equal(one_hot.sum(-1), torch.full((int(mask.sum()),), 0.25))
    z = x[..., 8][mask]
    assert torch.allclose(z, torch.from_numpy(table.numbers[table.numbers > 0]).float() / 10)
    # The methane row: C then four H, positions relative to their mean.
    first = torch.from_numpy(table.positions[0, :5]).double()
    assert torch.allclose(x[0, :5, :3].double(), first - first.mean(0), atol=1e-6)


def test_sampling_start_draws_atom_counts_from_the_prior_in_the_zero_com_space(real_table, tmp_path, monkeypatch):
    monkeypatch.setenv("RTKRUN_CACHE", str(tmp_path / "cache"))
    tarball = build_qm9_fixture(tmp_path / "qm9", pick_molecules(real_table, 40))
    ds = qm9.QM9Dataset(qm9.QM9Config(source="figshare", root=str(tarball)))
    noise = SampleNoise.for_range(0, 0, 4000)
    x_T, space, projected = ds.sampling_start(noise)
    counts = space.mask.sum(1).numpy()
    freq = np.bincount(counts, minlength=30) / len(counts)
    assert np.abs(freq - ds.atom_count_prior).max() < 0.03  # 4,000 draws: 3 standard errors at p = 0.25
    assert (freq[ds.atom_count_prior == 0] == 0).all()
    com = (x_T[..., :3] * space.mask[..., None]).sum(1)
    assert com.abs().max() < 1e-5 and (x_T[~space.mask] == 0).all()
    again = projected.randn(*ds.sample_shape)
    assert (again[~space.mask] == 0).all() and (again[..., :3].sum(1)).abs().max() < 1e-5
    # Variance of the projected noise: (n − 1)/n per position coordinate, 1 per feature.
    n = space.mask.sum(1, keepdim=True)
    pos_var = (x_T[..., :3] ** 2).sum((1, 2)) / (3 * (n[:, 0] - 1)).clamp(min=1)
    assert abs(float(pos_var[n[:, 0] > 1].mean()) - 1.0) < 0.02
    # Sample i does not depend on the batch it is drawn in.
    part_noise = SampleNoise(0, range(10, 20))
    part, part_space, _ = ds.sampling_start(part_noise)
    assert torch.equal(part, x_T[10:20]) and torch.equal(part_space.mask, space.mask[10:20])


def test_a_cache_file_is_a_source_elsewhere_and_a_bad_one_is_named(real_table, tmp_path, monkeypatch):
    """source=npz: the QM9 cache copied to a machine without qm9pack (the GPU bench's route)
    serves the same molecules; a file that is not a table stops with the path and the fix."""
    from rtkrun.bench.presets import PRESETS, Parts
    from rtkrun.errors import RtkrunError

    monkeypatch.setenv("RTKRUN_CACHE", str(tmp_path / "cache"))
    tarball = build_qm9_fixture(tmp_path / "qm9", pick_molecules(real_table, 20))
    built = qm9.load_table(qm9.QM9Config(source="figshare", root=str(tarball)))
    (cache,) = (tmp_path / "cache").glob("qm9_figshare_*.npz")
    copied = tmp_path / "elsewhere" / "molecules.npz"
    copied.parent.mkdir()
    copied.write_bytes(cache.read_bytes())
    table = qm9.load_table(qm9.QM9Config(source="npz", root=str(copied)))
    assert qm9.table_digest(table) == qm9.table_digest(built) and len(table.numbers) == 20
    data = bytearray(copied.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copied.write_bytes(bytes(data))
    with pytest.raises(RtkrunError, match=r"molecules\.npz is not a molecule table .*dataset\.source=qm9pack"):
        qm9.load_table(qm9.QM9Config(source="npz", root=str(copied)))
    with pytest.raises(RtkrunError, match="source=npz needs dataset.root"):
        qm9.QM9Config(source="npz")
    copied.write_bytes(cache.read_bytes())
    case = next(c for c in PRESETS["tiny"] if c.dataset == "qm9")
    parts = Parts(case, torch.device("cpu"), molecules=str(copied))
    try:
        assert (parts.run.dataset.source, parts.run.dataset.root) == ("npz", str(copied))
    finally:
        parts.close()


def test_the_bulk_csv_parse_reads_what_the_careful_one_reads_and_leaves_errors_to_it():
    """read_qm9pack parses each CSV column by column; on the first 3,000 rows of every part the
    table equals the row-by-row reader's, and a damaged row is handed to the careful reader,
    whose error names the line."""
    import itertools

    from rtkrun.data.qm9_files import FIELDS, pack, qm9pack_files, read_qm9pack_csv, read_qm9pack_table

    for path in qm9pack_files():
        with path.open(newline="") as f:
            head = "".join(itertools.islice(f, 3001))
        fast = read_qm9pack_table(io.StringIO(head), str(path))
        careful = pack(read_qm9pack_csv(io.StringIO(head), str(path)), str(path))
        for key in FIELDS:
            assert np.array_equal(getattr(fast, key), getattr(careful, key)), (path.name, key)
    lines = head.splitlines(keepends=True)
    lines[5] = lines[5].replace("],[", "],[x", 1)  # a coordinate that is not a number, on line 6
    with pytest.raises(DataError, match=r"line 6: 'x"):
        read_qm9pack_table(io.StringIO("".join(lines)), "damaged.csv")
