"""Samplers sharing one signature (see ``base``). ``SAMPLERS`` maps a config name to
(schema, function); the config's other fields are the function's keyword settings."""

from rtkrun.samplers import ddim, ddpm

SAMPLERS = {
    "ddpm": (ddpm.DDPMConfig, ddpm.ddpm),
    "ddim": (ddim.DDIMConfig, ddim.ddim),
}
