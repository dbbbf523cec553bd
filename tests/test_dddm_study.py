"""T8, the DDDM training study: the objective's variants, the one-step rows and their teachers,
the fixed-point profile, snapshots, and the table built from run directories."""

import csv
import json
from pathlib import Path

import pytest
import torch

from rtkrun import runs
from rtkrun.config import validate
from rtkrun.diagnostics.fixed_point import fixed_point_profile
from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.diffusion.objectives import EstimateBuffer, LossInputs, Objective, ObjectiveConfig, OneStepPairs
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.models.oracle import MogFlowOracle, MogFlowOracleConfig
from rtkrun.report.t8 import variant_label
from tests.conftest import compose_cfg, rtkrun_in_process

VARIANTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "dddm_variant").glob("*.yaml"))


def test_fixed_point_profile_of_linear_maps_is_exact():
    gen = torch.Generator().manual_seed(0)
    d = 5
    A = 0.3 * torch.randn(d, d, generator=gen, dtype=torch.float64)
    z0, x = (torch.randn(64, d, generator=gen, dtype=torch.float64) for _ in range(2))
    profile = fixed_point_profile(lambda z, c: z @ A.T + c, z0, context=(x,))
    norm = float(torch.linalg.matrix_norm(A, 2))
    assert profile["L_start"] == pytest.approx(norm, rel=1e-9)
    assert profile["L_end"] == pytest.approx(norm, rel=1e-9)
    # f = c·Q z + x with Q orthogonal: every fixed-point step is exactly c times the last
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    profile = fixed_point_profile(lambda z, c: 0.6 * z @ Q.T + c, z0, context=(x,))
    assert profile["contraction"] == pytest.approx(0.6, rel=1e-9)
    assert profile["L_start"] == pytest.approx(0.6, rel=1e-9)


class _Affine(torch.nn.Module):
    """x0_hat = 0.5·x_t + 0.25·z + 1 (z = None reads as 0): predictable buffer writes."""

    accepts_estimate_mask = True

    def forward(self, x_t, t, z=None, estimate_mask=None):
        z = torch.zeros_like(x_t) if z is None else z
        if estimate_mask is not None:
            z = torch.where(estimate_mask[:, None], z, torch.zeros_like(z))
        return 0.5 * x_t + 0.25 * z + 1.0


def _schedule() -> VPSchedule:
    from rtkrun.config import typed_group
    from rtkrun.diffusion.schedules import build_schedule

    return build_schedule(typed_group("schedule", {"name": "cosine"}))


@pytest.mark.parametrize("update", ["estimate", "clean"])
def test_buffer_update_writes_the_estimate_or_the_clean_example(update):
    x0, index = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([4, 0, 7, 2, 9, 5])
    buffer = EstimateBuffer(10, (2,), torch.Generator().manual_seed(2), "cpu")
    before = buffer.z.clone()
    objective = Objective(
        ObjectiveConfig("dddm", null_estimate_prob=0.0, buffer_update=update, noise_weighting="edm"),
        _schedule(),
        buffer=buffer,
    )
    gen = torch.Generator().manual_seed(3)
    objective(_Affine(), LossInputs(x0, index, epoch=1), gen)
    if update == "clean":  # the official code's write: the example itself
        assert torch.equal(buffer.z[index], x0)
    else:  # the paper's: the network's prediction from the estimate it read
        replay = torch.Generator().manual_seed(3)  # the objective's draws: t, then the noise
        t = objective.sample_t(6, replay, "cpu")
        alpha, sigma = _schedule().alpha_sigma(t)
        eps = torch.randn(x0.shape, generator=replay)
        x_t = alpha.float()[:, None] * x0 + sigma.float()[:, None] * eps
        assert torch.allclose(buffer.z[index], 0.5 * x_t + 0.25 * before[index] + 1.0, atol=1e-6)


