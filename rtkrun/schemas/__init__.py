"""What each config group accepts: one dataclass per option (``dataset=mog`` → :class:`MogConfig`),
with its defaults, one comment per field (the ``--help`` lines) and its range checks.

These modules import neither torch nor the implementations, so ``rtkrun/config.py`` refuses a bad
value in well under a second, before any heavy import and before a run directory exists. The
implementations import their schema from here. A sampler's schema is still declared by its
function's signature: :mod:`rtkrun.schemas.samplers` reads the signature from the source.
"""
