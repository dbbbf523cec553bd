"""Samplers sharing one signature (see ``base``). ``SAMPLERS`` maps a config name to
(schema, function); the config's other fields are the function's keyword settings.

Every sampler config also takes ``nfe``, a budget of network evaluations: ``settings_for``
fits that sampler's own knobs to it, so one sweep ``sampler=ddim,rtk_mala,… sampler.nfe=1,2,5``
compares samplers at equal NFE. The NFE a run really used is always counted, never inferred.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from rtkrun.samplers import dddm, ddim, ddpm, pf_ode, rtk_mala, rtk_uld

log = logging.getLogger("rtkrun")

SAMPLERS = {
    "ddpm": (ddpm.DDPMConfig, ddpm.ddpm),
    "ddim": (ddim.DDIMConfig, ddim.ddim),
    "pf_ode": (pf_ode.PFODEConfig, pf_ode.pf_ode),
    "dddm": (dddm.DDDMConfig, dddm.dddm),
    "rtk_mala": (rtk_mala.RTKMALAConfig, rtk_mala.rtk_mala),
    "rtk_uld": (rtk_uld.RTKULDConfig, rtk_uld.rtk_uld),
}


RTK_MIN_STEPS = 6  # MALA/BAOAB steps a segment needs before another segment is worth its cost


def _rtk_budget(s: dict[str, Any], nfe: int) -> dict[str, Any]:
    """Segments and steps for an RTK sampler within ``nfe``, favouring steps over segments.

    NFE = 1 + segments·(1 + probe + c·(warm-up + inner steps)): the first x0_hat, then per
    segment the score at the DDIM jump, the curvature probe (one evaluation, unless
    ``curvature`` is ``model`` or ``bound``; ``auto`` counts it, so a model with an exact
    Hessian scale spends one fewer per segment than the budget) and c evaluations per step
    (1, or 1 + gl_nodes for Gauss–Legendre energies). The last x0_hat and the x0_hat that
    starts each segment come from scores already computed. A segment gives half its steps to
    the warm-up, at most ``warmup_steps``.
    """
    per_step = 1 + s["gl_nodes"] if s.get("energy") == "gauss_legendre" else 1
    probe = 0 if s["curvature"] in ("model", "bound") else 1
    if nfe < 2:  # the budget is a promise: say where it cannot be kept (the counted NFE is recorded)
        log.warning(
            "an RTK sampler needs at least 2 NFE (the first x0_hat and a score after the jump); nfe=%d runs 2", nfe
        )
    segments = max(1, min(s["segments"], (nfe - 1) // (1 + probe + per_step * RTK_MIN_STEPS)))
    steps = ((nfe - 1) // segments - 1 - probe) // per_step
    if steps <= 0:  # no room for a step: the probe would be wasted too
        return {**s, "segment_length": None, "segments": segments, "warmup_steps": 0, "inner_steps": 0}
    warmup = min(s["warmup_steps"], steps // 2)
    return {**s, "segment_length": None, "segments": segments, "warmup_steps": warmup, "inner_steps": steps - warmup}


def _budget(name: str, s: dict[str, Any], nfe: int) -> dict[str, Any]:
    if name in ("ddim", "ddpm"):
        return {**s, "steps": nfe}
    if name == "pf_ode":  # Heun: 2 NFE per step, 1 for the last
        return {**s, "steps": max(1, (nfe + 1) // 2) if s["solver"] == "heun" else nfe}
    if name == "dddm":  # keep the configured number of levels, spend the rest on iterations
        levels = min(s["levels"], nfe)
        return {**s, "levels": levels, "iterations": max(1, nfe // levels)}
    return _rtk_budget(s, nfe)


def settings_for(cfg: Any) -> dict[str, Any]:
    """Keyword settings of a validated sampler config, fitted to its ``nfe`` budget if set."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("name", "nfe")}
    return settings if cfg.nfe is None else _budget(cfg.name, settings, cfg.nfe)
