"""``rtkrun sample``: sample a checkpoint (or a model that needs no training) with one sampler,
write ``samples/samples.npz`` + a picture, and score the samples into ``metrics.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from rtkrun import runs
from rtkrun.commands.common import (
    build_parts,
    draw_samples,
    flatten,
    provenance,
    resolve_device,
    save_samples,
    score,
)
from rtkrun.config import typed_group
from rtkrun.data import DATASETS
from rtkrun.errors import RtkrunError
from rtkrun.models import needs_training

log = logging.getLogger("rtkrun")
FIXED_BY_CHECKPOINT = ("dataset", "model", "schedule")


def _overridden_groups() -> list[str]:
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not under Hydra (tests calling sample() directly)
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return [k for k in keys if k.split(".")[0] in FIXED_BY_CHECKPOINT]


def sample(run, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(run.device)
    state = None
    if run.ckpt is not None:
        clash = _overridden_groups()
        if clash:
            raise RtkrunError(f"ckpt={run.ckpt} fixes dataset, model and schedule; drop the override {clash[0]}")
        state = runs.load_checkpoint(run.ckpt)
        saved = state["config"]
        for group in FIXED_BY_CHECKPOINT:
            setattr(run, group, typed_group(group, saved[group], f"checkpoint {group}"))
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
    model = model.to(device)
    samples, info = draw_samples(
        model,
        run.sampler,
        schedule,
        DATASETS[run.dataset.name][1],
        dataset.sample_shape,
        run.n_samples,
        run.batch_size,
        run.seed,
        device,
    )
    scores = score(dataset, samples, run.evaluation)
    save_samples(
        run_dir / "samples" / "samples",
        samples,
        seed=run.seed,
        dataset_cfg=run.dataset,
        sampler_cfg=run.sampler,
        nfe=info["nfe"],
        dataset=dataset,
        title=f"{run.sampler.name}, NFE {info['nfe']}: sliced W2 {scores['sliced_w2']:.3g} "
        f"(true vs true {scores['baseline/sliced_w2']:.3g})",
    )
    metrics = {
        "status": "complete",
        **provenance(run.seed),
        "sampler": run.sampler.name,
        "nfe": info["nfe"],
        "seconds": info["seconds"],
        "n_samples": run.n_samples,
        "ckpt": run.ckpt,
        "nfe_budget": run.sampler.nfe,
        "dataset/name": run.dataset.name,
        "dataset/dim": dataset.sample_shape[0],
        **flatten("settings", info["settings"]),
        **flatten("stats", {k: v for k, v in info["stats"].items() if k in ("acceptance", "contraction", "residual")}),
        **flatten("sample", scores),
    }
    runs.write_json(run_dir / "metrics.json", metrics)
    log.info(
        "%s NFE %d: sliced W2 %.4g (true vs true %.4g), mode TV %.3g; %s",
        run.sampler.name,
        info["nfe"],
        scores["sliced_w2"],
        scores["baseline/sliced_w2"],
        scores["mode_tv"],
        run_dir.resolve(),
    )
    return metrics
