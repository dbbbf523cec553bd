"""Datasets, each a :class:`rtkrun.data.base.DiffusionDataset` (the contract: batches, space,
sampling start, scoring, pictures and files). ``DATASETS`` maps a config name to (schema, class);
the class builds the dataset from its validated config."""

from rtkrun.data.cifar10 import Cifar10Config, Cifar10Dataset
from rtkrun.data.mog import MogConfig, MogDataset
from rtkrun.data.qm9 import QM9Config, QM9Dataset

DATASETS = {
    "mog": (MogConfig, MogDataset),
    "cifar10": (Cifar10Config, Cifar10Dataset),
    "qm9": (QM9Config, QM9Dataset),
}
