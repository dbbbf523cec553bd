"""Samplers sharing one signature (see ``base``). ``SAMPLERS`` maps a config name to a
:class:`Sampler`: its schema (``rtkrun/schemas/samplers.py``, read from the function's
signature), its function (the config's other fields are the function's keyword
settings) and its ``budget``.

Every sampler config also takes ``nfe``, a budget of network evaluations: the sampler's own
``budget(settings, nfe)`` fits its knobs to it, so one sweep ``sampler=ddim,rtk_mala,…
sampler.nfe=1,2,5`` compares samplers at equal NFE. The NFE a run really used is always
counted, never inferred.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from rtkrun.samplers import dddm, ddim, ddpm, pf_ode, rtk_mala, rtk_uld
from rtkrun.schemas.samplers import SAMPLER_SCHEMAS as SCHEMA


class Sampler(NamedTuple):
    schema: type
    fn: Callable[..., Any]
    budget: Callable[[dict[str, Any], int], dict[str, Any]]


SAMPLERS = {
    "ddpm": Sampler(SCHEMA["ddpm"], ddpm.ddpm, ddpm.budget),
    "ddim": Sampler(SCHEMA["ddim"], ddim.ddim, ddim.budget),
    "pf_ode": Sampler(SCHEMA["pf_ode"], pf_ode.pf_ode, pf_ode.budget),
    "dddm": Sampler(SCHEMA["dddm"], dddm.dddm, dddm.budget),
    "rtk_mala": Sampler(SCHEMA["rtk_mala"], rtk_mala.rtk_mala, rtk_mala.budget),
    "rtk_uld": Sampler(SCHEMA["rtk_uld"], rtk_uld.rtk_uld, rtk_uld.budget),
}


def settings_for(cfg: Any) -> dict[str, Any]:
    """Keyword settings of a validated sampler config, fitted to its ``nfe`` budget if set."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("name", "nfe")}
    return settings if cfg.nfe is None else SAMPLERS[cfg.name].budget(settings, cfg.nfe)
