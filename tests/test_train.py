"""Training: exact resume, learning, the NaN guard and the student's metrics (in-process)."""

import dataclasses
import json
import math

import pytest
import torch

from rtkrun import runs
from rtkrun.build import build_parts
from rtkrun.commands.run import run_command
from rtkrun.config import validate
from rtkrun.diffusion.objectives import Objective
from rtkrun.errors import RtkrunError
from rtkrun.sampling import draw_samples
from tests.conftest import compose_cfg

NO_EVAL = ["~evaluation.samplers"]  # Hydra merges dicts: delete, then add with +key=…


def train(run_dir, overrides):
    return run_command(compose_cfg("train", overrides), run_dir)


def test_interrupted_and_resumed_training_is_bit_identical(tmp_path):
    common = ["trainer.deterministic=true", "trainer.ckpt_every=1000", "trainer.log_every=100", *NO_EVAL]
    train(tmp_path / "resumed", [*common, "trainer.max_steps=200"])
    first = runs.load_checkpoint(tmp_path / "resumed")
    assert first["step"] == 200
    train(tmp_path / "resumed", [*common, "trainer.max_steps=400"])
    train(tmp_path / "straight", [*common, "trainer.max_steps=400"])
    a, b = runs.load_checkpoint(tmp_path / "resumed"), runs.load_checkpoint(tmp_path / "straight")
    assert a["step"] == b["step"] == 400
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["buffer"], b["buffer"]) and torch.equal(a["generator"], b["generator"])
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [100, 200, 300, 400]


def test_default_model_learns(tmp_path):
    # DDIM-50 sliced W2 of the trained default model is >= 5x better than at initialisation.
    # DDIM-50 only: the other evaluation samplers have tests of their own
    overrides = [f"~evaluation.samplers.{s}" for s in ("ddpm200", "dddm1", "dddm2", "dddm_sc10")]
    overrides += ["evaluation.n_samples=2000", "evaluation.fixed_point_points=0"]
    metrics = train(tmp_path, overrides)
    run = validate(compose_cfg("train", overrides))
    dataset, schedule, model = build_parts(run, run.seed)  # the same initialisation, untrained
    sampler = run.evaluation.samplers["ddim50"]
    samples, _ = draw_samples(model, sampler, schedule, dataset, 2000, 2000, 0, torch.device("cpu"))
    # sliced W2 reads every sample; the exact W2 and MMD of the untrained model are not needed
    quick = dataclasses.replace(run.evaluation, w2_max_n=50, mmd_max_n=50)
    initial = dataset.score(samples, quick)["sliced_w2"]
    trained = metrics["eval/ddim50/sliced_w2"]
    assert trained * 5 <= initial, (trained, initial)
    # Sliced W2 alone misses samples collapsed onto a curve through the modes (seen with the
    # literal x0 = x_t − F head); exact W2 and the off-mode fraction catch it.
    assert metrics["eval/ddim50/w2"] <= 1.3 * metrics["eval/ddim50/baseline/w2"], metrics
    assert metrics["eval/ddim50/off_mode"] < 0.08, metrics


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = Objective.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(Objective, "__call__", poisoned)
    with pytest.raises(RtkrunError, match="at step 7.*last good checkpoint .* is kept"):
        train(tmp_path, ["trainer.max_steps=20", "trainer.ckpt_every=5", *NO_EVAL])
    assert runs.load_checkpoint(tmp_path)["step"] == 5
    assert not (tmp_path / "metrics.json").exists()


def test_student_reports_angle_and_distance(tmp_path):
    metrics = train(tmp_path, ["experiment=mog_pair_student", "trainer.max_steps=300", "trainer.lr=0.05", *NO_EVAL])
    assert metrics["student/angle_deg"] < 10 and math.isfinite(metrics["student/distance"])


def test_oracle_needs_no_training(tmp_path):
    metrics = train(tmp_path, ["model=mog_oracle", *NO_EVAL, "+evaluation.samplers={ddim20:{name:ddim,steps:20}}"])
    assert not (tmp_path / "checkpoints").exists() and metrics["eval/ddim20/nfe"] == 20


