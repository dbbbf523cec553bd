"""Datasets: each gives a torch Dataset of (x0, global index), its sample shape, the prior noise
and which metrics score its samples. ``DATASETS`` maps a config name to (schema, module)."""

from rtkrun.data import mog

DATASETS = {"mog": (mog.MogConfig, mog)}
