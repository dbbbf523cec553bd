"""The commands: one registry of (name, help, schema, function), and one thin module per command
that wires the layers together for one run directory (``commands/<name>.py``, function
``<name>(run, run_dir)``). Running a job (lock, skip-if-complete, record) is ``commands/run.py``.

The registry itself imports nothing heavy, so ``rtkrun --help`` answers without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Command:
    name: str  # also the primary config conf/<name>.yaml and the module rtkrun/commands/<name>.py
    help: str

    @property
    def function(self) -> Callable[[Any, Path], Any]:
        return getattr(importlib.import_module(f"rtkrun.commands.{self.name}"), self.name)

    @property
    def schema(self) -> type:
        """The dataclass its composed config is validated against."""
        from rtkrun.config import RUN_SCHEMAS

        return RUN_SCHEMAS[self.name]


COMMANDS = {
    c.name: c
    for c in (
        Command("train", "train a denoiser, then sample and score it (default: the 2-D mixture of Gaussians)"),
        Command("sample", "sample a checkpoint (ckpt=...) or an exact model with any sampler, and score it"),
        Command("evaluate", "score saved samples (samples=...)"),
        Command("diagnose", "regularity of the DDDM map along sampler trajectories and at data-derived x_t"),
        Command(
            "search", "T7: the fewest sampler steps that reach the exact sampler's quality (dataset=mog, exact score)"
        ),
        Command("report", "collect run directories (runs=...) into the paper's tables and figures"),
        Command("bench", "time training, samplers, diagnostics and layouts against references (preset=tiny|reference)"),
    )
}
