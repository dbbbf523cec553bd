"""Reading run directories for the tables: which directories exist, what they ran
(``.hydra/config.yaml``), what they measured (``metrics.json``), and how rows sort."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtkrun import runs

VARIANT_KEYS = ("energy", "solver", "levels", "segment_length", "step_size", "eta", "target")


def find_runs(roots: list[str | Path]) -> list[Path]:
    """Every directory under ``roots`` holding ``.hydra/config.yaml`` (single runs and sweep jobs)."""
    found = set()
    for root in map(Path, roots):
        for cfg in root.rglob(".hydra/config.yaml"):
            found.add(cfg.parent.parent)
    return sorted(found)


def damage(run_dir: Path) -> str | None:
    """Why a run directory cannot be read (a torn ``.hydra/config.yaml`` or ``metrics.json``,
    as a kill during a write leaves them), or None."""
    try:
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception as e:  # YAML and OmegaConf raise many types for a torn file
        return f".hydra/config.yaml is unreadable ({type(e).__name__})"
    if not isinstance(cfg, DictConfig):
        return ".hydra/config.yaml is not a mapping"
    try:
        runs.read_json_object(run_dir / "metrics.json")
    except runs.DamagedFile as e:
        return str(e).removeprefix(f"{run_dir}/")
    return None


def run_config(run_dir: Path, resolve: bool = False) -> dict[str, Any]:
    """The config a run directory recorded (``.hydra/config.yaml``) as a plain dict."""
    return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=resolve)


def sampler_defaults(name: str | None) -> dict[str, Any]:
    """The defaults of sampler ``name``'s settings (its function's keyword defaults); {} if unknown."""
    from rtkrun.samplers import SAMPLERS

    if name not in SAMPLERS:
        return {}
    fields = dataclasses.fields(SAMPLERS[name].schema)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def used_settings(sampler: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``VARIANT_KEYS`` settings a run used: the effective ones metrics.json recorded
    (``settings/…``, after an NFE budget was fitted) where present, else the config's."""
    settings = settings or {}
    used = {k: settings.get(k, sampler.get(k)) for k in VARIANT_KEYS}
    return {k: v for k, v in used.items() if v not in (None, "")}


def _label_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def variant(
    sampler: dict[str, Any], settings: dict[str, Any] | None = None, shown: set[str] | frozenset = frozenset()
) -> str:
    """What tells a sampler's rows apart: each setting it used that differs from the sampler's
    default, and each setting in ``shown`` (those that vary among a table's rows of this sampler,
    so a swept value keeps its label even where it equals the default)."""
    defaults = sampler_defaults(sampler.get("name"))
    used = used_settings(sampler, settings)
    missing = object()
    return " ".join(f"{k}={_label_value(v)}" for k, v in used.items() if k in shown or defaults.get(k, missing) != v)


