"""Wiring shared by the commands: devices, building the pieces from a validated config,
sampling in batches with per-sample seeds, and scoring. (The samples file is
``rtkrun/samples_file.py``; the run directory and provenance ``rtkrun/rundir.py``.)"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig

from rtkrun import runs
from rtkrun.config import typed_group
from rtkrun.data import DATASETS
from rtkrun.diffusion.schedules import build_schedule
from rtkrun.errors import RtkrunError
from rtkrun.loggers import duration
from rtkrun.metrics import images as image_metrics
from rtkrun.metrics import mog as mog_metrics
from rtkrun.models import MODELS, needs_training
from rtkrun.samplers import SAMPLERS, settings_for
from rtkrun.samplers.base import merge_batch_stats
from rtkrun.seeding import SampleNoise

log = logging.getLogger("rtkrun")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RtkrunError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def build_dataset(cfg):
    return DATASETS[cfg.name][1].build(cfg)


def build_model(cfg, dataset, schedule) -> torch.nn.Module:
    return MODELS[cfg.name][1](cfg, dataset, schedule)


def build_parts(run, seed: int):
    """(dataset, schedule, model) for a validated run config; model init seeded by ``seed``."""
    dataset = build_dataset(run.dataset)
    schedule = build_schedule(run.schedule)
    torch.manual_seed(seed)
    model = build_model(run.model, dataset, schedule)
    return dataset, schedule, model


def start_batch(model, dataset, noise):
    """(denoiser, x_T, noise, node mask or None) for one batch of per-sample noise streams. Most
    datasets draw x_T from their prior; datasets on a subspace (molecules) start the batch
    themselves: atom counts from the prior, the node mask bound into the denoiser, and a noise
    source that projects every later draw."""
    module = DATASETS[dataset.cfg.name][1]
    if hasattr(dataset, "sampling_start"):
        x_T, space, noise = dataset.sampling_start(noise)
        return space.bind(model), x_T, noise, space.mask
    return model, module.prior(noise, tuple(dataset.sample_shape)), noise, None


def bind_to_data(model, dataset, x0: torch.Tensor):
    """The denoiser for noised versions of the examples ``x0``: on a subspace dataset, with the
    examples' node mask bound in; else the model itself."""
    if not hasattr(dataset, "space_of"):
        return model
    return dataset.space_of(x0).bind(model)


