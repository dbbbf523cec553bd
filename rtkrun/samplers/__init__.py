"""Samplers sharing one signature (see ``base``). ``SAMPLERS`` maps a config name to
(schema, function); the config's other fields are the function's keyword settings."""

from rtkrun.samplers import dddm, ddim, ddpm, pf_ode, rtk_mala, rtk_uld

SAMPLERS = {
    "ddpm": (ddpm.DDPMConfig, ddpm.ddpm),
    "ddim": (ddim.DDIMConfig, ddim.ddim),
    "pf_ode": (pf_ode.PFODEConfig, pf_ode.pf_ode),
    "dddm": (dddm.DDDMConfig, dddm.dddm),
    "rtk_mala": (rtk_mala.RTKMALAConfig, rtk_mala.rtk_mala),
    "rtk_uld": (rtk_uld.RTKULDConfig, rtk_uld.rtk_uld),
}
