"""The run-directory life cycle: a directory holds exactly one command's one experiment.

Before any command writes into a directory it checks what the directory already holds and
refuses, in one line, anything that would replace or falsify it:

- ``run.json`` (written atomically when a command starts work) records the command and the
  validated config of the experiment the directory holds. Older directories without it are
  read from Hydra's ``.hydra/config.yaml``, or from the checkpoint's config where a kill tore
  that file.
- Another command, or the same command with another experiment, is refused. Only the settings
  in :data:`MAY_CHANGE` may differ: for ``train`` those that resume or extend a run (more steps,
  a new evaluation), elsewhere those that say how a job runs, not what it computes.
- ``train`` refuses ``trainer.max_steps`` below the steps already trained.
- A finished ``sample``/``evaluate``/``diagnose``/``search`` job is skipped when its metrics were computed
  from the same config and the same input (the checkpoint's or samples file's SHA-1), so a
  re-launched sweep runs only what is missing or stale; stale results are recomputed, with a
  warning naming what changed.

In a sweep Hydra writes the job's ``.hydra/`` before rtkrun runs; when the job is refused, the
files of the experiment the directory holds are restored from ``run.json``.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import rtkrun
from rtkrun import runs
from rtkrun.config import config_digest, to_dict, validate
from rtkrun.errors import RtkrunError
from rtkrun.loggers import check_tracker
from rtkrun.schemas.data import USES_CACHE

log = logging.getLogger("rtkrun")

RECORD = "run.json"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
EVERYTHING = ("",)  # a prefix of every key: the command regenerates from its inputs each time
# Settings that may differ from those of the experiment a directory holds.
LABELS = ("name", "tags")  # how a run is labelled, not what it computes
MAY_CHANGE: dict[str, tuple[str, ...]] = {
    "train": (
        "trainer.max_steps",
        "trainer.log_every",
        "trainer.log_seconds",
        "trainer.ckpt_every",
        "trainer.ckpt_minutes",
        "trainer.snapshot_every",
        "evaluation",
        "logger",
        "device",
        *LABELS,
    ),
    "sample": ("device", "logger", "compile", "batch_size", "evaluation.batch_size", "evaluation.fid_batch_size")
    + LABELS,
    "evaluate": ("device", "logger", "evaluation.batch_size", "evaluation.fid_batch_size", *LABELS),
    "diagnose": ("device", "logger", *LABELS),
    "search": ("device", "logger", *LABELS),
    "report": EVERYTHING,
    "bench": EVERYTHING,
}
SKIPPABLE = ("sample", "evaluate", "diagnose", "search")  # train resumes; report and bench always regenerate


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _may_change(command: str, key: str) -> bool:
    return any(p == "" or key == p or key.startswith(p + ".") for p in MAY_CHANGE.get(command, ()))


# -- what a directory holds ----------------------------------------------------------------------
def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` as a dict; None where it is absent or damaged (a warning says which)."""
    try:
        return runs.read_json_object(Path(run_dir) / "metrics.json")
    except runs.DamagedFile as e:
        log.warning("%s; it is ignored and will be rewritten", e)
        return None


def _validated(config: Any, run_dir: Path, source: str) -> dict[str, Any]:
    try:
        return to_dict(validate(config))
    except RtkrunError:
        raise RtkrunError(
            f"{run_dir} holds a run whose config ({source}) no longer validates; choose a new hydra.run.dir"
        ) from None


