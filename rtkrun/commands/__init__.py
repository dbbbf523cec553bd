"""Commands: thin functions that wire the layers together for one run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtkrun.config import config_digest, to_dict, validate
from rtkrun.errors import RtkrunError
from rtkrun.runs import load_checkpoint, lock_run_dir, resolve_checkpoint

log = logging.getLogger("rtkrun")

# Keys that may change when a train run directory is reused (resume with more steps, a new
# evaluation, another logger); everything else must match the run that is already there.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.log_every",
    "trainer.ckpt_every",
    "trainer.ckpt_minutes",
    "evaluation",
    "logger",
    "device",
)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _saved_run(run_dir: Path) -> dict[str, Any] | None:
    """The config of the run a directory holds: Hydra's ``.hydra/config.yaml``; where a kill tore
    that file (Hydra writes it in place), the config inside the atomically written checkpoint;
    None where neither exists, i.e. no step was ever saved and there is nothing to protect."""
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.exists():
        try:
            return to_dict(validate(OmegaConf.load(saved)))
        except (RtkrunError, OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError, AttributeError):
            pass
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.exists():
        if saved.exists():
            log.warning("%s is unreadable (a killed start?) and no checkpoint exists; starting afresh", saved)
        return None
    config = load_checkpoint(ckpt)["config"]
    try:
        return to_dict(validate(config))
    except RtkrunError:
        raise RtkrunError(f"{run_dir} holds a run whose config no longer validates; use a new hydra.run.dir") from None


def check_resume_compatible(run, run_dir: Path) -> None:
    """A train run directory that already holds a run accepts only the same experiment."""
    old = _saved_run(run_dir)
    if old is None:
        return
    new = to_dict(run)
    old_flat, new_flat = _flat(old), _flat(new)
    changed = [
        k
        for k in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(k) != new_flat.get(k) and not k.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        k = changed[0]
        raise RtkrunError(
            f"{run_dir} already holds a run with {k}={old_flat.get(k)!r} (now {new_flat.get(k)!r}"
            f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}); "
            "resume it with the same settings or choose a new hydra.run.dir"
        )


def preflight(cfg: DictConfig) -> Any:
    """Everything that can fail before Hydra creates the run directory."""
    run = validate(cfg)
    hydra_cfg = cfg.get("hydra")
    if hydra_cfg is not None and str(hydra_cfg.get("mode")) == "RunMode.RUN":
        run_dir = Path(str(hydra_cfg.run.dir))
        if run.command == "train":
            check_resume_compatible(run, run_dir)
        if run.command in ("sample", "diagnose") and run.ckpt is not None:
            resolve_checkpoint(run.ckpt)
        existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
        import os

        if not os.access(existing, os.W_OK):
            raise RtkrunError(
                f"output directory {run_dir} is not writable ({existing}); set hydra.run.dir=<writable path>"
            )
        lock_run_dir(run_dir)  # before Hydra writes .hydra/ into it
    return run


def finished(run, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a sample/diagnose/evaluate job this directory already finished with exactly
    this config (a re-launched sweep skips it), else None. Train runs resume instead."""
    path = run_dir / "metrics.json"
    if run.command in ("train", "bench") or not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    done = metrics.get("status") == "complete" and metrics.get("config_sha1") == config_digest(run)
    return metrics if done else None


def run_command(cfg: DictConfig, run_dir: Path) -> Any:
    run = validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)  # sweep jobs (and in-process callers) lock their own directory here
    previous = finished(run, run_dir)
    if previous is not None:
        log.info("%s holds this finished %s job: skipped (delete its metrics.json to redo it)", run_dir, run.command)
        return previous
    if run.command == "train":
        from rtkrun.commands.train import train

        return train(run, run_dir)
    if run.command == "sample":
        from rtkrun.commands.sample import sample

        return sample(run, run_dir)
    if run.command == "diagnose":
        from rtkrun.commands.diagnose import diagnose

        return diagnose(run, run_dir)
    if run.command == "bench":
        from rtkrun.commands.bench import bench

        return bench(run, run_dir)
    if run.command == "report":
        from rtkrun.commands.report import report

        return report(run, run_dir)
    from rtkrun.commands.evaluate import evaluate

    return evaluate(run, run_dir)
