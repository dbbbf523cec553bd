"""`make reproduce-small` and `make reproduce` are lists of rtkrun commands (Makefile): every
line composes, and every job of every sweep validates, before hours are spent running them."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rtkrun import cli

ROOT = Path(__file__).resolve().parents[1]


def rtkrun_lines(target: str) -> list[list[str]]:
    """The rtkrun command lines `make -n TARGET` would run, as argument lists."""
    text = subprocess.run(
        ["make", "-n", "--no-print-directory", target, "RTKRUN=rtkrun", "-o", ".venv/.installed"],  # not install
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("rtkrun ")]


def check_lines(target: str, every_job: bool, monkeypatch) -> None:
    from rtkrun.config import validate
    from tests.conftest import compose_cfg

    if not every_job:  # the last job of each sweep (a Hydra compose costs about half a second)
        compose_cfg("train")  # Hydra reloads its plugin modules once per process: patch after that
        BasicSweeper = sys.modules["hydra._internal.core_plugins.basic_sweeper"].BasicSweeper
        split = BasicSweeper.split_arguments

        def last(overrides, max_batch_size):
            (jobs,) = split(overrides, max_batch_size)
            return [jobs[-1:]]

        monkeypatch.setattr(BasicSweeper, "split_arguments", staticmethod(last))
    lines = rtkrun_lines(target)
    commands = [line[0] for line in lines]
    assert commands.count("report") == 1 and commands[-1] == "report"
    assert {"sample", "train", "diagnose", "evaluate", "search"} <= set(commands)
    for command, *rest in lines:
        if "-m" in rest:
            cli.check_sweep(command, [a for a in rest if a != "-m"])
        else:
            cli.check_overrides(command, rest)
            validate(compose_cfg(command, [a for a in rest if not a.startswith("hydra.")]))


def test_every_reproduce_small_line_composes_and_its_sweeps_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_lines("reproduce-small", every_job=False, monkeypatch=monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["reproduce-small", "reproduce"])
def test_every_job_of_every_reproduce_sweep_validates(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_lines(target, every_job=True, monkeypatch=monkeypatch)