def test_progress_shows_after_the_first_step_with_an_eta_and_records_keep_their_cadence(tmp_path):
    import re

    from tests.conftest import rtkrun_in_process

    args = ["trainer.max_steps=30", "trainer.log_every=1000", "evaluation=none", "hydra.run.dir=r"]
    proc = rtkrun_in_process("train", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "r" / "train.log").read_text()
    assert re.search(r"step 1/30  loss \S+  .* elapsed \d+ s  ETA \d+ s", log), log
    assert "step 30/30" in log
    assert [r["step"] for r in runs.read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [30]
    assert (tmp_path / "r" / "loss.png").read_bytes()[:4] == b"\x89PNG"  # the loss curve, at the end


def test_durations_and_the_gpu_preset_warning():
    from rtkrun.trainer import duration, too_long_warning

    assert [duration(s) for s in (4.4, 185, 7620, 30_254_400)] == ["4 s", "3m05s", "2h07m", "350d04h"]
    assert too_long_warning(3600.0, "cpu") is None and too_long_warning(10 * 86_400.0, "cuda") is None
    warning = too_long_warning(30_254_400.0, "cpu")
    assert "350d04h" in warning and "debug=fast" in warning and "experiment=qm9_cpu" in warning


def test_sampling_progress_logs_batches_and_steps_inside_a_batch(caplog):
    import logging

    from rtkrun.sampling import SamplingProgress

    progress = SamplingProgress("eval/ddim50", 300, every=0.0)
    with caplog.at_level(logging.INFO, logger="rtkrun"):
        progress.step({"nfe": 7})
        progress.batch_done(100)
        progress.step({"t": 0.5})  # no NFE in this report: nothing to say
        progress.batch_done(200)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "eval/ddim50: batch at sample 0 of 300, NFE 7 so far"
    assert lines[1].startswith("eval/ddim50: 100/300 samples, elapsed ") and "ETA" in lines[1]
    assert lines[2].startswith("eval/ddim50: 300/300 samples") and len(lines) == 3
    quiet = SamplingProgress("s", 300, every=3600.0)
    with caplog.at_level(logging.INFO, logger="rtkrun"):
        quiet.batch_done(100)  # not yet due
        quiet.batch_done(200)  # done quickly: the result line says enough
    assert len(caplog.records) == 3


@pytest.mark.parametrize("dataset", ["mog", "qm9", "cifar10"])
def test_debug_fast_checks_every_dataset_with_its_small_model_in_seconds(dataset, tmp_path, shared_cache):
    """`rtkrun train debug=fast dataset=…` trains the dataset's CPU-sized model for 20 steps and
    scores one cheap sampler, also after an experiment (it is chosen last). QM9 and CIFAR-10 run
    on the tests' fixtures in their real file formats."""

    from tests.conftest import rtkrun_in_process

    args, env = [f"dataset={dataset}"], {"RTKRUN_CACHE": str(shared_cache)}
    if dataset == "qm9":
        from tests.qm9_fixture import build_qm9_fixture, first_real_molecules

        tarball = build_qm9_fixture(tmp_path / "qm9", first_real_molecules(60))
        args = ["experiment=qm9_cpu", "dataset.source=figshare", f"dataset.root={tarball}"]
    if dataset == "cifar10":
        from tests.cifar_fixture import build_cifar10_fixture

        args.append(f"dataset.root={build_cifar10_fixture(tmp_path / 'data', per_batch=4)}")  # as test_cli_cifar10
    proc = rtkrun_in_process("train", *args, "debug=fast", "hydra.run.dir=r", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["train/steps"] == 20
    assert [k.split("/")[1] for k in metrics if k.startswith("eval/") and k.endswith("/nfe")] == ["ddim10"]
    assert metrics["train/parameters"] < 1_000_000  # the small model, not the 55.7 M reference U-Net


def test_debug_overfit_fits_one_batch(tmp_path):
    """`debug=overfit`: the same 16 examples with the same times and noise at every step, so a
    working model and objective drive the loss far below its start (here 0.8 -> below 0.05)."""
    from tests.conftest import rtkrun_in_process

    proc = rtkrun_in_process("train", "debug=overfit", "hydra.run.dir=r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["train/examples"] == 16 and metrics["train/steps_per_epoch"] == 1
    losses = [json.loads(line)["loss"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.05 < 0.3 < losses[0], losses


def test_previews_are_drawn_logged_and_leave_training_unchanged(tmp_path):
    """trainer.preview_every: a picture and the dataset's metrics of the EMA model at those
    steps, in that step's metrics.jsonl record; the run trains bit for bit as one without."""
    common = ["trainer.deterministic=true", "trainer.max_steps=200", "trainer.log_every=50", *NO_EVAL]
    with_previews = [*common, "trainer.preview_every=100", "trainer.preview_samples=64"]
    train(tmp_path / "previewed", with_previews)
    train(tmp_path / "plain", common)
    assert sorted(p.name for p in (tmp_path / "previewed" / "previews").glob("*.png")) == [
        "step-0000100.png",
        "step-0000200.png",
    ]
    records = [json.loads(line) for line in (tmp_path / "previewed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "preview/sliced_w2" in r] == [100, 200]
    assert all(r["preview/sliced_w2"] > 0 and "preview/baseline/sliced_w2" in r for r in records if r["step"] == 100)
    a, b = runs.load_checkpoint(tmp_path / "previewed"), runs.load_checkpoint(tmp_path / "plain")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    with pytest.raises(RtkrunError, match="preview_every=75 must be a multiple of log_every=50"):
        train(tmp_path / "bad", [*common, "trainer.preview_every=75"])


def test_snapshot_every_keeps_numbered_checkpoints_that_sample_like_last(tmp_path):
    """trainer.snapshot_every (EDM's snapshots): complete checkpoints at every multiple of the
    interval, each what last.pt held at that step; one can be sampled with ckpt=FILE."""
    common = ["trainer.max_steps=30", "trainer.log_every=10", "trainer.ckpt_every=10", "trainer.deterministic=true"]
    train(tmp_path / "run", [*common, "trainer.snapshot_every=10", *NO_EVAL])
    snapshots = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in snapshots] == ["step-00000010.pt", "step-00000020.pt", "step-00000030.pt"]
    assert [runs.load_checkpoint(p)["step"] for p in snapshots] == [10, 20, 30]
    # the last snapshot and last.pt are due at the same step: one serialisation, the same bytes
    assert snapshots[-1].read_bytes() == (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    train(tmp_path / "short", [*common, "trainer.max_steps=20", *NO_EVAL])  # the same run, stopped at 20
    at_20, short = runs.load_checkpoint(snapshots[1]), runs.load_checkpoint(tmp_path / "short")
    assert all(torch.equal(at_20["ema"][k], short["ema"][k]) for k in short["ema"])
    sampled = run_command(
        compose_cfg("sample", [f"ckpt={snapshots[0]}", "sampler.steps=5", "n_samples=50", "batch_size=50"]),
        tmp_path / "sample",
    )
    assert sampled["status"] == "complete" and sampled["nfe"] == 5
