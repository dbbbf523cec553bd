"""``rtkrun <command> [hydra overrides]``: one dispatcher, one module-level ``@hydra.main``.

Hydra has no sub-commands, so the command word is rewritten into ``--config-name=<command>``
before Hydra parses argv (and removed from ``COMP_LINE`` for shell completion). Launchers
pickle the task function, so it lives at module level here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from rtkrun.errors import RtkrunError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
COMMANDS = {
    "train": "train a denoiser, then sample and score it (default: the 2-D mixture of Gaussians)",
    "sample": "sample a checkpoint (ckpt=...) or an exact model with any sampler, and score it",
    "evaluate": "score saved samples (samples=...)",
}
log = logging.getLogger("rtkrun")

USAGE = "usage: rtkrun <command> [overrides] [-m] [--cfg job] [--help]\n\ncommands:\n" + "".join(
    f"  {name:<10}{text}\n" for name, text in COMMANDS.items()
) + (
    "\nexamples:\n"
    "  rtkrun train                                   # the default experiment\n"
    "  rtkrun train dataset.dim=16 trainer.max_steps=4000\n"
    "  rtkrun sample model=mog_oracle sampler=ddim sampler.steps=100\n"
    "  rtkrun sample -m ckpt=outputs/train/RUN sampler.steps=5,10,20\n"
    "\n`rtkrun <command> --help` lists that command's config groups and keys.\n"
)


def fail(message: str) -> None:
    """One line on stderr and exit status 2: the contract for every user error."""
    print(f"rtkrun: error: {message}", file=sys.stderr)
    sys.exit(2)


class Preflight(Callback):
    """Validates the composed config before Hydra creates or writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)  # the base config; each job re-validates its own overrides

    @staticmethod
    def _check(config: DictConfig) -> None:
        from rtkrun.commands import preflight

        try:
            preflight(config)
        except RtkrunError as e:
            fail(str(e))


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> Any:
    from rtkrun.commands import run_command

    try:
        return run_command(cfg, Path(HydraConfig.get().runtime.output_dir))
    except RtkrunError as e:
        log.error("%s", e)
        if HydraConfig.get().mode == RunMode.RUN:
            sys.exit(2)
        raise  # a sweep records the failed job and goes on with the others


def _rewrite_completion_line(env: dict[str, str]) -> str | None:
    """Drop the command word from COMP_LINE (and shift COMP_POINT); return the command."""
    line = env.get("COMP_LINE", "")
    words = line.split(" ")
    if len(words) >= 2 and words[1] in COMMANDS and len(words) > 2:
        cut = len(words[0]) + 1 + len(words[1])
        env["COMP_LINE"] = words[0] + line[cut:]
        if "COMP_POINT" in env:
            env["COMP_POINT"] = str(max(int(env["COMP_POINT"]) - (len(words[1]) + 1), 0))
        return words[1]
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "rtkrun"
    if "-sc" in argv or "--shell-completion" in argv:
        command = _rewrite_completion_line(os.environ)
        words = os.environ.get("COMP_LINE", "").split(" ")
        if command is None and any(a.startswith("query") for a in argv) and len(words) <= 2:
            prefix = words[1] if len(words) == 2 else ""
            print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
            return
        sys.argv = [program, f"--config-name={command or 'train'}", *argv]
        hydra_entry()
        return
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (see rtkrun --help)")
    sys.argv = [program, f"--config-name={command}", *rest]
    hydra_entry()


if __name__ == "__main__":
    main()
