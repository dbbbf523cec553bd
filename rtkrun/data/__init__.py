"""Datasets: each gives a torch Dataset of (x0, global index), its sample shape, the prior noise
and which metrics score its samples. ``DATASETS`` maps a config name to (schema, module)."""

from rtkrun.data import cifar10, mog, qm9

DATASETS = {
    "mog": (mog.MogConfig, mog),
    "cifar10": (cifar10.Cifar10Config, cifar10),
    "qm9": (qm9.QM9Config, qm9),
}
