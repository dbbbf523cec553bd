"""The tanh student (Shah, Chen & Klivans 2023): our DDPM-loss gradient against the seed's
closed-form population gradient, and the two learning regimes of T6 at a size that runs in
seconds."""

from __future__ import annotations

import math

import pytest
import torch

from rtkrun.commands.run import run_command
from rtkrun.data.mog import MogConfig, MogDataset
from rtkrun.diffusion.objectives import LossInputs, Objective, ObjectiveConfig
from rtkrun.diffusion.schedules import SCHEDULES, build_schedule
from rtkrun.models.student import MogStudent, MogStudentConfig
from rtkrun.report.t6 import t6_row
from tests.conftest import compose_cfg


def closed_form_population_gradient(theta, theta_star, n: int, gen: torch.Generator):
    """E_{x ~ N(θ*, I)}[A(x)] with A = (tanh(a)I + tanh'(a)xθᵀ)(tanh(a)θ − tanh(b)θ*), a = θᵀx,
    b = θ*ᵀx: the gradient of ½‖s_θ − ∇log p_t‖² over p_t (the mixture's symmetry reduces it to
    one component), with the x-weighted terms removed by Stein's lemma E[g(x)x] = θ*E[g] + E[∇g],
    leaving tanh, tanh' and tanh'' terms only (derived; the seed's Lemma C.2 without the 2).
    Returns (mean, standard error) per coordinate."""
    x = theta_star + torch.randn(n, theta.numel(), generator=gen, dtype=torch.float64)
    a, b = x @ theta, x @ theta_star
    th, tb = torch.tanh(a), torch.tanh(b)
    d1a, d1b = 1 - th**2, 1 - tb**2
    d2a = -2 * th * d1a
    tt, ts = theta @ theta, theta @ theta_star
    g = d1a * (th * tt - tb * ts)  # E[g(x) x] = θ* E[g] + E[∇g]
    grad_g = (d2a * (th * tt - tb * ts))[:, None] * theta + d1a[:, None] * (
        (d1a * tt)[:, None] * theta - (d1b * ts)[:, None] * theta_star
    )
    terms = (th * th)[:, None] * theta - (th * tb)[:, None] * theta_star + g[:, None] * theta_star + grad_g
    return terms.mean(0), terms.std(0) / math.sqrt(n)


def test_ddpm_loss_gradient_matches_the_closed_form_population_gradient():
    d, t = 16, 0.6
    dataset = MogDataset(MogConfig(dim=d, n_components=2, layout="pair", radius=3.0, component_std=1.0, train_size=1))
    schedule = build_schedule(SCHEDULES["cosine"][0]())
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    model = MogStudent(MogStudentConfig(init_scale=1.0, init_seed=3), dataset.mixture, schedule).double()
    objective = Objective(ObjectiveConfig("eps", fixed_t=t, noise_weighting="edm"), schedule)
    gen = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(40):  # 40 independent batches of the DDPM loss: mean and standard error
        x0 = dataset.fresh_batch(10_000, gen).double()
        model.zero_grad()
        objective(model, LossInputs(x0, torch.arange(len(x0)), 0), gen).backward()
        grads.append(model.mu.grad[0].clone())
    ours = torch.stack(grads)
    ours_mean, ours_se = ours.mean(0), ours.std(0) / math.sqrt(len(grads))
    theta, theta_star = alpha * model.mu.detach()[0], alpha * dataset.mixture.means[0]
    closed, closed_se = closed_form_population_gradient(theta, theta_star, 400_000, gen)
    # our ε loss is (σ²/d)·‖s + ε/σ‖², θ = αμ, and the seed's expression omits the 2 of the square
    factor = 2 * alpha * sigma**2 / d
    se = torch.sqrt(ours_se**2 + (factor * closed_se) ** 2)
    assert ((ours_mean - factor * closed).abs() <= 3 * se).all()
    assert (factor * closed).norm() > 10 * se.norm()  # a test with power: the gradient is well resolved


def _regime(tmp_path, name, t, eta, init, scale, steps):
    schedule = build_schedule(SCHEDULES["cosine"][0]())
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    overrides = [
        "experiment=t6_mog",
        f"trainer.fixed_t={t}",
        f"trainer.eta_seed={eta}",  # the seed's step size; the trainer sets lr from it
        f"trainer.max_steps={steps}",
        f"model.init={init}",
        f"model.init_scale={scale}",
    ]
    run_dir = tmp_path / name
    run_command(compose_cfg("train", overrides), run_dir)
    # run_command does not write .hydra/; t6_row reads the composed config from there
    (run_dir / ".hydra").mkdir()
    from omegaconf import OmegaConf

    OmegaConf.save(compose_cfg("train", overrides), run_dir / ".hydra" / "config.yaml")
    import json

    logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["lr"]
    assert logged == pytest.approx(eta * 16 / (2 * alpha**2 * sigma**2), rel=1e-12)  # η = 2·lr·α²σ²/d
    row = t6_row(run_dir)
    assert row["eta_seed"] == pytest.approx(eta, rel=1e-12)
    return row


def test_eta_seed_needs_one_noise_level():
    from rtkrun.config import validate
    from rtkrun.errors import ConfigError

    with pytest.raises(ConfigError, match="eta_seed sets lr at one noise level"):
        validate(compose_cfg("train", ["trainer.eta_seed=0.3"]))


def test_large_noise_contracts_the_angle_and_small_noise_the_distance(tmp_path):
    large = _regime(tmp_path, "large", 0.8, 0.3, "random", 0.1, 14)
    # power iteration: the angle falls 10x while μ is still far from μ* (|μ*| = 3)
    assert large["angle_min_small_norm"] <= large["angle_start"] / 10
    assert large["distance_at_angle_min"] >= 1.5
    assert abs(large["angle_factor_measured"] / large["angle_factor_power_iteration"] - 1) < 0.1
    small = _regime(tmp_path, "small", 0.2, 0.2, "perturbed", 1.5, 25)
    # gradient EM near μ*: the distance falls 10x
    assert small["distance_end"] <= small["distance_start"] / 10
    assert small["distance_factor_measured"] < 0.9