def varying_settings(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Per sampler, the settings (of each row's ``used``) that take two or more values in ``rows``."""
    values: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        for k, v in (r.get("used") or {}).items():
            values.setdefault(str(r.get("sampler")), {}).setdefault(k, set()).add(_label_value(v))
    return {name: {k for k, seen in keys.items() if len(seen) > 1} for name, keys in values.items()}


def prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The metrics under ``prefix`` with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def round3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def scored_rows(run_dir: Path) -> list[dict[str, Any]]:
    """What a ``sample``, ``train`` or ``evaluate`` run directory measured, one entry per sampler:
    {source, sampler, variant, nfe, seconds, scores, seed, status, run_dir}. A sample run gives
    one entry, a train run one per evaluation sampler, an evaluate run one (re-scored samples,
    or ``samples=data``: the data row). Without ``metrics.json`` the job is listed as failed."""
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    command = cfg.get("command")
    base = {"seed": cfg.get("seed"), "run_dir": str(run_dir)}
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        sampler = cfg.get("sampler") or {}
        row = {"source": f"rtkrun: {command}", "sampler": sampler.get("name"), "variant": variant(sampler)}
        return [{**base, **row, "scores": {}, "status": "failed or unfinished"}]
    m = json.loads(metrics_path.read_text())
    base["status"] = m.get("status")

    def scores(prefix: str) -> dict[str, Any]:
        return prefixed(m, prefix)

    if command == "sample":
        sampler = cfg["sampler"]
        label = variant(sampler, prefixed(m, "settings/"))
        row = {"source": "rtkrun", "sampler": sampler["name"], "variant": label, "nfe": m.get("nfe")}
        return [{**base, **row, "seconds": m.get("seconds"), "scores": scores("sample/")}]
    if command == "evaluate":
        data = str(m.get("samples", "")).startswith("data:")
        row = {"source": f"rtkrun: {m['samples']}" if data else "rtkrun: re-scored", "sampler": "" if data else "?"}
        return [{**base, **row, "scores": scores("evaluate/")}]
    rows = []
    for label, sampler in (cfg.get("evaluation") or {}).get("samplers", {}).items():
        found = scores(f"eval/{label}/")
        used = variant(sampler, prefixed(found, "settings/"))
        row = {"source": f"rtkrun: train/{label}", "sampler": sampler.get("name"), "variant": used}
        rows.append({**base, **row, "nfe": found.get("nfe"), "seconds": found.get("seconds"), "scores": found})
    return rows


def per_item_ms(row: dict[str, Any], n: int | None) -> float | None:
    return round3(1e3 * row["seconds"] / n) if n and row.get("seconds") else None


def dataset_of(run_dir: Path) -> str | None:
    """The dataset a run directory measured (a checkpoint fixes it, so metrics.json comes first)."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        try:
            name = json.loads(metrics.read_text()).get("dataset/name")
        except (OSError, ValueError):
            name = None
        if name is not None:
            return name
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return (cfg.get("dataset") or {}).get("name")


def natural_key(text: Any) -> tuple:
    """Sort key that orders the numbers inside a label by value: steps=5 before steps=10,
    step_size=0.05 before step_size=0.1."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", str(text))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def dim_order(data: str) -> tuple:
    """mog d=2 before mog d=16 (numerically), then the rest by name."""
    found = re.match(r"mog d=(\d+)", data)
    return (0, int(found.group(1)), "") if found else (1, 0, data)


def _with_trained_inputs(run_dirs: list[Path]) -> list[Path]:
    """The run directories with a Hydra record, preceded by the train runs their ``ckpt`` names
    (a diagnose or sample run's model was made by a command too)."""
    recorded = [p for p in run_dirs if (p / ".hydra" / "overrides.yaml").is_file()]
    trained = []
    for run_dir in recorded:
        ckpt = OmegaConf.load(run_dir / ".hydra" / "config.yaml").get("ckpt")
        if ckpt:
            path = Path(str(ckpt))
            for candidate in (path, path.parent.parent):  # a run directory, or its checkpoints/last.pt
                if (candidate / ".hydra" / "overrides.yaml").is_file() and candidate not in trained:
                    trained.append(candidate)
                    break
    return trained + recorded


def commands_that_made(run_dirs: list[Path]) -> list[str]:
    """The rtkrun command lines that made these run directories: each run's own overrides
    (``.hydra/overrides.yaml``), with runs that differ in one setting only merged into a sweep
    (``-m key=a,b``) until none can be; each line expands to exactly its runs. The train runs a
    ``ckpt`` names come too; directories without a Hydra record (older step searches) do not."""
    runs_seen: set[tuple] = set()
    for run_dir in _with_trained_inputs(run_dirs):
        command = str(OmegaConf.load(run_dir / ".hydra" / "config.yaml").get("command"))
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
        runs_seen.add((command, tuple(sorted((k, (v,)) for k, v in overrides.items()))))
    lines = set(runs_seen)
    merged = True
    while merged:
        merged = False
        for key in sorted({k for _, items in lines for k, _ in items}):
            groups: dict[tuple, list[tuple]] = {}
            for command, items in lines:
                rest = tuple(i for i in items if i[0] != key)
                if len(rest) < len(items):
                    groups.setdefault((command, rest), []).append(dict(items)[key])
            for (command, rest), values in groups.items():
                if len(values) > 1:
                    for v in values:
                        lines.discard((command, tuple(sorted((*rest, (key, v))))))
                    joined = tuple(sorted({x for v in values for x in v}, key=natural_key))
                    lines.add((command, tuple(sorted((*rest, (key, joined))))))
                    merged = True
    shown = []
    for command, items in sorted(lines):
        sweep = ["-m"] if any(len(v) > 1 for _, v in items) else []
        shown.append(" ".join(["rtkrun", command, *sweep, *(f"{k}={','.join(v)}" for k, v in items)]))
    return shown
