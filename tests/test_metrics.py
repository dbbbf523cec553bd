"""MoG metrics against exact answers."""

import math

import pytest
import torch

from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.metrics.mog import (
    exact_w2,
    mean_recovery,
    mmd,
    mode_weight_tv,
    off_mode_fraction,
    score_samples,
    sliced_w2,
)


def test_sliced_and_exact_w2_of_a_translation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    dirs = torch.eye(3, dtype=torch.float64)
    # Sorted 1-D projections differ by the shift's component: sliced W2² = mean of squares.
    assert sliced_w2(x + shift, x, dirs) == pytest.approx(math.sqrt((shift**2).mean().item()), rel=1e-12)
    assert exact_w2(x + shift, x) == pytest.approx(shift.norm().item(), rel=1e-6)
    assert exact_w2(x, x) == pytest.approx(0.0, abs=1e-6)


def test_mmd_is_zero_in_expectation_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(800, 2, generator=g, dtype=torch.float64) for _ in range(2))
    assert abs(mmd(a, b, [1.0])) < 0.01
    assert mmd(a + 1.0, b, [1.0]) > 0.1  # ≈ 0.19 in closed form for N(0, I) shifted by (1, 1)


def test_mode_weights_off_mode_and_baseline():
    m = GaussianMixture(torch.tensor([[-5.0, 0.0], [5.0, 0.0]], dtype=torch.float64), 0.5, [0.25, 0.75])
    g = torch.Generator().manual_seed(2)
    x = m.sample(20_000, g)
    assert mode_weight_tv(m, x) < 0.01
    only_left = x[x[:, 0] < 0]
    assert mode_weight_tv(m, only_left) == pytest.approx(0.75, abs=1e-12)  # ½(|1 − ¼| + |0 − ¾|)
    assert off_mode_fraction(m, x) == pytest.approx(0.001, abs=0.001)
    assert off_mode_fraction(m, torch.zeros(10, 2, dtype=torch.float64)) == 1.0
    scores = score_samples(m, x[:2000], w2_max_n=300, mmd_max_n=300)
    assert scores["sliced_w2"] < 2 * scores["baseline/sliced_w2"]
    collapsed = score_samples(m, only_left[:2000], w2_max_n=300, mmd_max_n=300)
    assert collapsed["sliced_w2"] > 10 * collapsed["baseline/sliced_w2"]


def test_nonfinite_samples_are_counted_not_averaged():
    m = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), 1.0)
    x = m.sample(100, torch.Generator().manual_seed(0))
    x[3, 1] = float("nan")
    scores = score_samples(m, x, w2_max_n=50, mmd_max_n=50)
    assert scores["nonfinite"] == 1 and math.isnan(scores["sliced_w2"])
    assert math.isfinite(scores["baseline/sliced_w2"])


def test_mean_recovery_symmetric_and_hungarian():
    truth = torch.tensor([[3.0, 0.0]])
    r = mean_recovery(torch.tensor([[0.0, -2.0]]), truth, symmetric=True)
    assert r["angle_deg"] == pytest.approx(90.0) and r["distance"] == pytest.approx(math.sqrt(13))
    r = mean_recovery(-truth, truth, symmetric=True)  # ±μ* are the same mixture
    assert r["angle_deg"] == pytest.approx(0.0, abs=1e-6) and r["distance"] == pytest.approx(0.0)
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    r = mean_recovery(means[[2, 0, 1]] * 1.1, means, symmetric=False)
    assert r["angle_deg"] == pytest.approx(0.0, abs=1e-5) and r["distance"] == pytest.approx(0.1)
