"""Running one job of a command in its run directory: lock it, refuse what would replace what it
holds, skip it when finished with this config and input, record the experiment, then call the
command's function (``COMMANDS``). What a run directory may hold is ``rtkrun/rundir.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rtkrun import rundir
from rtkrun.commands import COMMANDS
from rtkrun.config import validate
from rtkrun.errors import RtkrunError
from rtkrun.runs import lock_run_dir, unlock_run_dir

log = logging.getLogger("rtkrun")

preflight = rundir.preflight


def run_command(cfg: DictConfig, run_dir: Path, rank: int = 0) -> Any:
    """Run one job in ``run_dir``: lock it, refuse what would replace what it holds, skip it when
    finished with this config and input, record the experiment, then run the command."""
    run = validate(cfg)
    took_lock = lock_run_dir(run_dir, rank)  # sweep jobs (and in-process callers) lock their directory here
    try:
        return _run_locked(run, run_dir, rank)
    finally:
        if took_lock:
            unlock_run_dir(run_dir)


def _run_locked(run: Any, run_dir: Path, rank: int) -> Any:
    try:
        rundir.check_run_dir(run, run_dir)
    except RtkrunError:
        rundir.restore_hydra_files(run_dir)  # a sweep job's Hydra already wrote its .hydra/ here
        raise
    previous = rundir.finished(run, run_dir)
    if previous is not None:
        log.info("%s holds this finished %s job: skipped (delete its metrics.json to redo it)", run_dir, run.command)
        return previous
    if rank == 0:
        rundir.write_record(run, run_dir)
    return COMMANDS[run.command].function(run, run_dir)
