"""Regularity diagnostics against float64 brute force and closed forms."""

import pytest
import torch

from rtkrun.diagnostics import hessian as hessian_module
from rtkrun.diagnostics.convexity import bound_chain
from rtkrun.diagnostics.hessian import b_sq_lower_bound, exact_b_sq, hutchinson_frobenius, second_directional
from rtkrun.diagnostics.jacobian import exact_singular_values, lanczos_singular_values, power_iteration_norm
from rtkrun.diffusion.mixture import GaussianMixture


def silu_mlp(d: int, width: int = 32, scale: float = 0.6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(width, d, generator=g, dtype=torch.float64) * scale / d**0.5
    w2 = torch.randn(d, width, generator=g, dtype=torch.float64) * scale / width**0.5
    b1 = torch.randn(width, generator=g, dtype=torch.float64) * 0.1
    return lambda z: torch.nn.functional.silu(z @ w1.T + b1) @ w2.T


def points(d: int, n: int = 4, seed: int = 1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def brute_jacobians(F, z):
    return torch.stack([torch.autograd.functional.jacobian(lambda zi: F(zi[None])[0], zi) for zi in z])


@pytest.mark.parametrize("d", [10, 50])
def test_spectral_norm_and_sigma_min_exact_and_lanczos(d):
    F, z = silu_mlp(d), points(d)
    brute = brute_jacobians(F, z)
    eye = torch.eye(d, dtype=torch.float64)
    L_brute = torch.linalg.matrix_norm(brute, ord=2)
    smin_brute = torch.linalg.svdvals(brute + eye)[:, -1]
    torch.testing.assert_close(exact_singular_values(F, z)[:, 0], L_brute, rtol=1e-6, atol=0)
    torch.testing.assert_close(exact_singular_values(F, z, shift_identity=True)[:, -1], smin_brute, rtol=1e-6, atol=0)
    gen = torch.Generator().manual_seed(0)
    result = lanczos_singular_values(F, z, iters=20, tol=1e-4, generator=gen)
    L_lanczos = result.sigma_max
    assert result.iters <= 20
    torch.testing.assert_close(L_lanczos, L_brute, rtol=0.01, atol=0)
    assert (L_lanczos <= L_brute * (1 + 1e-9)).all()  # Krylov estimates approach from below
    # the residual β_k|p_k| bounds the error of the Ritz value, and the stopping rule used it
    assert ((L_brute - L_lanczos).abs() <= result.residual_max + 1e-12).all()
    if result.iters < 20:
        assert (result.residual_max <= 1e-4 * L_lanczos).all()
    # With a full Krylov space (d steps) the smallest singular value of I + J is exact too.
    full = lanczos_singular_values(F, z, iters=d, tol=0.0, generator=gen, shift_identity=True)
    assert full.iters == d and torch.equal(full.residual_min, torch.zeros_like(full.residual_min))
    torch.testing.assert_close(full.sigma_min, smin_brute, rtol=1e-6, atol=0)
    assert (power_iteration_norm(F, z, iters=50, generator=gen) <= L_brute * (1 + 1e-9)).all()


def test_jacobian_of_the_mog_oracle_matches_its_closed_form():
    m = GaussianMixture(torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [0.0, -2.0, 0.5]], dtype=torch.float64), 0.5)
    alpha, sigma = 0.6, 0.8
    F = lambda x: m.denoise(x, alpha, sigma)  # noqa: E731
    x = points(3, n=6)
    closed = torch.linalg.matrix_norm(m.denoise_jacobian(x, alpha, sigma), ord=2)
    torch.testing.assert_close(exact_singular_values(F, x)[:, 0], closed, rtol=1e-10, atol=0)


