"""The EGNN's three graph layouts (``models/egnn.py``: ``pairs``, ``dense``, ``edges``) on the
same weights and the same batch of real molecules: sampling calls (forward, no gradient, at
the sampling batch) and training calls (forward + backward at the training batch). The
reference is ``edges``, the gather–concatenate–scatter formulation of EDM's own code; the
layouts are checked to agree before they are timed.
"""

from __future__ import annotations

from typing import Any

import torch

from rtkrun.bench.presets import Parts
from rtkrun.bench.timing import measure
from rtkrun.errors import RtkrunError
from rtkrun.sampling import bind_to_data
from rtkrun.trainer import get_batch

LAYOUTS = ("edges", "pairs", "dense")  # the reference first


def bench_egnn(parts: Parts, *, warmup: int, repeats: int) -> list[dict[str, Any]]:
    model, device, case = parts.model, parts.device, parts.case
    original = model.cfg.graph
    rows = []
    for purpose, batch in (("sampling", case.sample_batch), ("training", case.train_batch)):
        index = torch.arange(batch) % len(parts.dataset)
        x0 = get_batch(parts.dataset, index, 0, parts.run.seed).to(device)
        x = x0 + 0.5 * parts.dataset.space_of(x0).project(torch.randn_like(x0))
        t = torch.full((batch,), 0.5, device=device)
        z, mask = x0.clone(), parts.dataset.space_of(x0).mask
        outputs, reference = {}, None
        for layout in LAYOUTS:
            model.cfg.graph = layout
            model.train(purpose == "training")
            # Sampling binds the mask once per batch (as rtkrun sample does); training binds per call.
            denoiser = bind_to_data(model, parts.dataset, x0) if purpose == "sampling" else None

            def call(x=x, t=t, z=z, mask=mask, denoiser=denoiser, purpose=purpose):
                if purpose == "training":
                    model.zero_grad(set_to_none=True)
                    model(x, t, z, node_mask=mask).square().sum().backward()
                    return None
                with torch.no_grad():
                    return denoiser(x, t, z)

            with torch.no_grad():
                outputs[layout] = model(x, t, z, node_mask=mask)
            gap = (outputs[layout] - outputs[LAYOUTS[0]]).abs().max().item()
            if gap > 1e-3 * (1 + outputs[LAYOUTS[0]].abs().max().item()):
                raise RtkrunError(f"egnn layout {layout} differs from edges by {gap:.3g}: a bug, not a benchmark")
            timed = measure(call, device, warmup=warmup, repeats=repeats)
            reference = reference or timed.seconds
            rows.append(
                {
                    "case": parts.name,
                    "purpose": purpose,
                    "layout": layout,
                    "batch": batch,
                    "ms_per_call": 1e3 * timed.seconds,
                    "molecules_per_s": batch / timed.seconds,
                    "speedup_vs_edges": reference / timed.seconds,
                    "peak_mib": None if timed.peak_bytes is None else timed.peak_bytes / 2**20,
                }
            )
    model.cfg.graph = original
    model.eval()
    return rows
