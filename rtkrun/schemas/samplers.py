"""Schemas of the ``sampler`` group. A sampler's settings are declared once, by the keyword
arguments of its function (``steps: int = 50,  # network steps on the grid`` in
``rtkrun/samplers/ddim.py``): :func:`settings_schema` reads that signature from the source file
with :mod:`ast`, so a config is checked without importing the sampler, and with it torch. The range
checks of each sampler's settings sit below; ``tests/test_config.py`` checks that every schema
matches its imported function.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtkrun.errors import ConfigError

SAMPLER_SOURCES = Path(__file__).resolve().parent.parent / "samplers"  # rtkrun/samplers/<name>.py
NOT_SETTINGS = ("generator", "callback")  # keyword arguments every sampler takes
# the names a setting's annotation may use (evaluated without the module's imports)
ANNOTATION_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "None": None}
CURVATURE_GUESSES = ("auto", "model", "probe", "bound")  # RTK's step-size search start (rtk.curvature_guess)
SEGMENT_SPACES = ("t", "logsnr", "angle")  # how RTK spaces its segments


def check_budget(nfe: int | None) -> None:
    """An NFE budget (``sampler.nfe``), where set, is at least one network evaluation."""
    if nfe is not None and nfe < 1:
        raise ConfigError(f"nfe must be >= 1 (a budget of network evaluations) or null, got {nfe}")


def signature_settings(name: str) -> tuple[list[tuple[str, Any, Any]], str]:
    """(name, type, default) of each keyword setting of the function ``name`` in
    ``rtkrun/samplers/<name>.py``, and the text of its definition (whose comments are the help)."""
    path = SAMPLER_SOURCES / f"{name}.py"
    source = path.read_text(encoding="utf-8")
    found = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not found:
        raise LookupError(f"{path} defines no function {name}")
    fn = found[0]
    settings = []
    for arg, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
        if arg.arg in NOT_SETTINGS:
            continue
        if default is None or arg.annotation is None:
            raise LookupError(f"{path}: setting {arg.arg} of {name} needs a type and a default")
        kind = eval(ast.unparse(arg.annotation), {"__builtins__": {}}, ANNOTATION_NAMES)  # e.g. float | None
        settings.append((arg.arg, kind, ast.literal_eval(default)))
    return settings, ast.get_source_segment(source, fn) or ""


def settings_schema(name: str, check: Callable[[Any], None] | None = None) -> type:
    """The config schema of sampler ``name``: ``name``, one field per keyword setting of its
    function (with the function's defaults), then ``nfe`` (a budget the sampler's ``budget`` fits
    the settings to). ``check(cfg)`` raises :class:`ConfigError` for values out of range; the
    budget is always checked."""
    settings, definition = signature_settings(name)
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))]
    fields += [(key, kind, dataclasses.field(default=default)) for key, kind, default in settings]
    fields.append(("nfe", int | None, dataclasses.field(default=None)))

    def __post_init__(self: Any) -> None:
        check_budget(self.nfe)
        if check is not None:
            check(self)

    schema_name = "".join(part.upper() if len(part) <= 4 else part.title() for part in name.split("_")) + "Config"
    namespace = {
        "__post_init__": __post_init__,
        "__doc__": f"Settings of :func:`rtkrun.samplers.{name}.{name}` (its keyword defaults), plus the NFE budget.",
        "__settings_source__": definition,  # the signature whose comments describe each field
    }
    schema = dataclasses.make_dataclass(schema_name, fields, namespace=namespace)
    schema.__module__ = __name__  # importable (picklable) as rtkrun.schemas.samplers.<schema_name>
    return schema


def _check_steps(cfg: Any) -> None:
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1, got {cfg.steps}")


def _check_ddim(cfg: Any) -> None:
    _check_steps(cfg)
    if cfg.eta < 0:
        raise ConfigError(f"eta must be >= 0, got {cfg.eta}")


def _check_pf_ode(cfg: Any) -> None:
    _check_steps(cfg)
    if cfg.solver not in ("euler", "heun"):
        raise ConfigError(f"solver={cfg.solver!r} is unknown; choose euler or heun")


def _check_dddm(cfg: Any) -> None:
    if cfg.levels < 1 or cfg.iterations < 1:
        raise ConfigError(f"levels and iterations must be >= 1, got {cfg.levels}, {cfg.iterations}")
    if cfg.init not in ("noise", "zeros", "previous"):
        raise ConfigError(f"init={cfg.init!r} is unknown; choose noise, zeros or previous")
    if cfg.clip is not None and cfg.clip <= 0:
        raise ConfigError(f"clip must be > 0 or null, got {cfg.clip}")


def _check_segments(cfg: Any) -> None:
    """The range checks RTK-MALA and RTK-ULD share: segment and step counts, the segment
    spacing, the curvature guess and the step-size search's acceptance target."""
    if cfg.segments < 1 or cfg.inner_steps < 0 or cfg.warmup_steps < 0:
        raise ConfigError("segments must be >= 1, inner_steps and warmup_steps >= 0")
    if cfg.segment_space not in SEGMENT_SPACES:
        raise ConfigError(f"segment_space={cfg.segment_space!r} is unknown; choose t, logsnr or angle")
    if cfg.curvature not in CURVATURE_GUESSES:
        raise ConfigError(f"curvature={cfg.curvature!r} is unknown; choose one of {', '.join(CURVATURE_GUESSES)}")
    if not 0 < cfg.target_accept < 1:
        raise ConfigError(f"target_accept must be in (0, 1), got {cfg.target_accept}")


def _check_rtk_mala(cfg: Any) -> None:
    _check_segments(cfg)
    if cfg.gl_nodes < 1:
        raise ConfigError(f"gl_nodes must be >= 1, got {cfg.gl_nodes}")
    if cfg.step_size <= 0 or (cfg.segment_length is not None and cfg.segment_length <= 0):
        raise ConfigError(f"step_size and segment_length must be > 0, got {cfg.step_size}, {cfg.segment_length}")
    if cfg.energy not in ("exact", "trapezoid", "gauss_legendre"):
        raise ConfigError(f"energy={cfg.energy!r} is unknown; choose exact, trapezoid or gauss_legendre")
    if cfg.target not in ("score", "dddm"):
        raise ConfigError(f"target={cfg.target!r} is unknown; choose score or dddm")


def _check_rtk_uld(cfg: Any) -> None:
    _check_segments(cfg)
    if cfg.step_size <= 0 or cfg.friction <= 0:
        raise ConfigError(f"step_size and friction must be > 0, got {cfg.step_size}, {cfg.friction}")


DDPMConfig = settings_schema("ddpm", _check_steps)
DDIMConfig = settings_schema("ddim", _check_ddim)
PFODEConfig = settings_schema("pf_ode", _check_pf_ode)
DDDMConfig = settings_schema("dddm", _check_dddm)
RTKMALAConfig = settings_schema("rtk_mala", _check_rtk_mala)
RTKULDConfig = settings_schema("rtk_uld", _check_rtk_uld)
SAMPLER_SCHEMAS = {
    "ddpm": DDPMConfig,
    "ddim": DDIMConfig,
    "pf_ode": PFODEConfig,
    "dddm": DDDMConfig,
    "rtk_mala": RTKMALAConfig,
    "rtk_uld": RTKULDConfig,
}
