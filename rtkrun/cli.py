"""``rtkrun <command> [hydra overrides]``: one dispatcher, one module-level ``@hydra.main``.

Hydra has no sub-commands, so the command word is rewritten into ``--config-name=<command>``
before Hydra parses argv (and removed from ``COMP_LINE`` for shell completion). Launchers
pickle the task function, so it lives at module level here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rtkrun.commands import COMMANDS
from rtkrun.errors import RtkrunError
from rtkrun.paths import CONF_DIR

log = logging.getLogger("rtkrun")
PATH_KEYS = ("ckpt", "samples")  # inputs named in sweep job directories by a tag, not their path


def path_tag(value: str) -> str:
    """A short name for an input path in a directory name: its last part and a digest of its
    absolute form (``run_a-1f3e9c2b``), so jobs of a sweep over checkpoints never share one."""
    path = Path(value).expanduser()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[:40] or "path"
    return f"{name}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def job_dirname(override_dirname: str, task_overrides: list[str]) -> str:
    """A sweep job's directory name: Hydra's ``override_dirname`` (paths excluded; ``key-value``
    items joined by ``+``, conf/hydra_base.yaml) plus a :func:`path_tag` for each input path the
    job overrides, e.g. ``dddm_variant-paper+seed-1+ckpt-run_a-1f3e9c2b``. No ``=`` or ``,``, so
    the directory can itself be passed as ``ckpt=``; characters a path or an override cannot
    hold (``/``, brackets, quotes) become ``_``, with a digest of the raw name so jobs stay apart."""
    tags = []
    for override in task_overrides:
        key, _, value = str(override).partition("=")
        if key.lstrip("+~") in PATH_KEYS and value not in ("", "null", "data"):
            tags.append(f"{key.lstrip('+~')}-{path_tag(value)}")
    raw = "+".join([override_dirname, *tags] if override_dirname else tags) or "job"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", raw)
    return name if name == raw else f"{name}-{hashlib.sha1(raw.encode()).hexdigest()[:6]}"


OmegaConf.register_new_resolver("rtkrun_job_dirname", job_dirname, replace=True)
OmegaConf.register_new_resolver("rtkrun_name_suffix", lambda name: "" if name is None else f"_{name}", replace=True)
HYDRA_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--shell-completion",
    "-sc",
    "--info",
    "-i",
}

USAGE = (
    "usage: rtkrun <command> [overrides] [-m] [--cfg job] [--help]\n\ncommands:\n"
    + "".join(f"  {name:<10}{command.help}\n" for name, command in COMMANDS.items())
    + (
        "\nexamples:\n"
        "  rtkrun train                                   # the default experiment\n"
        "  rtkrun train dataset.dim=16 trainer.max_steps=4000\n"
        "  rtkrun sample model=mog_oracle sampler=ddim sampler.steps=100\n"
        "  rtkrun sample -m ckpt=outputs/train/RUN sampler.steps=5,10,20\n"
        "\n`rtkrun <command> --help` lists that command's groups and every key, one line each.\n"
    )
)


def fail(message: str, status: int = 2) -> None:
    """One line on stderr and exit status 2: the contract for every user error (a run stopped
    by a signal exits with 128 + its number instead, as shells expect)."""
    print(f"rtkrun: error: {message}", file=sys.stderr)
    sys.exit(status)


class Preflight(Callback):
    """Validates the composed config before Hydra creates or writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)  # the base config; each job re-validates its own overrides

    @staticmethod
    def _check(config: DictConfig) -> None:
        from rtkrun.commands.run import preflight

        try:
            preflight(config, launcher_rank())
        except RtkrunError as e:
            fail(str(e))


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> Any:
    from rtkrun.commands.run import run_command
    from rtkrun.distributed import adopt_launcher_tasks

    adopt_launcher_tasks()  # a multi-task submitit job: the variables torchrun would set

    try:
        return run_command(cfg, Path(HydraConfig.get().runtime.output_dir), launcher_rank())
    except RtkrunError as e:
        if HydraConfig.get().mode != RunMode.RUN:
            log.error("%s", e)
            raise  # a sweep records the failed job and goes on with the others
        # A single run: the job log keeps the error, the terminal gets the one stderr line.
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, str(e), None, None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        fail(str(e), getattr(e, "exit_code", 2))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        fail(f"environment variable {name}={value!r} is not an integer; unset it, or let torchrun set it")
        raise  # unreachable: fail exits


def launcher_rank() -> int:
    """This process's rank as torchrun announces it (WORLD_SIZE > 1), else 0 whatever a stray
    RANK variable says: a single process always takes its run directory's lock. The trainer
    takes it again on the process group's real rank once the group exists."""
    return _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0


def _task_overrides(overrides: list[str]) -> list[str]:
    """The overrides that are not Hydra flags (nor the values of flags that take one)."""
    plain, skip_next = [], False
    for arg in overrides:
        if skip_next:
            skip_next = False
        elif arg.startswith("-"):
            skip_next = arg in HYDRA_FLAGS_WITH_VALUE
        else:
            plain.append(arg)
    return plain