def test_b_sq_exact_matches_a_loop_and_is_bracketed():
    d = 6
    F, z = silu_mlp(d, scale=1.5), points(d, n=3)
    b_sq, frob_sq = exact_b_sq(F, z)
    for b, zb in enumerate(z):
        total_op, total_f = 0.0, 0.0
        for i in range(d):
            h = torch.autograd.functional.hessian(lambda zi, i=i: F(zi[None])[0, i], zb)
            total_op += torch.linalg.eigvalsh(h).abs().max().item() ** 2
            total_f += (h**2).sum().item()
        assert b_sq[b].item() == pytest.approx(total_op, rel=1e-10)
        assert frob_sq[b].item() == pytest.approx(total_f, rel=1e-10)
    gen = torch.Generator().manual_seed(0)
    mean, se = hutchinson_frobenius(F, z, probes=400, generator=gen)
    assert ((mean - frob_sq).abs() <= 3 * se).all(), (mean, se, frob_sq)
    lower = b_sq_lower_bound(F, z, generator=gen)
    assert (lower <= b_sq * (1 + 1e-9)).all() and (lower > 0.2 * b_sq).all()


def _loop_probes(F, z, probes, restarts, steps, seed):
    """Hutchinson's pairs and the B_sq ascent one probe at a time, with autograd: what the
    vmapped estimators must reproduce."""
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(probes):
        u = torch.randint(0, 2, z.shape, generator=gen).to(z) * 2 - 1
        v = torch.randint(0, 2, z.shape, generator=gen).to(z) * 2 - 1
        draws.append((second_directional(F, z, u, v) ** 2).sum(1))
    best = torch.zeros(z.shape[0], dtype=z.dtype)
    for _ in range(restarts):
        u = torch.randn(z.shape, generator=gen, dtype=z.dtype)
        for _ in range(steps + 1):
            u = (u / u.norm(dim=1, keepdim=True)).detach().requires_grad_(True)
            value = (second_directional(F, z, u, u) ** 2).sum(1)
            (u,) = torch.autograd.grad(value.sum(), u)
            best = torch.maximum(best, value.detach())
    stack = torch.stack(draws)
    return stack.mean(0), stack.std(0) / probes**0.5, best


@pytest.mark.parametrize("elements", [1, 1 << 16])  # one probe per call, and all in one
def test_vmapped_probes_equal_a_loop_over_them(monkeypatch, elements):
    monkeypatch.setattr(hessian_module, "PROBE_ELEMENTS", elements)
    F, z = silu_mlp(5, scale=1.5), points(5, n=3)
    mean, se, best = _loop_probes(F, z, probes=7, restarts=3, steps=4, seed=2)
    gen = torch.Generator().manual_seed(2)
    torch.testing.assert_close(hutchinson_frobenius(F, z, probes=7, generator=gen), (mean, se), rtol=1e-12, atol=0)
    torch.testing.assert_close(b_sq_lower_bound(F, z, restarts=3, steps=4, generator=gen), best, rtol=1e-12, atol=0)


def test_every_link_of_the_chain_holds():
    d = 8
    gen = torch.Generator().manual_seed(3)
    for scale in (0.3, 1.0, 2.0):
        F = silu_mlp(d, scale=scale, seed=int(scale * 10))
        z = torch.randn(5, d, generator=gen, dtype=torch.float64)
        x = z + F(z) + 0.3 * torch.randn(5, d, generator=gen, dtype=torch.float64)  # small residuals
        chain = bound_chain(F, x, z, sigma=0.7)
        tol = 1e-9
        assert (chain["true"] >= chain["link_sigma_min"] - tol).all()
        assert (chain["link_sigma_min"] >= chain["margin"] - tol).all()
        assert (chain["margin"] >= chain["margin_frobenius"] - tol).all()


def test_the_papers_margin_can_claim_convexity_that_is_false():
    # F(z) = h z²/2 in 1-D at z = 0 with x = 3: L = 0, R = 3, B_sq = h² = 0.25, and
    # σ²g'' = 1 + r·h = 1 − 1.5 < 0, while the paper's 1 − R·B_sq = 0.25 > 0.
    h = 0.5
    F = lambda z: 0.5 * h * z**2  # noqa: E731
    z = torch.zeros(1, 1, dtype=torch.float64)
    x = torch.full((1, 1), 3.0, dtype=torch.float64)
    chain = bound_chain(F, x, z, sigma=1.0)
    assert chain["paper_margin"].item() == pytest.approx(0.25)
    assert chain["true"].item() == pytest.approx(-0.5)
    assert chain["margin"].item() == pytest.approx(-0.5)  # the corrected form is tight here


