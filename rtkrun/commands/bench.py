"""``rtkrun bench``: the benchmark suite (``rtkrun/bench``) for one preset on one device.

Writes ``bench.json`` (every figure) and ``bench.md`` (the tables) into the run directory and,
with ``out=``, the Markdown to that path (``docs/performance.md``) with the JSON beside it, each
atomically so that a failed or interrupted run leaves the previous results whole.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rtkrun import runs
from rtkrun.bench.suite import markdown, run_suite
from rtkrun.build import resolve_device
from rtkrun.rundir import provenance

log = logging.getLogger("rtkrun.bench")

HEADER = """# Performance

Regenerate with `make bench` (this file, CPU, preset `tiny`) or, on a GPU,
`rtkrun bench preset=reference out=docs/performance-gpu.md`. Every ratio compares two things
measured in the same run on the same machine; absolute times mean something only on a GPU.
What each table measures is in the docstrings of `rtkrun/bench/*.py`; the reading of the
figures is in `docs/performance-notes.md`.

"""


def bench(run, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(run.device)
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    compile_models = run.compile == "on" or (run.compile == "auto" and device.type == "cuda")
    result = run_suite(
        preset=run.preset,
        datasets=list(run.datasets),
        sections=list(run.sections),
        device=device,
        warmup=run.warmup,
        repeats=run.repeats,
        compile_models=compile_models,
        seed=run.seed,
        molecules=run.molecules,
    )
    result["provenance"] = provenance(run)
    text = markdown(result)
    print(text)
    payload = json.dumps(result, indent=1, default=str).encode()
    runs.atomic_write_bytes(run_dir / "bench.json", payload)
    runs.atomic_write_bytes(run_dir / "bench.md", text.encode())
    if run.out is not None:
        out = Path(run.out)
        runs.atomic_write_bytes(out.with_suffix(".json"), payload)
        runs.atomic_write_bytes(out, (HEADER + text).encode())
        log.info("wrote %s and %s", out, out.with_suffix(".json"))
    metrics = {"status": "complete", **provenance(run), "rows": sum(len(r) for r in result["sections"].values())}
    runs.write_json(run_dir / "metrics.json", metrics)
    return metrics