class CompiledNetwork:
    """The network as the sampling loop calls it, compiled once with ``torch.compile``. A model
    that binds a batch's node mask (the EGNN) has its per-call core compiled instead, so the
    per-batch work (trim, edge list) stays outside the graph. With ``reduce-overhead`` each call
    replays a CUDA graph whose output buffer the next replay overwrites, while samplers keep the
    previous estimate (DDDM's residual, MALA's current score): outputs are therefore copied."""

    def __init__(self, model: torch.nn.Module, mode: str) -> None:
        self.model, self.mode = model, mode
        self.compiled = torch.compile(model, mode=mode)
        self.core = torch.compile(model._denoise, mode=mode) if hasattr(model, "bind") else None

    def _run(self, fn, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            return fn(*args, **kwargs).clone()
        return fn(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._run(self.compiled, *args, **kwargs)

    def eval(self) -> CompiledNetwork:
        self.model.eval()
        return self

    def __getattr__(self, name: str) -> Any:  # log_prob, cfg, … of the model
        if name in ("model", "mode", "compiled", "core"):
            raise AttributeError(name)
        if name == "bind" and self.core is not None:
            return lambda node_mask: functools.partial(self._run, self.model.bind(node_mask, core=self.core))
        return getattr(self.model, name)


class SamplingProgress:
    """Console progress of one sampler's run: samples done of n, elapsed and ETA after each
    batch, and inside a long batch the network evaluations done so far (from the sampler's
    per-step callback), each at most every ``every`` seconds, so long sampling is never silent."""

    def __init__(self, label: str, n: int, every: float = 10.0) -> None:
        self.label, self.n, self.every = label, n, every
        self.start = self.last = time.time()
        self.done = 0

    def _due(self) -> bool:
        now = time.time()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    def step(self, info: dict[str, Any]) -> None:
        """The sampler callback: NFE so far in the current batch."""
        if "nfe" in info and self._due():
            log.info("%s: batch at sample %d of %d, NFE %d so far", self.label, self.done, self.n, info["nfe"])

    def batch_done(self, rows: int) -> None:
        """After a batch: log when due; the last batch logs only if sampling took long enough
        to need progress at all (a quick sampler's result line follows at once)."""
        self.done += rows
        if self.done >= self.n:
            if time.time() - self.start < self.every:
                return
        elif not self._due():
            return
        elapsed = time.time() - self.start
        eta = elapsed * (self.n - self.done) / max(self.done, 1)
        log.info(
            "%s: %d/%d samples, elapsed %s, ETA %s", self.label, self.done, self.n, duration(elapsed), duration(eta)
        )


def draw_samples(
    model,
    sampler_cfg,
    schedule,
    dataset,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    compile_mode: str = "none",
    label: str | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """n samples in batches; sample i uses the noise stream (seed, i) whatever the batch size.
    Datasets on a subspace (molecules) start each batch themselves: they draw the atom counts,
    bind the node mask into the denoiser and project every noise draw; ``info["extras"]``
    then holds the node masks. ``compile_mode`` other than none compiles the network once.
    Progress is logged under ``label`` (default: the sampler's name)."""
    fn = SAMPLERS[sampler_cfg.name][1]
    settings = settings_for(sampler_cfg)
    chunks, masks, nfe, batch_stats = [], [], 0, []
    start_time = time.time()
    progress = SamplingProgress(label or sampler_cfg.name, n)
    model.eval()
    if compile_mode != "none":
        model = CompiledNetwork(model, compile_mode)
    for start in range(0, n, batch_size):
        noise = SampleNoise.for_range(seed, start, min(start + batch_size, n), device=device)
        denoiser, x_T, noise, mask = start_batch(model, dataset, noise)
        if mask is not None:
            masks.append(mask.cpu())
        result = fn(denoiser, x_T, schedule, generator=noise, callback=progress.step, **settings)
        chunks.append(result.x0.detach().cpu())
        nfe = result.nfe
        batch_stats.append((x_T.shape[0], result.stats))
        progress.batch_done(x_T.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start_time
    extras = {"node_mask": torch.cat(masks)} if masks else {}
    stats = merge_batch_stats(batch_stats)
    return torch.cat(chunks), {"nfe": nfe, "seconds": seconds, "stats": stats, "settings": settings, "extras": extras}


def score(
    dataset, samples: torch.Tensor, evaluation, device: torch.device | None = None, extras: dict | None = None
) -> dict[str, Any]:
    """The dataset's metrics of ``samples``: for the MoG each with its true-vs-true baseline; for
    images FID with its sample count; for molecules EDM's stability, validity, uniqueness and
    novelty (``extras["node_mask"]`` says which rows are atoms)."""
    if dataset.cfg.name == "qm9":
        from rtkrun.data.qm9 import decode, node_mask_of
        from rtkrun.metrics import molecules

        numbers, positions = decode(samples, node_mask_of(samples, (extras or {}).get("node_mask")))
        scores = molecules.score_molecules(numbers, positions, molecules.training_smiles(dataset))
        scores["nonfinite"] = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
        return scores
    if dataset.cfg.name == "mog":
        return mog_metrics.score_samples(
            dataset.mixture,
            samples,
            seed=evaluation.seed,
            n_projections=evaluation.n_projections,
            w2_max_n=evaluation.w2_max_n,
            mmd_max_n=evaluation.mmd_max_n,
        )
    if dataset.cfg.name == "cifar10":
        return image_metrics.score_samples(
            dataset, samples, evaluation.fid_weights, device or torch.device("cpu"), evaluation.fid_batch_size
        )
    raise RtkrunError(f"no metrics for dataset {dataset.cfg.name}")


def describe(scores: dict[str, Any]) -> str:
    """One line for logs and picture titles."""
    if "mol_stability" in scores:
        return (
            f"atom stability {100 * scores['atom_stability']:.1f}, molecule stability "
            f"{100 * scores['mol_stability']:.1f}, valid {100 * scores['validity']:.1f}, "
            f"V×U {100 * scores['valid_x_unique']:.1f} (n={scores['n_molecules']})"
        )
    if "fid" in scores:
        return f"FID {scores['fid']:.3f} (n={scores['fid_n']} vs {scores['fid_reference_n']} training images)"
    line = (
        f"sliced W2 {scores['sliced_w2']:.4g} (true vs true {scores['baseline/sliced_w2']:.4g}), "
        f"mode TV {scores['mode_tv']:.3g}"
    )
    if scores.get("off_mode") is not None:  # the metric that exposes samples bridging the modes
        line += f", off-mode {100 * scores['off_mode']:.1f} %"
    return line


RECORDED_STATS = ("acceptance", "step_size", "energy_evals", "contraction", "residual")


def recorded_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The sampler stats metrics.json keeps: per-segment acceptance and step size (RTK), energy
    evaluations outside the NFE count (exact-energy RTK-MALA), DDDM residuals and contraction."""
    return {k: v for k, v in stats.items() if k in RECORDED_STATS}


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


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