def test_diagnose_command_writes_points_summaries_and_histograms(tmp_path):
    from rtkrun.commands.run import run_command
    from tests.conftest import compose_cfg

    train_dir, diag_dir = tmp_path / "train", tmp_path / "diag"
    run_command(compose_cfg("train", ["trainer.max_steps=200", "~evaluation.samplers"]), train_dir)
    overrides = [f"ckpt={train_dir}", "diagnostics.n_points=8", "diagnostics.noise_levels=[0.2,0.8]"]
    metrics = run_command(compose_cfg("diagnose", overrides), diag_dir)
    lines = (diag_dir / "diagnostics" / "points.csv").read_text().splitlines()
    # 2 data-derived levels + the DDDM trajectory (2 levels x 3 iterations), 8 points each
    assert len(lines) == 1 + 8 * (2 + 6) and metrics["points"] == 64
    assert (diag_dir / "diagnostics" / "histograms.png").is_file()
    for key in ("diag/data/t=0.2/L/median", "diag/data/t=0.8/certified", "diag/trajectory/dddm/t=1/paper_false_claims"):
        assert key in metrics
    header = lines[0].split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        assert float(row["true"]) >= float(row["link_sigma_min"]) - 1e-8 >= float(row["margin"]) - 2e-8
    from rtkrun.report.t3 import diagnose_rows

    rows = diagnose_rows(diag_dir)
    assert {(r["source"], r["t"]) for r in rows} >= {("data", 0.2), ("data", 0.8), ("trajectory/dddm", 1.0)}
    assert all(0.0 <= r["certified"] <= 1.0 for r in rows)


@pytest.mark.parametrize("d,iters,rtol", [(10, 10, 1e-8), (50, 50, 1e-6), (50, 25, 0.05)])
def test_lanczos_curvatures_match_the_exact_chain(d, iters, rtol):
    from rtkrun.diagnostics.convexity import lanczos_curvatures

    F = silu_mlp(d, scale=1.2)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(3, d, generator=gen, dtype=torch.float64)
    x = z + F(z) + 0.5 * torch.randn(3, d, generator=gen, dtype=torch.float64)
    exact = bound_chain(F, x, z, sigma=0.5)
    approx = lanczos_curvatures(F, x, z, sigma=0.5, iters=iters, generator=gen)
    # With a full Krylov space (iters = d) the extremes are exact; with half of it, λ_min of ∇²g
    # (the interior end of the spectrum for Lanczos) is within a few percent.
    torch.testing.assert_close(approx["weighted_hessian"], exact["weighted_hessian"], rtol=max(rtol, 1e-8), atol=1e-10)
    torch.testing.assert_close(approx["true"], exact["true"], rtol=rtol, atol=1e-8)
    if iters == d:
        torch.testing.assert_close(approx["sigma_min"], exact["sigma_min"], rtol=1e-5, atol=1e-8)


