"""A run directory holds exactly one command's one experiment, and is never silently replaced
or left stale (README, "Run directories"). Each test reproduces one defect class of the probe in
issue 19; commands run in process (``rtkrun_in_process``) to keep the suite fast."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from rtkrun import runs
from tests.conftest import rtkrun_in_process

EVAL = ["~evaluation.samplers", "+evaluation.samplers.ddim5={name:ddim,steps:5}"]
T = ["trainer.max_steps=40", "trainer.log_every=10", "evaluation.n_samples=100", "evaluation.batch_size=100", *EVAL]
S = ["n_samples=100", "batch_size=100", "sampler.steps=5"]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".rtkrun.lock"
    }


def one_line(proc, fragment: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr)
    assert fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("rundirs")
    proc = rtkrun_in_process("train", *T, "hydra.run.dir=B", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "B"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".rtkrun.lock"))
    return dst


# -- 1: a sweep over checkpoints ----------------------------------------------------------------
def test_a_sweep_over_checkpoints_gives_each_checkpoint_its_own_job_directory(trained, tmp_path):
    b1, b2 = copy_run(trained, tmp_path / "B1"), copy_run(trained, tmp_path / "B2")
    proc = rtkrun_in_process("sample", "-m", f"ckpt={b1},{b2}", *S, "hydra.sweep.dir=SW", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.parent for p in (tmp_path / "SW").glob("*/metrics.json"))
    assert len(jobs) == 2  # before: one directory, the second job overwrote the first
    assert sorted(metrics(j)["ckpt"] for j in jobs) == sorted([str(b1), str(b2)])
    assert [j.name.split("ckpt-")[1].split("-")[0] for j in jobs] == ["B1", "B2"]


# -- 2: sample / evaluate into a directory holding something else ------------------------------
def test_sample_and_evaluate_refuse_directories_of_other_commands_and_experiments(trained, tmp_path):
    b2 = copy_run(trained, tmp_path / "B2")
    before = snapshot(b2)
    proc = rtkrun_in_process("sample", f"ckpt={b2}", *S, f"hydra.run.dir={b2}", cwd=tmp_path)
    one_line(proc, "holds a `train` run; `rtkrun sample` writes only into a new directory")
    assert snapshot(b2) == before
    d = tmp_path / "D"
    assert rtkrun_in_process("sample", f"ckpt={trained}", *S, f"hydra.run.dir={d}", cwd=tmp_path).returncode == 0
    before = snapshot(d)
    proc = rtkrun_in_process("sample", f"ckpt={trained}", *S, "sampler.steps=10", f"hydra.run.dir={d}", cwd=tmp_path)
    one_line(proc, "already holds a run with sampler.steps=5 (now 10)")
    proc = rtkrun_in_process("evaluate", f"samples={d}", f"hydra.run.dir={d}", cwd=tmp_path)
    one_line(proc, "holds a `sample` run; `rtkrun evaluate` writes only")
    proc = rtkrun_in_process("train", *T, f"hydra.run.dir={d}", cwd=tmp_path)
    one_line(proc, "holds a `sample` run; `rtkrun train` writes only")
    assert snapshot(d) == before


@pytest.mark.parametrize(
    "command,args",
    [
        ("train", ["trainer.max_steps=5"]),
        ("evaluate", ["samples=data"]),
        ("diagnose", ["model=mog_oracle"]),
        ("report", ["runs=."]),
        ("bench", ["sections=[training]"]),
    ],
)
def test_every_command_refuses_a_directory_holding_another_commands_run(tmp_path, command, args):
    assert rtkrun_in_process("sample", "model=mog_oracle", *S, "hydra.run.dir=D", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "D")
    proc = rtkrun_in_process(command, *args, "hydra.run.dir=D", cwd=tmp_path)
    one_line(proc, f"D holds a `sample` run; `rtkrun {command}` writes only into a new directory")
    assert snapshot(tmp_path / "D") == before


def test_a_refused_sweep_job_restores_the_hydra_files_of_the_directory(tmp_path):
    """In a sweep Hydra writes a job's .hydra/ before rtkrun runs; a refused job puts back the
    files of the experiment the directory holds."""
    # overrides both commands take, so a train sweep into the same sweep directory names its job
    # exactly as the sample sweep did
    sweep = ["-m", "model=mog_oracle", "seed=0", "evaluation.n_projections=16", "hydra.sweep.dir=SW"]
    assert rtkrun_in_process("sample", *sweep, cwd=tmp_path).returncode == 0
    (job,) = [p.parent for p in (tmp_path / "SW").glob("*/metrics.json")]
    before = snapshot(job)
    proc = rtkrun_in_process("train", *sweep, cwd=tmp_path)
    assert proc.returncode != 0
    assert "holds a `sample` run; `rtkrun train` writes only" in (job / "train.log").read_text()
    assert {k: v for k, v in snapshot(job).items() if k != "train.log"} == before  # train.log: the refusal


# -- 3: stale skips ------------------------------------------------------------------------------
def test_a_finished_sample_is_recomputed_when_its_checkpoint_changed(trained, tmp_path):
    b = copy_run(trained, tmp_path / "B")
    d = tmp_path / "D"
    assert rtkrun_in_process("sample", f"ckpt={b}", *S, f"hydra.run.dir={d}", cwd=tmp_path).returncode == 0
    first = metrics(d)
    again = rtkrun_in_process("sample", f"ckpt={b}", *S, f"hydra.run.dir={d}", cwd=tmp_path)
    assert again.returncode == 0 and metrics(d) == first  # unchanged checkpoint: skipped
    assert rtkrun_in_process("train", *T, "trainer.max_steps=60", f"hydra.run.dir={b}", cwd=tmp_path).returncode == 0
    assert rtkrun_in_process("sample", f"ckpt={b}", *S, f"hydra.run.dir={d}", cwd=tmp_path).returncode == 0
    second = metrics(d)
    assert second["input_sha1"] != first["input_sha1"]
    assert second["input_sha1"] == runs.file_digest(b / "checkpoints" / "last.pt", "sha1")
    assert second["sample/sliced_w2"] != first["sample/sliced_w2"]  # before: the old weights' metrics


# -- 4: re-running a finished training -----------------------------------------------------------
def test_a_run_recorded_before_a_setting_existed_resumes_when_the_setting_is_at_its_default(trained, tmp_path):
    """A directory written by an older rtkrun lacks keys the schema gained since (here
    trainer.one_step_prob): its record is validated, so they read as their defaults; the same
    experiment resumes, and one that sets them otherwise is refused."""
    b = copy_run(trained, tmp_path / "B")
    record = json.loads((b / "run.json").read_text())
    del record["config"]["trainer"]["one_step_prob"], record["config"]["trainer"]["log_seconds"]
    (b / "run.json").write_text(json.dumps(record))
    proc = rtkrun_in_process("train", *T, "trainer.max_steps=50", f"hydra.run.dir={b}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert metrics(b)["train/steps"] == 50
    c = copy_run(trained, tmp_path / "C")
    (c / "run.json").write_text(json.dumps(record))
    proc = rtkrun_in_process("train", *T, "trainer.one_step_prob=0.5", f"hydra.run.dir={c}", cwd=tmp_path)
    one_line(proc, "already holds a run with trainer.one_step_prob=0.0 (now 0.5)")


def test_fewer_steps_than_trained_is_refused(trained, tmp_path):
    b = copy_run(trained, tmp_path / "B")
    before = snapshot(b)
    proc = rtkrun_in_process("train", *T, "trainer.max_steps=20", f"hydra.run.dir={b}", cwd=tmp_path)
    one_line(proc, "holds a run trained for 40 steps; trainer.max_steps=20 would report it as a shorter one")
    assert snapshot(b) == before


def test_a_new_evaluation_on_a_finished_run_is_run_and_merged(trained, tmp_path):
    b = copy_run(trained, tmp_path / "B")
    old = metrics(b)
    extra = "+evaluation.samplers.ddim3={name:ddim,steps:3}"
    proc = rtkrun_in_process("train", *T, extra, f"hydra.run.dir={b}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    new = metrics(b)
    assert new["eval/ddim3/nfe"] == 3 and new["status"] == "complete"
    for key in ("train/final_loss", "train/steps", "eval/ddim5/sliced_w2", "eval/ddim5/config_sha1"):
        assert new[key] == old[key], key  # kept, not recomputed or dropped
    assert runs.load_checkpoint(b)["step"] == 40


def test_an_interrupted_evaluation_keeps_the_training_results_and_finished_samplers(trained, tmp_path, monkeypatch):
    """A kill during the evaluation phase (here: an exception in the second sampler) keeps what
    was written; the re-run measures only what is missing."""
    from rtkrun.data.mog import MogDataset

    b = copy_run(trained, tmp_path / "B")
    (b / "metrics.json").unlink()
    two = [*T, "+evaluation.samplers.ddim3={name:ddim,steps:3}"]
    real_score, calls = MogDataset.score, []

    class Killed(BaseException):
        pass

    def dying_score(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real_score(self, *args, **kwargs)

    monkeypatch.setattr(MogDataset, "score", dying_score)
    with pytest.raises(Killed):
        rtkrun_in_process("train", *two, f"hydra.run.dir={b}", cwd=tmp_path)
    partial = metrics(b)
    assert partial["status"] == "incomplete" and partial["train/final_loss"] is not None
    assert "eval/ddim5/sliced_w2" in partial and "eval/ddim3/sliced_w2" not in partial
    monkeypatch.setattr(MogDataset, "score", real_score)
    proc = rtkrun_in_process("train", *two, f"hydra.run.dir={b}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    done = metrics(b)
    assert done["status"] == "complete" and done["train/final_loss"] == pytest.approx(partial["train/final_loss"])
    assert done["eval/ddim5/sliced_w2"] == partial["eval/ddim5/sliced_w2"] and done["eval/ddim3/nfe"] == 3


# -- 5: the lock and a stray RANK ------------------------------------------------------------------
def test_a_stray_rank_variable_does_not_skip_the_lock(tmp_path):
    import fcntl

    from rtkrun import cli
    from rtkrun.commands.run import preflight
    from tests.conftest import compose_cfg

    cfg = compose_cfg("sample", ["model=mog_oracle", f"hydra.run.dir={tmp_path / 'R'}"], return_hydra_config=True)
    cfg.hydra.mode = "RunMode.RUN"
    old = dict(os.environ)
    os.environ.update({"RANK": "1"})
    os.environ.pop("WORLD_SIZE", None)
    try:
        assert cli.launcher_rank() == 0  # no group: this process is alone, whatever RANK says
        preflight(cfg, cli.launcher_rank())
        fd = os.open(tmp_path / "R" / ".rtkrun.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        os.environ.clear()
        os.environ.update(old)
        runs.unlock_run_dir(tmp_path / "R")


# -- 6: damaged run files --------------------------------------------------------------------------
@pytest.mark.parametrize("content", ['{"s', "[]"])
def test_a_damaged_metrics_file_is_rewritten_not_a_traceback(trained, tmp_path, content):
    b = copy_run(trained, tmp_path / "B")
    (b / "metrics.json").write_text(content)
    with open(b / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n7\n")
    proc = rtkrun_in_process("train", *T, "trainer.max_steps=50", f"hydra.run.dir={b}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert metrics(b)["status"] == "complete" and metrics(b)["train/steps"] == 50
    assert [r["step"] for r in runs.read_jsonl(b / "metrics.jsonl")] == [10, 20, 30, 40, 50]


def test_report_lists_damaged_directories_and_goes_on(tmp_path):
    proc = rtkrun_in_process(
        "sample", "-m", "model=mog_oracle", "sampler.steps=2,3,4", *S[:2], "hydra.sweep.dir=SW", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.parent for p in (tmp_path / "SW").glob("*/metrics.json"))
    jobs[0].joinpath("metrics.json").write_text('{"sampl')
    jobs[1].joinpath(".hydra", "config.yaml").write_text("sampler: {name: [")
    proc = rtkrun_in_process("report", "runs=SW", "out=TB", "hydra.run.dir=RP", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "TB" / "T1_T2.md").read_text().count("| ddim |") == 1
    damaged = (tmp_path / "TB" / "damaged.md").read_text()
    assert jobs[0].name in damaged and "not valid JSON" in damaged and ".hydra/config.yaml is unreadable" in damaged
    assert metrics(tmp_path / "RP")["damaged"] == 2


# -- 7, 8, 12: values, paths and sweeps checked before any work ---------------------------------
@pytest.mark.parametrize(
    "args,env,fragment",
    [
        (["seed=-1"], {}, "seed must be in [0, 2^63 - 1], got -1"),
        (["seed=18446744073709551616"], {}, "seed must be in [0, 2^63 - 1]"),
        (["evaluation.seed=-1"], {}, "evaluation.seed must be in [0, 2^63 - 1]"),
        (["device=mps"], {}, "device='mps' is unknown (Apple's mps is not supported)"),
        (["device=foo"], {}, "device='foo' is unknown; choose one of auto, cpu, cuda or cuda:N"),
        (["dataset.component_std=0"], {}, "dataset.component_std must be > 0"),
        ([], {"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
        (["hydra.run.dir=" + "x" * 300], {}, "File name too long; choose a writable hydra.run.dir"),
        (["hydra.run.dir=AFILE"], {}, "AFILE is a file; choose a writable hydra.run.dir"),
        (["hydra.run.dir=AFILE/sub"], {}, "AFILE is a file; choose a writable hydra.run.dir"),
        (["hydra.run.dir=LOCKDIR"], {}, "cannot use hydra.run.dir=LOCKDIR: Is a directory"),
        (["dataset=qm9", "hydra.run.dir=Q"], {"RTKRUN_CACHE": "AFILE"}, "set RTKRUN_CACHE to a writable directory"),
    ],
)
def test_bad_values_and_paths_stop_in_one_line_before_any_work(tmp_path, args, env, fragment):
    (tmp_path / "AFILE").write_text("a file")
    (tmp_path / "LOCKDIR" / ".rtkrun.lock").mkdir(parents=True)
    before = snapshot(tmp_path)
    one_line(rtkrun_in_process("train", "trainer.max_steps=5", *args, cwd=tmp_path, env=env), fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "outputs").exists()


def test_report_out_that_is_a_file_names_out(tmp_path):
    (tmp_path / "AFILE").write_text("a file")
    (tmp_path / "runs").mkdir()
    one_line(rtkrun_in_process("report", "runs=runs", "out=AFILE", cwd=tmp_path), "choose a writable out=<dir>")


def test_a_sweep_with_one_bad_value_is_refused_before_any_job(tmp_path):
    proc = rtkrun_in_process(
        "sample", "-m", "model=mog_oracle", "sampler.steps=5,0,10", "hydra.sweep.dir=SW", cwd=tmp_path
    )
    one_line(proc, "sweep job model=mog_oracle sampler.steps=0: sampler.steps must be >= 1, got 0")
    assert not (tmp_path / "SW").exists()
    proc = rtkrun_in_process("sample", "model=mog_oracle", "sampler.nfe=0", cwd=tmp_path)
    one_line(proc, "sampler.nfe must be >= 1")  # before: reported as sampler.steps


def test_an_rtk_budget_below_its_minimum_says_so_and_records_both(tmp_path):
    args = ["model=mog_oracle", "sampler=rtk_mala", "sampler.nfe=1", "n_samples=50", "batch_size=50", "hydra.run.dir=R"]
    proc = rtkrun_in_process("sample", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "needs at least 2 NFE" in (tmp_path / "R" / "sample.log").read_text()
    m = metrics(tmp_path / "R")
    assert m["nfe"] == 2 and m["nfe_budget"] == 1


# -- 9: damaged checkpoints and sample files -------------------------------------------------------
def test_damaged_checkpoints_name_the_entry(trained, tmp_path):
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=False)
    cases = {
        "c1.pt": ({"format": runs.CHECKPOINT_FORMAT}, "its 'step' entry is missing"),
        "c2.pt": ({**state, "config": None}, "its 'config' entry is a NoneType where a dict belongs"),
        "c3.pt": ({**state, "ema": torch.zeros(3)}, "its 'ema' entry is a Tensor where a dict belongs"),
    }
    for name, (content, fragment) in cases.items():
        torch.save(content, tmp_path / name)
        proc = rtkrun_in_process("sample", f"ckpt={name}", *S, f"hydra.run.dir=S{name}", cwd=tmp_path)
        one_line(proc, fragment)
    b = copy_run(trained, tmp_path / "B")
    del state["optimizer"]
    torch.save(state, b / "checkpoints" / "last.pt")
    proc = rtkrun_in_process("train", *T, "trainer.max_steps=50", f"hydra.run.dir={b}", cwd=tmp_path)
    one_line(proc, "cannot be resumed: its 'optimizer' entry is missing")


def test_bad_sample_files_are_named(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((5, 2)))
    np.savez(tmp_path / "empty.npz", x0=np.zeros((0, 2)))
    np.savez(tmp_path / "text.npz", x0=np.array([["a", "b"]]))
    np.savez(tmp_path / "complex.npz", x0=np.ones((5, 2)) * 1j)
    np.savez(tmp_path / "newer.npz", x0=np.zeros((5, 2)), dataset_config=json.dumps({"name": "mog", "bogus": 1}))
    cases = {
        "s.npy": "is not an rtkrun samples file (.npz)",
        "empty.npz": "holds no samples (x0 has shape (0, 2))",
        "text.npz": "holds <U1 samples; rtkrun scores real numbers",
        "complex.npz": "holds complex samples",  # before: the imaginary part was silently dropped
        "newer.npz": "unknown config key 'dataset.bogus'",  # before: a garbled quote
    }
    for name, fragment in cases.items():
        one_line(rtkrun_in_process("evaluate", f"samples={name}", f"hydra.run.dir=E{name}", cwd=tmp_path), fragment)


# -- 10: a full disk while writing pictures and files ---------------------------------------------
def test_a_write_beyond_the_file_size_limit_stops_in_one_line_and_leaves_no_partial_file(tmp_path):
    from rtkrun.data.mog import MogConfig, build
    from rtkrun.errors import RtkrunError
    from rtkrun.samples_file import save_samples

    cfg = MogConfig()
    data = build(cfg)
    samples = data.mixture.sample(4000, torch.Generator().manual_seed(0)).float()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, hard))  # the .npz fits, the picture does not
    try:
        with pytest.raises(RtkrunError, match="samples.png: File too large; the previous file is unchanged"):
            save_samples(tmp_path / "samples", samples, seed=0, dataset_cfg=cfg, sampler_cfg=None, nfe=1, dataset=data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]  # no partial or temporary file


# -- 11: Ctrl-C ----------------------------------------------------------------------------------------
def test_ctrl_c_in_training_checkpoints_the_step_and_exits_130(tmp_path, monkeypatch):
    from rtkrun.trainer import Trainer

    # A shell's background job (CI under `&` or nohup) starts with SIGINT ignored, not with
    # Python's default_int_handler: the trainer must restore whichever handler it displaced.
    handler_before = signal.getsignal(signal.SIGINT)

    real_step = Trainer.step_once

    def step_then_ctrl_c(self, index, epoch):
        out = real_step(self, index, epoch)
        if self.step == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "step_once", step_then_ctrl_c)
    proc = rtkrun_in_process("train", *T, "trainer.max_steps=1000", "hydra.run.dir=B", cwd=tmp_path)
    one_line(proc, "stopped by SIGINT at step 7; checkpoint", code=130)
    assert runs.load_checkpoint(tmp_path / "B")["step"] == 7
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_ctrl_c_while_sampling_is_one_line(tmp_path, monkeypatch):
    from rtkrun.commands import sample as sample_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_command, "draw_samples", interrupted)
    proc = rtkrun_in_process("sample", "model=mog_oracle", *S, "hydra.run.dir=S", cwd=tmp_path)
    one_line(proc, "interrupted (Ctrl-C)", code=130)


def test_name_and_tags_label_the_directory_and_the_tables_without_redoing_the_run(tmp_path):
    """name= is appended to the run directory's name (EDM's --desc), name and tags are recorded
    and shown by report, and relabelling a finished run does not redo it."""
    args = ["model=mog_oracle", *S, "name=try-1", "tags=[ddim,quick]"]
    assert rtkrun_in_process("sample", *args, cwd=tmp_path).returncode == 0
    (run_dir,) = [p.parent for p in (tmp_path / "outputs" / "sample").glob("*/metrics.json")]
    assert run_dir.name.endswith("_try-1")
    m = metrics(run_dir)
    assert (m["name"], m["tags"]) == ("try-1", ["ddim", "quick"])
    proc = rtkrun_in_process("sample", "model=mog_oracle", *S, "tags=[other]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0 and "holds this finished sample job: skipped" in proc.stdout
    proc = rtkrun_in_process("report", "runs=outputs", "out=TB", "hydra.run.dir=RP", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| try-1 | ddim quick |" in (tmp_path / "TB" / "T1_T2.md").read_text()
    one_line(rtkrun_in_process("sample", "model=mog_oracle", "name=a/b", cwd=tmp_path), "name may hold letters")
