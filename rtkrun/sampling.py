"""The sample loop shared by ``train``'s evaluation, ``sample`` and the benchmarks: n samples in
batches, sample i from its own noise stream (seed, i) whatever the batch size, a dataset's
sampling start (molecules bind their node mask), optional ``torch.compile``, and progress."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

from rtkrun import distributed
from rtkrun.data.base import DiffusionDataset
from rtkrun.loggers import duration
from rtkrun.samplers import SAMPLERS, settings_for
from rtkrun.samplers.base import merge_batch_stats
from rtkrun.seeding import NOISE

log = logging.getLogger("rtkrun")


def start_batch(model, dataset: DiffusionDataset, noise):
    """(denoiser, x_T, noise, node mask or None) for one batch of per-sample noise streams: x_T
    from the dataset's sampling start; on a subspace (molecules) the denoiser has the batch's
    node mask bound in and the noise projects every later draw."""
    x_T, space, noise = dataset.sampling_start(noise)
    if space is None:
        return model, x_T, noise, None
    return space.bind(model), x_T, noise, space.mask


def bind_to_data(model, dataset: DiffusionDataset, x0: torch.Tensor):
    """The denoiser for noised versions of the examples ``x0``: on a subspace dataset, with the
    examples' node mask bound in; else the model itself."""
    space = dataset.space_of(x0)
    return model if space is None else space.bind(model)


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
    noise: str = "cpu_streams",
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """n samples in batches; sample i uses the noise stream (seed, i) whatever the batch size.
    Datasets on a subspace (molecules) start each batch themselves: they draw the atom counts,
    bind the node mask into the denoiser and project every noise draw; ``info["extras"]``
    then holds the node masks. ``compile_mode`` other than none compiles the network once.
    ``noise`` picks the per-sample streams (rtkrun/seeding.py ``NOISE``).
    Progress is logged under ``label`` (default: the sampler's name). Under torchrun each rank
    draws a contiguous block of the indices and rank 0 gets all n (the others get None): the
    samples are those of one process, as sample i depends only on (seed, i)."""
    fn = SAMPLERS[sampler_cfg.name][1]
    settings = settings_for(sampler_cfg)
    chunks, masks, nfe, batch_stats = [], [], 0, []
    start_time = time.time()
    block = distributed.rank_block(n)  # under torchrun: this rank's contiguous share of 0..n-1
    progress = SamplingProgress(label or sampler_cfg.name, len(block))
    model.eval()
    if compile_mode != "none":
        model = CompiledNetwork(model, compile_mode)
    for start in range(block.start, block.stop, batch_size):
        streams = NOISE[noise].for_range(seed, start, min(start + batch_size, block.stop), device=device)
        denoiser, x_T, streams, mask = start_batch(model, dataset, streams)
        if mask is not None:
            masks.append(mask.cpu())
        result = fn(denoiser, x_T, schedule, generator=streams, callback=progress.step, **settings)
        chunks.append(result.x0.detach().cpu())
        nfe = result.nfe
        batch_stats.append((x_T.shape[0], result.stats))
        progress.batch_done(x_T.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    x0 = torch.cat(chunks) if chunks else torch.zeros(0, *dataset.sample_shape)
    mask = torch.cat(masks) if masks else None
    parts = distributed.gather_to_main((x0, mask, batch_stats, nfe))  # rank 0: every block, in order
    info = {"nfe": nfe, "settings": settings, "seconds": time.time() - start_time, "processes": len(parts or [])}
    if parts is None:  # another rank: its block is on rank 0 now
        return None, {**info, "stats": {}, "extras": {}}
    x0 = torch.cat([p[0] for p in parts])
    masks = [p[1] for p in parts if p[1] is not None]
    batch_stats = [b for p in parts for b in p[2]]
    extras = {"node_mask": torch.cat(masks)} if masks else {}
    info["nfe"] = max(p[3] for p in parts)
    return x0, {**info, "stats": merge_batch_stats(batch_stats), "extras": extras}


RECORDED_STATS = ("acceptance", "step_size", "energy_evals", "contraction", "residual")


def recorded_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The sampler stats metrics.json keeps: per-segment acceptance and step size (RTK), energy
    evaluations outside the NFE count (exact-energy RTK-MALA), DDDM residuals and contraction."""
    return {k: v for k, v in stats.items() if k in RECORDED_STATS}
