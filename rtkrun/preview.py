"""Previews during training (the NVlabs/edm habit of a sample grid per snapshot): every
``trainer.preview_every`` steps, ``trainer.preview_samples`` samples of the EMA model by
DDIM-``trainer.preview_steps``, scored by the dataset's own metrics and drawn by its picture
(``previews/step-NNNNNN.png``). Their numbers go into that step's metrics.jsonl record under
``preview/`` and to the tracker.

The samples come from their own per-sample streams (evaluation seed, ``Stream.PREVIEW``), in
one batch on rank 0 alone, and touch neither the training generator nor the global RNG, so a
run with previews trains bit for bit as one without.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from rtkrun.data.base import DiffusionDataset
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.samplers.ddim import ddim
from rtkrun.sampling import start_batch
from rtkrun.seeding import SampleNoise, Stream, stream_seed


def preview(
    model: torch.nn.Module,
    dataset: DiffusionDataset,
    schedule: VPSchedule,
    evaluation: Any,
    n: int,
    steps: int,
    step: int,
    folder: Path,
    device: torch.device,
) -> tuple[dict[str, float], Path]:
    """({"preview/<metric>": value} of the scalar metrics, the picture's path) at ``step``."""
    noise = SampleNoise.for_range(stream_seed(evaluation.seed, Stream.PREVIEW), 0, n, device=device)
    denoiser, x_T, noise, mask = start_batch(model.eval(), dataset, noise)
    with torch.no_grad():
        samples = ddim(denoiser, x_T, schedule, generator=noise, steps=steps).x0.detach().cpu()
    extras = {} if mask is None else {"node_mask": mask.cpu()}
    scores = dataset.score(samples, evaluation, device, extras)
    path = folder / f"step-{step:07d}.png"
    dataset.save_picture(samples, path, title=f"step {step}, DDIM-{steps}: {dataset.describe(scores)}", extras=extras)
    numbers = {
        f"preview/{k}": float(v)
        for k, v in scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    return numbers, path