def _mixture_pairs(refresh: bool, calls: list[int]) -> tuple[OneStepPairs, object]:
    mixture = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), 0.3, torch.tensor([0.3, 0.7]))
    oracle = MogFlowOracle(MogFlowOracleConfig(ode_steps=40), mixture, _schedule())

    def teacher(x_T, space):
        assert space is None
        calls.append(len(x_T))
        return oracle(x_T, torch.ones(len(x_T)))

    return OneStepPairs(16, (2,), torch.Generator().manual_seed(0), "cpu", refresh), teacher


def test_flow_map_objective_is_zero_at_the_flow_map_and_solves_it_once():
    calls: list[int] = []
    pairs, teacher = _mixture_pairs(False, calls)
    objective = Objective(
        ObjectiveConfig("flow_map", noise_weighting="edm"), _schedule(), one_step_teacher=teacher, one_step_pairs=pairs
    )
    exact = teacher(pairs.x_T, None)
    calls.clear()

    class FlowMap(torch.nn.Module):  # the exact map, whatever z is
        def forward(self, x_t, t, z=None):
            return exact[(pairs.x_T[:, None] == x_t[None]).all(-1).int().argmax(0)]

    x0, index = torch.zeros(8, 2), torch.arange(8) * 2
    for epoch in range(3):
        loss = objective(FlowMap(), LossInputs(x0, index, epoch), torch.Generator().manual_seed(epoch))
        assert float(loss) < 1e-10
        zero = objective(lambda x_t, t, z: torch.zeros_like(x_t), LossInputs(x0, index, epoch), torch.Generator())
        assert float(zero) > 0.05
    assert calls == [8]  # the exact teacher is solved once, for the 8 examples ever drawn


def test_self_distillation_solves_each_drawn_row_once_per_epoch_and_masked_rows_match_full_rows():
    calls: list[int] = []
    pairs, teacher = _mixture_pairs(True, calls)
    objective = Objective(
        ObjectiveConfig("dddm", one_step_prob=0.5, noise_weighting="edm"),
        _schedule(),
        one_step_teacher=teacher,
        one_step_pairs=pairs,
    )
    x0, index = torch.randn(8, 2), torch.arange(8)
    batch = LossInputs(x0, index, epoch=0)
    full = objective._one_step(_Affine(), x0, batch, torch.Generator().manual_seed(5))
    rows = torch.tensor([True, False, True, True, False, False, True, False])
    masked = objective._one_step(_Affine(), x0, batch, torch.Generator().manual_seed(5), rows)
    assert torch.equal(masked[~rows], torch.zeros(4))
    assert torch.allclose(masked[rows], full[rows])
    assert calls == [8]  # the second call found its rows solved in this epoch
    later = LossInputs(x0[:4], torch.arange(8, 12), epoch=0)
    objective._one_step(_Affine(), later.x0, later, torch.Generator(), torch.tensor([True, False, True, False]))
    assert calls == [8, 2]  # only the rows used, only the ones not yet solved
    objective._one_step(_Affine(), x0, LossInputs(x0, index, epoch=1), torch.Generator(), rows)
    assert calls == [8, 2, 4]  # a new epoch: the EMA teacher moved, so drawn rows are solved again
    assert pairs.solved.tolist() == [1, 0, 1, 1, 0, 0, 1, 0, 0, -1, 0, -1, -1, -1, -1, -1]
    done = pairs.solved >= 0
    torch.testing.assert_close(pairs.target[done], teacher(pairs.x_T[done], None))  # this teacher is fixed


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_dddm_variant_composes_into_the_t8_experiment(variant):
    run = validate(compose_cfg("train", ["experiment=t8_mog", f"dddm_variant={variant}"]))
    assert run.trainer.snapshot_epochs == [1, 3, 10, 30, 100]
    assert len(run.evaluation.samplers) == 9


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["trainer.objective=x0", "trainer.one_step_prob=0.5"], "one_step_prob"),
        (["trainer.snapshot_epochs=[0]"], "snapshot_epochs"),
        (["trainer.buffer_update=x0"], "buffer_update"),
        (["evaluation.fixed_point_t=0"], "fixed_point_t"),
    ],
)
def test_bad_study_settings_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate(compose_cfg("train", overrides))