def held_experiment(run_dir: Path) -> dict[str, Any] | None:
    """The validated config (with its ``command``) of the experiment ``run_dir`` holds, or None
    where it holds none. Sources, most trusted first: ``run.json``, Hydra's
    ``.hydra/config.yaml``, the checkpoint's config."""
    run_dir = Path(run_dir)
    try:
        record = runs.read_json_object(run_dir / RECORD)
    except runs.DamagedFile as e:
        log.warning("%s; falling back to .hydra/config.yaml", e)
        record = None
    if record is not None and isinstance(record.get("config"), dict):
        return _validated(record["config"], run_dir, RECORD)
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.exists():
        try:  # Hydra writes it in place, so a kill can tear it: then the checkpoint decides
            return to_dict(validate(OmegaConf.load(saved)))
        except (RtkrunError, OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError, AttributeError, OSError):
            pass
    ckpt = runs.checkpoint_path(run_dir)
    if ckpt.exists():
        return _validated(runs.load_checkpoint(ckpt)["config"], run_dir, "checkpoints/last.pt")
    if saved.exists():
        log.warning("%s is unreadable (a killed start?) and no checkpoint exists; starting afresh", saved)
    if read_metrics(run_dir) is not None:
        raise RtkrunError(
            f"{run_dir} holds results (metrics.json) of a run rtkrun cannot identify (no run.json, "
            ".hydra/config.yaml or checkpoint); move them away or choose a new hydra.run.dir"
        )
    return None


def trained_steps(run_dir: Path) -> int | None:
    """The steps a train directory's checkpoint holds (None: no checkpoint yet)."""
    ckpt = runs.checkpoint_path(run_dir)
    return runs.checkpoint_step(ckpt) if ckpt.exists() else None


def check_run_dir(run: Any, run_dir: Path) -> None:
    """Refuse, in one line, a command that would replace or falsify what ``run_dir`` holds."""
    run_dir = Path(run_dir)
    old = held_experiment(run_dir)
    if old is None:
        return
    command = run.command
    if old.get("command") != command:
        raise RtkrunError(
            f"{run_dir} holds a `{old.get('command')}` run; `rtkrun {command}` writes only into a new "
            "directory or one of its own: choose a new hydra.run.dir"
        )
    old_flat, new_flat = _flat(old), _flat(to_dict(run))
    changed = [
        k
        for k in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(k) != new_flat.get(k) and not _may_change(command, k)
    ]
    if changed:
        k = changed[0]
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        verb = "resume it" if command == "train" else "repeat it"
        raise RtkrunError(
            f"{run_dir} already holds a run with {k}={old_flat.get(k)!r} (now {new_flat.get(k)!r}{more}); "
            f"{verb} with the same settings or choose a new hydra.run.dir"
        )
    if command == "train":
        steps = trained_steps(run_dir)
        if steps is not None and steps > run.trainer.max_steps:
            raise RtkrunError(
                f"{run_dir} holds a run trained for {steps} steps; trainer.max_steps={run.trainer.max_steps} "
                f"would report it as a shorter one: pass trainer.max_steps>={steps} or choose a new hydra.run.dir"
            )


def write_record(run: Any, run_dir: Path) -> None:
    """``run.json``: the command and validated config this directory now holds, with the text of
    Hydra's ``.hydra/`` files (restored from here when a later sweep job is refused)."""
    hydra_dir = Path(run_dir) / ".hydra"
    hydra_files = {}
    for name in HYDRA_FILES:
        try:
            hydra_files[name] = (hydra_dir / name).read_text()
        except (OSError, UnicodeDecodeError):
            pass
    runs.write_json(Path(run_dir) / RECORD, {"command": run.command, "config": to_dict(run), "hydra": hydra_files})


def restore_hydra_files(run_dir: Path) -> None:
    """Put back the ``.hydra/`` files of the experiment ``run.json`` records (a refused sweep job's
    Hydra wrote its own over them)."""
    try:
        record = runs.read_json_object(Path(run_dir) / RECORD)
    except runs.DamagedFile:
        return
    for name, text in ((record or {}).get("hydra") or {}).items():
        if name in HYDRA_FILES and isinstance(text, str):
            runs.atomic_write_bytes(Path(run_dir) / ".hydra" / name, text.encode())


# -- inputs and skip-if-complete -----------------------------------------------------------------
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = runs.file_digest(path, "sha1")
    return _DIGESTS[key]


def input_digest(run: Any) -> str | None:
    """SHA-1 of the file a job reads its model or samples from (a checkpoint, a samples file),
    so a result computed from an older file is never taken for a current one."""
    from rtkrun.samples_file import find_samples  # a sibling module of the same layer

    if getattr(run, "ckpt", None) is not None:
        return _digest_of(runs.resolve_checkpoint(run.ckpt))
    samples = getattr(run, "samples", None)
    if isinstance(samples, str) and samples != "data" and run.command == "evaluate":
        return _digest_of(find_samples(samples))
    return None


