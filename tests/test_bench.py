"""``rtkrun bench``: the tiny preset produces every row of every section (a smoke test of the
harness, not of any speed), its figures are finite, and bad settings fail before any work."""

import json
import math

import pytest

from rtkrun.bench.presets import PRESETS
from rtkrun.bench.sampling import GOALS
from rtkrun.bench.suite import COLUMNS, TITLES
from tests.conftest import run_cli


def _expected_rows(preset: str, datasets: list[str]) -> dict[str, int]:
    cases = [c for c in PRESETS[preset] if c.dataset in datasets]
    return {
        "training": len(cases),
        "sampling": len(cases) * len(GOALS),
        "noise": 2 * len(cases),  # cpu_streams, philox
        # matrix-free for every case, plus the exact chain where the dimension allows it
        "diagnostics": len(cases) + sum(c.exact_max_dim > 0 for c in cases),
        "estimators": 4 * 2 if preset == "tiny" else 4 * 6,  # 4 estimators × the preset's fixed maps
        "egnn": 6 * sum(c.dataset == "qm9" for c in cases),  # 3 layouts × (sampling, training)
        "precision": 2 * len(cases),  # fp32, bf16 (compile rows on CUDA or with compile=on)
    }


@pytest.mark.parametrize(
    "datasets",
    [
        ["mog"],  # every section but the EGNN layouts, which need QM9 (tests/test_egnn.py checks them)
        pytest.param(["mog", "qm9"], marks=pytest.mark.slow),  # + the EGNN rows
        pytest.param(["mog", "qm9", "cifar10"], marks=pytest.mark.slow),  # the U-Net cases are the slow part
    ],
)
def test_bench_tiny_preset_produces_every_row(tmp_path, datasets):
    out = tmp_path / "docs" / "performance.md"
    run_dir = tmp_path / "bench"
    proc = run_cli(
        "bench", "repeats=1", "warmup=0", "device=cpu", f"datasets=[{','.join(datasets)}]", f"out={out}",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((run_dir / "bench.json").read_text())
    assert json.loads(out.with_suffix(".json").read_text())["sections"] == result["sections"]
    expected = _expected_rows("tiny", datasets)
    assert {k: len(v) for k, v in result["sections"].items()} == expected
    for section, rows in result["sections"].items():
        for row in rows:
            for key, _, _ in COLUMNS[section]:
                value = row[key]
                if isinstance(value, float):
                    assert math.isfinite(value) and value >= 0, (section, key, row)
    sampling = result["sections"]["sampling"]
    assert {r["sampler"] for r in sampling} == set(GOALS)
    assert all(r["overhead"] > 0 and r["nfe"] >= 1 and r["goal"] == GOALS[r["sampler"]] for r in sampling)
    # Lanczos stops on a residual that bounds its error; 30 power steps do not get close
    lanczos = [r for r in result["sections"]["estimators"] if r["estimator"].startswith("Lanczos")]
    power = [r for r in result["sections"]["estimators"] if r["estimator"] == "power iteration"]
    assert len(lanczos) == 2 and all(r["rel_error"] < 1e-8 for r in lanczos)
    assert all(p["rel_error"] > 1e3 * q["rel_error"] for p, q in zip(power, lanczos))
    egnn = result["sections"]["egnn"]
    assert [r["layout"] for r in egnn] == ["edges", "pairs", "dense"] * 2 * ("qm9" in datasets)
    assert all(r["speedup_vs_edges"] == 1.0 for r in egnn if r["layout"] == "edges")
    text = out.read_text()
    assert text.startswith("# Performance") and result["machine"]["device"] in text
    for section, rows in result["sections"].items():
        assert TITLES[section] in text
        assert not rows or text.count(f"| {rows[0].get('case', rows[0].get('model'))} |") >= 1
    tables = sum(1 for n in expected.values() if n)  # one header line each; an empty section says so
    assert sum(line.startswith("| ") for line in text.splitlines()) == sum(expected.values()) + tables
    assert text.count("(no rows for these datasets)") == len(expected) - tables
    assert json.loads((run_dir / "metrics.json").read_text())["rows"] == sum(expected.values())


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("preset=huge", "preset='huge' is unknown"),
        ("sections=[training,speed]", "sections=['training', 'speed'] must be a non-empty list of"),
        ("repeats=0", "repeats must be >= 1"),
    ],
)
def test_bench_bad_settings_fail_in_one_line(tmp_path, override, fragment):
    proc = run_cli("bench", override, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "b" / "bench.json").exists()


def test_busy_fraction_counts_overlaps_once_and_gaps_as_idle():
    from rtkrun.bench.timing import busy_fraction

    assert busy_fraction([]) is None
    assert busy_fraction([(0.0, 10.0)]) == 1.0
    # [0, 4] ∪ [2, 6] ∪ [8, 10]: 8 of 10 covered; order does not matter
    assert busy_fraction([(8.0, 10.0), (2.0, 6.0), (0.0, 4.0)]) == pytest.approx(0.8)
    assert busy_fraction([(0.0, 10.0), (1.0, 2.0), (12.0, 13.0)]) == pytest.approx(11 / 13)
