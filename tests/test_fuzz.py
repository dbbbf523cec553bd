"""Property-based fuzzing of the parsers (hypothesis): malformed QM9 xyz files and qm9pack CSV
rows, and random values for every config key, either parse or raise rtkrun's own error type,
never an unrelated exception."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from rtkrun.config import validate
from rtkrun.data.qm9_files import DataError, parse_xyz, read_qm9pack_csv
from rtkrun.errors import RtkrunError
from tests.conftest import compose_cfg

VALID_XYZ = (
    "5\ngdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t0.044749\t-40.47893\t"
    "-40.476062\t-40.475117\t-40.498597\t6.469\n"
    "C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689\n"
    "H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921\n"
    "H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922\n"
    "H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923\n"
    "H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923\n"
    "1341.307\t1341.3284\t1341.365\n"
    "C\tC\n"
    "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4\n"
)
VALID_CSV = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop\n"
    '"dsgdb9nsd_000003.xyz",3,"O","InChI=1S/H2O/h1H2",3,"[2,0,0,1,0]","[\'O\',\'H\',\'H\']",'
    '"[[-0.03,0.97,0.007],[0.21,0.01,0.002],[0.87,1.35,0.0004]]","[-0.38,0.19,0.19]"\n'
)
# Derandomized so CI is repeatable; `pytest -m slow` runs a longer, random search.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _mutate(text: str, data) -> str:
    """Random edits of a valid file: replace a span, delete lines, splice noise, truncate."""
    lines = text.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate", "swap_token"]))
        k = data.draw(st.integers(0, max(len(lines) - 1, 0)))
        noise = data.draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12))
        if not lines:
            lines = [noise]
        elif kind == "replace":
            lines[k] = noise + "\n"
        elif kind == "delete":
            del lines[k]
        elif kind == "insert":
            lines.insert(k, noise + "\n")
        elif kind == "truncate":
            lines = lines[:k]
        else:
            tokens = lines[k].split("\t")
            j = data.draw(st.integers(0, len(tokens) - 1))
            tokens[j] = data.draw(st.sampled_from(["nan", "1*^", "*^3", "Cl", "", "1e999", "-", "29", "30", "0x1"]))
            lines[k] = "\t".join(tokens)
    return "".join(lines)


@FUZZ
@given(st.data())
def test_xyz_parser_raises_only_data_errors(data):
    text = _mutate(VALID_XYZ, data)
    try:
        record = parse_xyz(text, "fuzz.xyz")
    except DataError as e:
        assert "fuzz.xyz" in str(e)
        return
    assert 1 <= len(record.elements) <= 29 and len(record.positions) == len(record.elements)


@FUZZ
@given(st.text(max_size=300))
def test_xyz_parser_on_arbitrary_text(text):
    try:
        parse_xyz(text, "any.xyz")
    except DataError:
        pass


@FUZZ
@given(st.data())
def test_qm9pack_csv_reader_raises_only_data_errors(data):
    text = _mutate(VALID_CSV, data)
    try:
        records = read_qm9pack_csv(io.StringIO(text), "fuzz.csv")
    except DataError as e:
        assert "fuzz.csv" in str(e)
        return
    for r in records:
        assert len(r.elements) == len(r.positions) == len(r.charges)


VALUES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
)


@pytest.fixture(scope="module")
def base_configs():
    return {
        name: OmegaConf.to_container(compose_cfg("train", [f"dataset={name}"]), resolve=True)
        for name in ("mog", "qm9", "cifar10")
    }


@FUZZ
@given(data=st.data())
def test_config_validation_raises_only_config_errors(base_configs, data):
    cfg = dict(base_configs[data.draw(st.sampled_from(sorted(base_configs)))])
    group = data.draw(st.sampled_from(["trainer", "dataset", "model", "schedule", "evaluation"]))
    node = dict(cfg[group])
    key = data.draw(st.sampled_from(sorted(node) + ["not_a_key"]))
    value = data.draw(VALUES)
    node[key] = value
    cfg[group] = node if data.draw(st.integers(0, 9)) else value  # sometimes the whole group is junk
    try:
        run = validate(cfg)
    except RtkrunError:
        return
    # Accepted: the value must have come through as what the schema says it is.
    accepted = getattr(getattr(run, group), key, None)
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(accepted, float) and math.isnan(accepted)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_xyz_parser_long_random_search(data):
    test_xyz_parser_raises_only_data_errors.hypothesis.inner_test(data)