TINY = [
    "experiment=t8_mog",
    "dataset.train_size=64",
    "trainer.batch_size=32",
    "trainer.max_steps=6",
    "trainer.log_every=3",
    "trainer.warmup_steps=0",
    "trainer.snapshot_epochs=[1,2]",
    "trainer.one_step_teacher_steps=3",
    "evaluation.n_samples=100",
    "evaluation.batch_size=100",
    "evaluation.fixed_point_points=8",
    "~evaluation.samplers",
    "+evaluation.samplers={dddm1:{name:dddm},ddim2:{name:ddim,steps:2}}",
]


def test_t8_runs_keep_snapshots_evaluate_them_and_report_builds_the_table(tmp_path):
    for variant in ("self_distill", "distill"):
        proc = rtkrun_in_process("train", *TINY, f"dddm_variant={variant}", f"hydra.run.dir=t8/{variant}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        run_dir = tmp_path / "t8" / variant
        assert sorted(runs.snapshot_paths(run_dir)) == [1, 2]
        assert runs.load_checkpoint(runs.snapshot_path(run_dir, 1))["step"] == 2  # 2 steps per epoch
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for prefix in ("eval", "snapshot/epoch=1", "snapshot/epoch=2"):
            assert metrics[f"{prefix}/dddm1/nfe"] == 1
            assert metrics[f"{prefix}/ddim2/sliced_w2"] > 0
            assert 0 <= metrics[f"{prefix}/fixed_point/L_start"] < 100
    final = "trainer.snapshot_epochs=[1,3]"  # epoch 3 ends at step 6: the final model, evaluated once
    proc = rtkrun_in_process("train", *TINY, "dddm_variant=distill", final, "hydra.run.dir=t8f", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    keys = json.loads((tmp_path / "t8f" / "metrics.json").read_text())
    assert "snapshot/epoch=1/dddm1/nfe" in keys and not any(k.startswith("snapshot/epoch=3/") for k in keys)
    snap = runs.snapshot_path(tmp_path / "t8" / "distill", 2)
    proc = rtkrun_in_process("sample", f"ckpt={snap}", "sampler=dddm", "n_samples=50", "hydra.run.dir=s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # a snapshot is a checkpoint like last.pt
    crashed = tmp_path / "t8" / "crashed" / ".hydra"  # a job that died before metrics.json (a NaN loss)
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text((tmp_path / "t8" / "distill" / ".hydra" / "config.yaml").read_text())
    proc = rtkrun_in_process("report", "runs=t8", "out=tables", "hydra.run.dir=rep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "tables" / "T8.csv").open()))
    assert [r["status"] for r in rows if r["run_dir"].endswith("crashed")] == ["failed or unfinished"]
    rows = [r for r in rows if not r["run_dir"].endswith("crashed")]
    assert len(rows) == 2 * 3 * 2  # variants × (two snapshots + final) × samplers
    assert {r["epoch"] for r in rows} == {"1", "2", "3"}
    assert {r["variant"] for r in rows} == {
        "distillation reference (exact flow map)",
        "w=1 buffer=estimate null=0.5 mse λ=edm self-distill p=0.25 DDIM-3",
    }
    assert all(float(r["ratio/sliced_w2"]) > 0 for r in rows)
    summary = list(csv.DictReader((tmp_path / "tables" / "T8_summary.csv").open()))
    assert [r["status"] for r in summary if not r["epoch"]] == ["failed or unfinished"]
    summary = [r for r in summary if r["epoch"]]
    assert len(summary) == 6 and {"dddm1", "ddim2", "contraction", "buffer/to_prior"} <= set(summary[0])
    with_buffer = [r for r in rows if r["variant"].startswith("w=1")]
    assert all(float(r["buffer/to_prior"]) >= 0 and float(r["buffer/rms_error"]) > 0 for r in with_buffer)
    assert (tmp_path / "tables" / "T8.png").stat().st_size > 0


def test_variant_labels_name_the_settings():
    paper = {"objective": "dddm", "dddm_weight": "inverse_epoch", "buffer_update": "clean"}
    paper.update(null_estimate_prob=0.0, distance="pseudo_huber", noise_weighting="none")
    assert variant_label(paper) == "w=1/(epoch+1) buffer=clean null=0.0 pseudo_huber λ=none"


def test_buffer_profile_is_zero_where_the_buffer_holds_the_examples_themselves():
    from rtkrun.config import typed_group
    from rtkrun.data.mog import MogDataset
    from rtkrun.report.t8 import buffer_profile

    dataset = MogDataset(typed_group("dataset", {"name": "mog", "dim": 2, "train_size": 2000}))
    x0 = dataset.get_batch(torch.arange(2000))
    profile = buffer_profile(x0, dataset)
    assert profile["buffer/rms_error"] == 0.0
    assert profile["buffer/to_data"] < 0.1  # 2,000 exact samples against the exact quantiles
    assert profile["buffer/to_prior"] > 0.4  # the ring of radius 2 (0.56) is far from N(0, I)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9))
    assert buffer_profile(noise, dataset)["buffer/to_prior"] < 0.1


def test_t8_on_molecules_trains_self_distillation_on_the_subspace_and_reports_stability(tmp_path):
    """T8 on QM9 (experiment=t8_qm9) on a fixture of real molecules: the one-step rows run on
    the zero-CoM subspace, snapshots are scored by stability, the fixed-point profile is
    measured on molecules, and the report writes its own table (T8_qm9) beside nothing else."""
    from tests.qm9_fixture import build_qm9_fixture, first_real_molecules

    tarball = build_qm9_fixture(tmp_path / "qm9", first_real_molecules(120))
    env = {"RTKRUN_CACHE": str(tmp_path / "cache")}
    args = [
        "experiment=t8_qm9",
        "dddm_variant=self_distill",
        "dataset.source=figshare",
        f"dataset.root={tarball}",
        "dataset.limit=64",
        "trainer.batch_size=32",
        "trainer.max_steps=4",
        "trainer.warmup_steps=0",
        "trainer.snapshot_epochs=[1]",
        "trainer.one_step_teacher_steps=2",
        "evaluation.n_samples=8",
        "evaluation.batch_size=8",
        "evaluation.fixed_point_points=4",
        "~evaluation.samplers",
        "+evaluation.samplers={dddm1:{name:dddm},ddim2:{name:ddim,steps:2}}",
        "hydra.run.dir=t8q",
    ]
    proc = rtkrun_in_process("train", *args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "t8q" / "metrics.json").read_text())
    assert metrics["train/steps_per_epoch"] == 2
    state = runs.load_checkpoint(runs.checkpoint_path(tmp_path / "t8q"))
    solved = state["one_step"]["solved"]
    assert solved.max() == 1 and (solved >= 0).sum() > 0  # rows were drawn and solved in epochs 0 and 1
    for prefix in ("eval", "snapshot/epoch=1"):
        assert 0.0 <= metrics[f"{prefix}/dddm1/atom_stability"] <= 1.0
        assert 0 < metrics[f"{prefix}/fixed_point/L_start"] < 100
    proc = rtkrun_in_process("report", "runs=t8q", "out=tables", "hydra.run.dir=rep", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "tables" / "T8.csv").exists() and not (tmp_path / "tables" / "T4.csv").exists()
    rows = list(csv.DictReader((tmp_path / "tables" / "T8_qm9.csv").open()))
    assert len(rows) == 2 * 2 and {r["data"] for r in rows} == {"qm9 first 64"}
    assert {r["epoch"] for r in rows} == {"1", "2"}
    assert all(0 <= float(r["atom_stability"]) <= 100 and 0 < float(r["buffer/rms"]) for r in rows)
    summary = list(csv.DictReader((tmp_path / "tables" / "T8_qm9_summary.csv").open()))
    assert [r["epoch"] for r in summary] == ["1", "2"] and "buffer/to_prior" not in summary[0]
    assert (tmp_path / "tables" / "T8_qm9.png").stat().st_size > 0
