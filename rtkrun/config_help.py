"""``rtkrun <command> --help``: the groups the command composes (their options, the one chosen)
and every key of the composed config with its value and one line saying what it is.

The lines are the comments beside the schema fields (``name: type = default  # what it is``):
the schemas are the one source, so help cannot drift from what validation accepts. A sampler's
schema is built from its function, so its lines are the comments of the function's signature.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtkrun.config import GROUPS, RUN_SCHEMAS, DiagnosticsConfig, EvaluationConfig, SearchConfig, TrainerConfig
from rtkrun.paths import CONF_DIR

DECLARATION = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")
SECTIONS = {
    "trainer": TrainerConfig,
    "evaluation": EvaluationConfig,
    "diagnostics": DiagnosticsConfig,
    "search": SearchConfig,
}
# fields no source line declares: the group's selector, the command, the NFE budget settings_schema adds
GENERATED = {
    "name": "the option chosen (the group's name)",
    "command": "set by the command word",
    "nfe": "a budget of network evaluations: the sampler's settings are fitted to it (null: as set)",
}


def field_comments(schema: type) -> dict[str, str]:
    """Field name -> the comment on its declaration, over the schema's bases (and, for a schema
    built by ``settings_schema``, over its sampler function's signature)."""
    out: dict[str, str] = {}
    sources = [c for c in reversed(schema.__mro__) if c is not object]
    texts = []
    for source in sources:
        try:
            texts.append(inspect.getsource(source))
        except (OSError, TypeError):  # a class made at run time (a sampler's): it carries its signature
            pass
    texts.append(getattr(schema, "__settings_source__", ""))
    for text in texts:
        above = ""  # a comment line just above a declaration too long to carry one
        for line in text.splitlines():
            found = DECLARATION.match(line)
            bare = re.match(r"^\s+(\w+)\s*:[^#]*$", line)
            if found:
                out[found.group(1)] = found.group(2)
            elif bare and above:
                out[bare.group(1)] = above
            above = line.strip()[1:].strip() if line.strip().startswith("#") else ""
    return out


def command_groups(command: str) -> list[str]:
    """The config groups a command's primary config composes (its defaults list)."""
    primary = yaml.safe_load((Path(CONF_DIR) / f"{command}.yaml").read_text())
    groups = []
    for entry in primary.get("defaults", []):
        if isinstance(entry, dict):
            name = next(iter(entry)).removeprefix("optional ").strip()
            if (Path(CONF_DIR) / name).is_dir():
                groups.append(name)
    return groups


def _schema_of(section: str, node: Any) -> type | None:
    if section in SECTIONS:
        return SECTIONS[section]
    if section in GROUPS and isinstance(node, dict) and node.get("name") in GROUPS[section]:
        return GROUPS[section][node["name"]]
    return None


def _shown(value: Any) -> str:
    """A value in one line, as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def _rows(prefix: str, node: dict[str, Any], schema: type | None) -> list[tuple[str, str, str]]:
    notes = {**GENERATED, **(field_comments(schema) if schema is not None and is_dataclass(schema) else {})}
    rows = []
    for key, value in node.items():
        if key == "samplers" and prefix == "evaluation.":  # label -> sampler: one line each
            for label, sampler in (value or {}).items():
                rows.append((f"evaluation.samplers.{label}", _shown(sampler), "an evaluation sampler (label: config)"))
            continue
        note = notes.get(str(key), "")
        if value == "???":
            note = f"required: {note}" if note else "required"
        rows.append((prefix + str(key), _shown(value), note))
    return rows


def command_help(command: str, help_text: str, cfg: DictConfig) -> str:
    """The help page of ``command`` for the composed config ``cfg`` (after any overrides given)."""
    usage = f"usage: rtkrun {command} [group=option] [key=value] [-m] [--cfg job]"
    lines = [f"rtkrun {command}: {help_text}", "", usage, "", "groups (group=option; the composed choice first):"]
    task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    try:
        plain = OmegaConf.to_container(task, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation on a missing value: show it unresolved
        plain = OmegaConf.to_container(task, resolve=False, throw_on_missing=False)
    for group in command_groups(command):
        options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        node = plain.get(group)
        chosen = node.get("name") if isinstance(node, dict) else None
        order = [chosen] + [o for o in options if o != chosen] if chosen in options else options
        lines.append(f"  {group:<14}{' | '.join(order)}")
    lines += ["", "keys (key=value; the composed value, then what it is):"]
    rows = []
    for key, value in plain.items():
        if isinstance(value, dict):
            rows += _rows(f"{key}.", value, _schema_of(str(key), value))
        else:
            rows += _rows("", {key: value}, RUN_SCHEMAS[command])
    width = min(max(len(k) for k, _, _ in rows) + 2, 36)
    for key, value, note in rows:
        value = value if len(value) <= 24 else value[:21] + "..."
        lines.append(f"  {key:<{width}}{value:<26}{note}".rstrip())
    lines += ["", "Sweep with -m key=a,b,c; print the composed config with --cfg job; Hydra's own help: --hydra-help."]
    return "\n".join(lines) + "\n"
