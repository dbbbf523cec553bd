"""T7's pieces: the exact 1-D quantiles of projected mixtures, the sliced W2 to the mixture
itself, the step-count search, and `rtkrun search` with its report."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.metrics.mog import projected_quantiles, sliced_w2_to_mixture
from rtkrun.report.t7 import fit_exponent
from rtkrun.step_search import smallest_passing, step_ladder
from tests.conftest import run_cli

LADDER = step_ladder(4096)


def test_projected_quantiles_are_exact():
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    single = GaussianMixture(torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), 0.7)
    q = projected_quantiles(single, directions, 50)
    levels = (torch.arange(50, dtype=torch.float64) + 0.5) / 50
    expected = single.means @ directions.T + 0.7 * directions.norm(dim=1) * torch.from_numpy(norm.ppf(levels))[:, None]
    assert torch.allclose(q, expected, atol=1e-9)
    pair = GaussianMixture(torch.tensor([[3.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64), 0.4, [0.3, 0.7])
    q = projected_quantiles(pair, directions, 50)
    means, scale = pair.means @ directions.T, 0.4 * directions.norm(dim=1)
    cdf = sum(w * torch.from_numpy(norm.cdf(((q - means[k]) / scale).numpy())) for k, w in enumerate((0.3, 0.7)))
    assert torch.allclose(cdf, levels[:, None].expand_as(cdf), atol=1e-10)


def test_sliced_w2_to_mixture_sees_a_shift_and_not_exact_samples():
    gen = torch.Generator().manual_seed(1)
    mixture = GaussianMixture(torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64), 0.3)
    directions = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    exact = mixture.sample(20_000, gen)
    base = sliced_w2_to_mixture(mixture, exact, directions)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64)
    shifted = sliced_w2_to_mixture(mixture, exact + shift, directions)
    expected = math.sqrt(((directions @ shift) ** 2).mean().item())
    # exact samples sit at the n-sample noise level (mode counts fluctuate), a shift adds to it
    assert base < 0.06
    assert expected - 0.01 < shifted < math.sqrt(expected**2 + base**2) + 0.01


def test_search_finds_the_smallest_passing_step_count_and_fits_exponents():
    for threshold in (1, 5, 17, 300, 4096):
        calls = []

        def passes(steps, threshold=threshold, calls=calls):
            calls.append(steps)
            return steps >= threshold

        found, evaluations = smallest_passing(passes, LADDER)
        assert found == min(s for s in LADDER if s >= threshold) and evaluations == len(calls) <= 12
    assert smallest_passing(lambda s: False, LADDER)[0] is None
    assert LADDER[:12] == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64] and LADDER[-1] == 4096 == 2**12
    assert step_ladder(45)[-1] == 45 and step_ladder(44)[-1] == 32
    rows = [{"dim": d, "steps": 3 * d**0.5} for d in (2, 8, 32, 128)]
    assert abs(fit_exponent(rows) - 0.5) < 1e-12


def test_an_ou_horizon_maps_to_its_start_time_and_back():
    from rtkrun.diffusion.grids import ou_horizon, t_max_for_horizon
    from rtkrun.diffusion.schedules import CosineSchedule, LinearSchedule

    for schedule in (CosineSchedule(), LinearSchedule()):
        for horizon in (0.5, 2.0, 5.0):
            t = t_max_for_horizon(schedule, horizon)
            assert 0 < t < 1
            assert ou_horizon(schedule, t) == pytest.approx(horizon, rel=1e-9)
            alpha = schedule.alpha_bar(torch.tensor(t, dtype=torch.float64)).sqrt().item()
            assert alpha == pytest.approx(math.exp(-horizon), rel=1e-9)  # τ = −log α
    # the cosine schedule's own horizon is the log-SNR clamp's, about 15 (issue 15's "about 15")
    assert ou_horizon(CosineSchedule(), 1.0) == pytest.approx(15.0, abs=0.5)


def test_search_command_finds_the_first_passing_step_count_and_report_fits_it(tmp_path):
    """The real command on a small problem: every step count it tried below the one it reports
    fails the target and the one it reports passes (the curve is stored), the report turns two
    dimensions into T7 with an exponent and a figure, and a sampler without steps is refused."""
    import json

    common = ["experiment=t7_mog", "n_samples=300", "search.repeats=1", "search.baseline_repeats=2"]
    common += ["search.directions=16", "search.max_steps=64", "search.horizon=5"]
    for d in (2, 8):
        proc = run_cli(
            "search", *common, f"dataset.dim={d}", f"hydra.run.dir={tmp_path / 'runs' / f'd{d}'}", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
    stamp = (tmp_path / "runs" / "d2" / "metrics.json").stat().st_mtime_ns
    again = run_cli("search", *common, "dataset.dim=2", f"hydra.run.dir={tmp_path / 'runs' / 'd2'}", cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "runs" / "d2" / "metrics.json").stat().st_mtime_ns == stamp  # skipped
    m = json.loads((tmp_path / "runs" / "d2" / "metrics.json").read_text())
    assert m["status"] == "complete" and m["grid"] == "uniform" and m["horizon"] == pytest.approx(5.0, abs=1e-3)
    curve = {int(k): v for k, v in m["curve"].items()}
    assert m["evaluations"] == len(curve) and m["steps"] in curve
    assert curve[m["steps"]] <= 1 + m["tol"] and m["quality_ratio"] == curve[m["steps"]]
    assert all(v > 1 + m["tol"] for k, v in curve.items() if k < m["steps"])
    assert all(v <= 1 + m["tol"] for k, v in curve.items() if k >= m["steps"])  # monotone here
    out = tmp_path / "tables"
    proc = run_cli("report", f"runs={tmp_path / 'runs'}", f"out={out}", f"docs={tmp_path / 't7.md'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = (out / "T7.md").read_text()
    assert "ddpm uniform at horizon 5:" in table and (out / "T7.png").stat().st_size > 0
    page = (tmp_path / "t7.md").read_text()
    assert page.startswith("<!-- generated by `rtkrun report runs=") and table in page and "T7.png" in page
    # the two single runs, merged back into the sweep that makes both (keys sorted)
    assert "rtkrun search -m dataset.dim=2,8 experiment=t7_mog n_samples=300 search.baseline_repeats=2" in page
    refused = run_cli("search", "sampler=dddm", cwd=tmp_path)
    assert refused.returncode == 2 and "has no steps and grid to search" in refused.stderr
    assert not (tmp_path / "outputs" / "search").exists()  # refused at validation: no run directory