def test_matrix_free_chain_agrees_with_the_exact_chain_and_brackets_b_sq():
    from rtkrun.diagnostics.convexity import matrix_free_chain

    d = 10
    F = silu_mlp(d, scale=1.2)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, d, generator=gen, dtype=torch.float64)
    x = z + F(z) + 0.3 * torch.randn(4, d, generator=gen, dtype=torch.float64)
    exact = bound_chain(F, x, z, sigma=0.5)
    free = matrix_free_chain(
        F, x, z, sigma=0.5, iters=d, tol=1e-12, probes=400, restarts=4, ascent_steps=30, generator=gen
    )
    for key in ("L", "sigma_min", "R", "weighted_hessian", "true", "link_sigma_min"):
        torch.testing.assert_close(free[key], exact[key], rtol=1e-6, atol=1e-9, msg=key)
    assert (free["L_residual"] <= 1e-12 * free["L"] + 1e-12).all()
    # the bracket: ascent lower bound ≤ B_sq ≤ Σ‖H_i‖²_F, whose estimate is within 3 s.e.
    assert (free["B_sq"] <= exact["B_sq"] * (1 + 1e-9)).all()
    # sup_u Σ_i (uᵀH_i u)² sits below Σ_i ‖H_i‖²_op (one u for every i); the ascent must beat a
    # random search over 4,000 unit vectors on the exact Hessians
    from rtkrun.diagnostics.hessian import exact_hessians

    hess = exact_hessians(F, z)  # (B, d_out, d, d)
    u = torch.randn(4000, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    random_best = torch.einsum("ud,bidk,uk->bui", u, hess, u).pow(2).sum(-1).amax(1)
    assert (free["B_sq"] >= random_best * (1 - 1e-6)).all()
    assert ((free["frobenius_sq"] - exact["frobenius_sq"]).abs() <= 3 * free["frobenius_se"]).all()
    # the conservative certificate is never more optimistic than the exact corrected margin
    assert (free["margin"] <= exact["margin"] + 1e-9).all()
    assert (free["paper_margin"] >= exact["paper_margin"] - 1e-9).all()


def test_diagnose_lanczos_estimator_matches_exact_on_the_mog(tmp_path):
    from rtkrun.commands.run import run_command
    from tests.conftest import compose_cfg

    train_dir = tmp_path / "train"
    run_command(compose_cfg("train", ["trainer.max_steps=100", "~evaluation.samplers"]), train_dir)
    base = [f"ckpt={train_dir}", "diagnostics.n_points=6", "diagnostics.noise_levels=[0.3]", "diagnostics.probes=64"]
    tables = {}
    for estimator in ("exact", "lanczos"):
        out = tmp_path / estimator
        metrics = run_command(compose_cfg("diagnose", [*base, f"diagnostics.estimator={estimator}"]), out)
        assert metrics["estimator"] == estimator
        lines = (out / "diagnostics" / "points.csv").read_text().splitlines()
        header = lines[0].split(",")
        tables[estimator] = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert len(tables["exact"]) == len(tables["lanczos"]) == 6 * (1 + 6)
    for e, m in zip(tables["exact"], tables["lanczos"]):
        for key in ("L", "sigma_min", "R", "true"):  # d = 2: two Lanczos steps span everything
            assert float(m[key]) == pytest.approx(float(e[key]), rel=1e-6, abs=1e-9), key
        assert float(m["B_sq"]) <= float(e["B_sq"]) * (1 + 1e-9) + 1e-12
        assert float(m["margin"]) <= float(e["margin"]) + 1e-9


def test_torch_s_own_jit_deprecation_notice_does_not_reach_the_console():
    """torch's first jvp imports decompositions through torch.jit.script and warns about it;
    rtkrun imports them silently first, so a jvp afterwards warns about nothing."""
    import warnings

    import rtkrun.diagnostics.jacobian  # noqa: F401

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.func.jvp(torch.sin, (torch.ones(3),), (torch.ones(3),))
    assert [str(w.message) for w in caught] == []


def test_diagnose_console_summary_gives_medians_and_percentages_per_level():
    from rtkrun.commands.diagnose import summary_lines

    rows = [
        {"source": "data", "t": 0.2, "L": L, "R": R, "margin": m, "true": tr}
        for L, R, m, tr in [(0.5, 1.0, 2.0, 3.0), (0.7, 2.0, -1.0, 1.0), (0.9, 3.0, 24000.0, -1.0)]
    ]
    rows.append({"source": "trajectory/dddm", "t": 1.0, "L": 1.5, "R": 0.1, "margin": -3.0, "true": -2.0})
    header, data, trajectory = summary_lines(rows)
    assert header.split()[:4] == ["source", "t", "n", "median"]
    assert data.split() == ["data", "0.2", "3", "0.7", "2", "2", "67%", "67%"]
    assert trajectory.split() == ["trajectory/dddm", "1", "1", "1.5", "0.1", "-3", "0%", "0%"]