def check_sweep(command: str, overrides: list[str]) -> None:
    """Compose and validate every job of a ``-m`` sweep (command-line and config sweeps, as
    Hydra's basic sweeper expands them) before any job starts, so one bad value stops the sweep
    in one line naming the job instead of failing it halfway."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from rtkrun.config import validate

    parser = OverridesParser.create()
    plain = _task_overrides(overrides)
    try:
        parsed = parser.parse_overrides(plain)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            base = [o.input_line for o in parsed if not o.is_sweep_override()]
            hydra_cfg = compose(command, overrides=base, return_hydra_config=True).hydra
            params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
            (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(params + plain), None)
            for job in jobs:
                task = [o for o in job if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
                try:
                    validate(compose(command, overrides=task))
                except RtkrunError as e:
                    fail(f"sweep job {' '.join(task) or '(no overrides)'}: {e}")
    except HydraException as e:
        fail(f"cannot expand the sweep: {str(e).strip().splitlines()[0]}")


def check_overrides(command: str, overrides: list[str]) -> None:
    """Name an unknown key or group option in one line before Hydra composes (Hydra's own
    messages for these span several lines). Sweeps over groups are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    plain = _task_overrides(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except HydraException as e:
        fail(f"cannot parse overrides: {str(e).strip().splitlines()[0]}")
    conf = Path(CONF_DIR)
    groups, keys = [], []
    for o in parsed:
        name = o.key_or_group
        if name.startswith("hydra") or o.is_add() or o.is_force_add() or o.is_delete():
            continue
        if (conf / name).is_dir():
            if o.is_sweep_override():
                return
            option = o.value()
            if not (conf / name / f"{option}.yaml").is_file():
                options = sorted(p.stem for p in (conf / name).glob("*.yaml"))
                guess = _did_you_mean(str(option), options)
                fail(f"{name}={option} does not exist{guess}; choose one of: {', '.join(options)}")
            groups.append(o.input_line)
        else:
            keys.append(name)
    if not keys:
        return
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(command, overrides=groups)
    except HydraException as e:
        fail(str(e).strip().splitlines()[0])
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or not hasattr(node, "keys") or leaf not in node.keys():
            known = [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
            # a mistyped group (datset=qm9) reads as a top-level key: groups are candidates too
            groups_here = [p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"] if not parent else []
            guess = _did_you_mean(leaf, known + groups_here, f"{parent}." if parent else "")
            hint = f"; valid keys under {parent or 'the top level'}: {', '.join(known)}" if known else ""
            fail(f"unknown config key '{key}'{guess}{hint} (to add a new key on purpose use +{key}=...)")


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """ ", did you mean 'dataset'" for the closest choice, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f", did you mean '{prefix}{close[0]}'" if close else ""


def _cfg_job_requested(rest: list[str]) -> bool:
    for flag in ("--cfg", "-c"):
        if flag in rest:
            i = rest.index(flag)
            return i + 1 < len(rest) and rest[i + 1] == "job"
    return False


def print_checkpoint_job_config(command: str, rest: list[str], ckpt: str) -> None:
    """``--cfg job`` with ``ckpt=``: the composed config with the checkpoint's dataset, model
    and schedule, as the job will run it (Hydra alone would print the defaults)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rtkrun.build import with_checkpoint_groups
    from rtkrun.errors import RtkrunError
    from rtkrun.runs import load_checkpoint

    overrides = [a for a in _task_overrides(rest) if not a.startswith("hydra")]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(command, overrides=overrides)
    try:
        state = load_checkpoint(ckpt)
    except RtkrunError as e:
        fail(str(e))
    print(OmegaConf.to_yaml(with_checkpoint_groups(cfg, state["config"])), end="")


def print_command_help(command: str, rest: list[str]) -> None:
    """``rtkrun <command> [overrides] --help``: groups and every key with its composed value and
    what it is (rtkrun/config_help.py), after the overrides given."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from rtkrun.config_help import command_help

    overrides = [a for a in _task_overrides(rest) if not a.startswith("hydra")]
    check_overrides(command, overrides)
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(command, overrides=overrides)
    except HydraException as e:
        fail(str(e).strip().splitlines()[0])
    print(command_help(command, COMMANDS[command].help, cfg), end="")


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
    if any(a in ("--help", "-h") for a in rest):
        print_command_help(command, rest)
        return
    if not any(a in ("--hydra-help", "--info", "-i") for a in rest):
        check_overrides(command, rest)
        if any(a in ("-m", "--multirun") for a in rest):
            check_sweep(command, rest)
    if _env_int("WORLD_SIZE", 1) > 1:
        if command not in ("train", "sample"):
            fail(f"only `train` and `sample` run under torchrun; run `rtkrun {command}` as one process")
        if not any(a.startswith("hydra.run.dir=") for a in rest):
            # each process would stamp its own time into the default run directory
            fail("under torchrun pass hydra.run.dir=<dir> so that all processes share one run directory")
    if command in ("sample", "diagnose") and _cfg_job_requested(rest):
        ckpt = [a.split("=", 1)[1] for a in rest if a.startswith("ckpt=") and "," not in a]
        if ckpt:
            print_checkpoint_job_config(command, rest, ckpt[0])
            return
    sys.argv = [program, f"--config-name={command}", *rest]
    try:
        hydra_entry()
    except KeyboardInterrupt:
        # Ctrl-C outside training (which checkpoints and exits 130 itself): finished files are
        # whole, as every write is atomic; say so in one line instead of a traceback.
        fail("interrupted (Ctrl-C); files already written are complete: re-run the same command to go on", 130)


if __name__ == "__main__":
    main()