def finished(run: Any, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job this directory already finished with exactly this config and input
    (a re-launched sweep skips it), else None; a stale result is named in a warning."""
    if run.command not in SKIPPABLE:
        return None
    metrics = read_metrics(run_dir)
    if metrics is None or metrics.get("status") != "complete":
        return None
    same_config = metrics.get("config_sha1") == config_digest(run)
    same_input = metrics.get("input_sha1") == input_digest(run)
    if same_config and same_input:
        return metrics
    what = "settings" if not same_config else "input file (the checkpoint or samples changed since)"
    log.warning("%s holds results of this %s job from other %s; recomputing them", run_dir, run.command, what)
    return None


# -- preflight and provenance --------------------------------------------------------------------
def check_writable(path: Path, fix: str) -> None:
    """Stop before any work where ``path`` cannot be created or written."""
    path = Path(path)
    try:
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    except OSError as e:  # a name longer than the file system allows, a loop of links, ...
        raise RtkrunError(f"{str(path)[:80]}... cannot be created: {e.strerror}; {fix}") from None
    if not existing.is_dir():
        raise RtkrunError(f"{path} cannot be a directory: {existing} is a file; {fix}")
    if not os.access(existing, os.W_OK):
        raise RtkrunError(f"{path} is not writable ({existing}); {fix}")


def preflight(cfg: DictConfig, rank: int = 0) -> Any:
    """Everything that can fail before Hydra creates the run directory: the config, the input
    files, the devices, the directories written, and what the run directory already holds.
    ``rank``: this process's rank where a data-parallel launcher says it (only rank 0 locks)."""
    run = validate(cfg)
    check_device(run)
    check_tracker(run.logger)
    dataset = getattr(run, "dataset", None)
    if dataset is not None and dataset.name in USES_CACHE:
        check_writable(runs.cache_dir(), "set RTKRUN_CACHE to a writable directory")
    if getattr(run, "out", None) is not None and run.command == "report":
        check_writable(Path(run.out), "choose a writable out=<dir>")
    hydra_cfg = cfg.get("hydra")
    if hydra_cfg is not None and str(hydra_cfg.get("mode")) == "RunMode.RUN":
        run_dir = Path(str(hydra_cfg.run.dir))
        if run.command in ("sample", "diagnose") and run.ckpt is not None:
            runs.resolve_checkpoint(run.ckpt)
        check_writable(run_dir, runs.RUN_DIR_FIX)
        check_run_dir(run, run_dir)  # reads only; run_command checks again under the lock
        runs.lock_run_dir(run_dir, rank)  # before Hydra writes .hydra/ into it
    return run


def check_device(run: Any) -> None:
    device = getattr(run, "device", "cpu")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            seen = f"only {count} CUDA device(s) are visible" if count else "no CUDA device is visible"
            raise RtkrunError(f"device={device} but {seen}; use device=cpu or device=auto")


def provenance(run: Any) -> dict[str, Any]:
    """Seed, config digest, input digest, code version and package versions recorded with every
    metrics file."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(rtkrun.__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {}
    for pkg in ("torch", "numpy", "hydra-core", "omegaconf", "scipy", "POT", "rdkit", "qm9pack"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "seed": run.seed,
        "command": run.command,
        "name": getattr(run, "name", None),  # report and bench runs carry no labels
        "tags": list(getattr(run, "tags", [])),
        "config_sha1": config_digest(run),
        "input_sha1": input_digest(run),
        "rtkrun/version": rtkrun.__version__,
        "rtkrun/git_commit": commit,
        "python": platform.python_version(),
        **{f"versions/{k}": v for k, v in versions.items()},
    }


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as metrics.json keys under ``prefix/`` (metrics.json is flat)."""
    return {f"{prefix}/{k}": v for k, v in values.items()}
