"""Building the pieces of a run from its validated config: the device, the dataset, the
schedule and the model, and the trained model of a checkpoint (which fixes the dataset, model and
schedule, and is recorded as what ran)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig

from rtkrun import runs
from rtkrun.config import typed_group
from rtkrun.data import DATASETS
from rtkrun.data.base import DiffusionDataset
from rtkrun.diffusion.schedules import build_schedule
from rtkrun.errors import RtkrunError
from rtkrun.models import MODELS, needs_training

log = logging.getLogger("rtkrun")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RtkrunError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def build_dataset(cfg) -> DiffusionDataset:
    """The dataset a validated dataset config describes."""
    return DATASETS[cfg.name][1](cfg)


def build_model(cfg, dataset, schedule) -> torch.nn.Module:
    return MODELS[cfg.name][1](cfg, dataset, schedule)


def build_parts(run, seed: int):
    """(dataset, schedule, model) for a validated run config; model init seeded by ``seed``."""
    dataset = build_dataset(run.dataset)
    schedule = build_schedule(run.schedule)
    torch.manual_seed(seed)
    model = build_model(run.model, dataset, schedule)
    return dataset, schedule, model


FIXED_BY_CHECKPOINT = ("dataset", "model", "schedule")


def _overridden_groups() -> list[str]:
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not under Hydra (tests calling a command directly)
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return [k for k in keys if k.split(".")[0] in FIXED_BY_CHECKPOINT]


def with_checkpoint_groups(cfg, checkpoint_config: dict[str, Any]):
    """``cfg`` (a composed config) with the dataset, model and schedule a checkpoint was
    trained with: what ``sample`` and ``diagnose`` run, whatever the defaults say."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for group in FIXED_BY_CHECKPOINT:
        cfg[group] = checkpoint_config[group]
    return cfg


def _record_checkpoint_groups(checkpoint_config: dict[str, Any]) -> None:
    """Rewrite the job's ``.hydra/config.yaml`` with the checkpoint's groups, so the recorded
    config is what ran (Hydra wrote the composed defaults before the checkpoint was read)."""
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    if not hydra.output_subdir:
        return
    path = Path(hydra.runtime.output_dir) / hydra.output_subdir / "config.yaml"
    if path.is_file():
        fixed = with_checkpoint_groups(OmegaConf.load(path), checkpoint_config)
        runs.atomic_write_bytes(path, OmegaConf.to_yaml(fixed).encode())


def load_trained_parts(run):
    """(dataset, schedule, model) for ``sample`` and ``diagnose``: from ``run.ckpt`` (which fixes
    dataset, model and schedule; its EMA weights), or a model that needs no training."""
    state = None
    if run.ckpt is not None:
        clash = _overridden_groups()
        if clash:
            raise RtkrunError(f"ckpt={run.ckpt} fixes dataset, model and schedule; drop the override {clash[0]}")
        state = runs.load_checkpoint(run.ckpt)
        for group in FIXED_BY_CHECKPOINT:
            try:
                setattr(run, group, typed_group(group, state["config"][group]))
            except RtkrunError as e:
                raise RtkrunError(f"{e} (in the config recorded in checkpoint {run.ckpt}); retrain it") from None
        _record_checkpoint_groups(state["config"])
    dataset, schedule, model = build_parts(run, run.seed)
    if state is not None:
        try:
            model.load_state_dict(state["ema"])
        except RuntimeError as e:
            raise RtkrunError(
                f"checkpoint {run.ckpt} does not fit model {run.model.name}: {str(e).splitlines()[0]}"
            ) from None
        log.info("loaded the EMA weights of %s (step %d)", runs.resolve_checkpoint(run.ckpt), state["step"])
    elif needs_training(model):
        raise RtkrunError(
            f"model={run.model.name} must be trained first: pass ckpt=<train run directory>, "
            "or use a model that needs no training (model=mog_oracle)"
        )
    return dataset, schedule, model
