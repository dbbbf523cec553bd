"""Run the benchmark sections over a preset's cases and render the result as Markdown.

The result is one JSON-able dict: ``machine`` (what it ran on), ``settings`` and, per section,
its rows. ``markdown`` turns it into ``docs/performance.md``'s tables; every row a section
produced appears (the smoke test checks that, not any speed).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import torch

from rtkrun.bench.diagnostics import bench_diagnostics
from rtkrun.bench.egnn import bench_egnn
from rtkrun.bench.estimators import bench_estimators
from rtkrun.bench.noise import bench_noise
from rtkrun.bench.precision import bench_precision
from rtkrun.bench.presets import PRESETS, Parts
from rtkrun.bench.sampling import bench_sampling
from rtkrun.bench.timing import machine
from rtkrun.bench.training import bench_training
from rtkrun.config import BENCH_SECTIONS

log = logging.getLogger("rtkrun.bench")
SECTIONS = BENCH_SECTIONS
CASE_FREE = ("estimators",)  # sections on fixed maps of their own, run once rather than per dataset


def _section(name: str, parts: Parts, warmup: int, repeats: int, compile_models: bool) -> list[dict[str, Any]]:
    if name == "training":
        return [bench_training(parts, warmup=warmup, repeats=repeats)]
    if name == "sampling":
        return bench_sampling(parts, warmup=warmup, repeats=repeats, compile_models=compile_models)
    if name == "noise":
        return bench_noise(parts, warmup=warmup, repeats=repeats)
    if name == "diagnostics":
        return bench_diagnostics(parts, warmup=warmup, repeats=repeats)
    if name == "egnn":
        return bench_egnn(parts, warmup=warmup, repeats=repeats) if parts.case.dataset == "qm9" else []
    return bench_precision(parts, warmup=warmup, repeats=repeats, compile_models=compile_models)


def run_suite(
    *,
    preset: str,
    datasets: list[str],
    sections: list[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    compile_models: bool,
    seed: int = 0,
    molecules: str | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sections}
    # Every CPU memory probe collects garbage first (bench/timing.py). What exists before the
    # first section (interpreter, torch, the caller's objects) is never the bench's garbage:
    # frozen, it is not walked again, and a probe's collection takes milliseconds, not 0.26 s.
    gc.collect()
    gc.freeze()
    try:
        if "estimators" in sections:
            progress("estimators: fixed MLP, conv and U-Net maps")
            results["estimators"] = bench_estimators(preset, device, warmup=warmup, repeats=repeats)
        for case in [c for c in PRESETS[preset] if c.dataset in datasets]:
            parts = Parts(case, device, seed, molecules)
            try:
                for name in [s for s in sections if s not in CASE_FREE]:
                    progress(f"{name}: {parts.name}")
                    results[name] += _section(name, parts, warmup, repeats, compile_models)
            finally:
                parts.close()
    finally:
        gc.unfreeze()
    settings = {"preset": preset, "datasets": datasets, "warmup": warmup, "repeats": repeats, "compile": compile_models}
    return {"machine": machine(device), "settings": settings, "sections": results}


# -- Markdown ------------------------------------------------------------------------------------
def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "x":
        return f"{value:.2f}×"
    if kind == "%":
        return f"{100 * value:.1f} %"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "goal":
        return f"≤ {value:.2f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


COLUMNS: dict[str, list[tuple[str, str, str]]] = {  # section -> (key, header, format)
    "training": [
        ("case", "case", ""),
        ("precision", "precision", ""),
        ("batch", "batch", "int"),
        ("steps_per_s", "steps/s", ""),
        ("samples_per_s", "samples/s", "int"),
        ("gflop_per_step", "GFLOP/step", ""),
        ("tflops", "TFLOP/s", ""),
        ("mfu", "MFU", "%"),
        ("data_share", "data share", "%"),
        ("gpu_idle", "GPU idle", "%"),
        ("peak_mib", "peak MiB", ""),
    ],
    "sampling": [
        ("case", "case", ""),
        ("sampler", "sampler", ""),
        ("batch", "batch", "int"),
        ("nfe", "NFE", "int"),
        ("ms_per_nfe", "ms/NFE", ""),
        ("bare_ms", "bare call ms", ""),
        ("overhead", "overhead", "x"),
        ("loop_overhead", "loop overhead", "x"),
        ("goal", "goal", "goal"),
        ("setup_ms", "set-up ms", ""),
        ("samples_nfe_per_s", "samples·NFE/s", "int"),
        ("peak_mib", "peak MiB", ""),
    ],
    "noise": [
        ("case", "case", ""),
        ("noise", "noise", ""),
        ("batch", "batch", "int"),
        ("dim", "d", "int"),
        ("setup_us_per_sample", "set-up µs/sample", ""),
        ("goal", "goal", "goal"),
        ("draw_us_per_sample", "one normal of d: µs/sample", ""),
    ],
    "diagnostics": [
        ("case", "case", ""),
        ("dim", "d", "int"),
        ("chain", "chain", ""),
        ("batch", "points", "int"),
        ("s_per_point", "s/point", ""),
        ("forward_equivalents", "forward equivalents", "int"),
        ("speedup_vs_exact", "speed-up vs exact", "x"),
        ("peak_mib", "peak MiB", ""),
    ],
    "estimators": [
        ("model", "map", ""),
        ("dim", "d", "int"),
        ("estimator", "estimator", ""),
        ("batch", "batch", "int"),
        ("seconds", "seconds", ""),
        ("forward_equivalents", "forward equivalents", "int"),
        ("rel_error", "‖J‖₂ rel. error", ""),
        ("iterations", "iterations", "int"),
        ("speedup_vs_exact", "speed-up vs exact", "x"),
    ],
    "egnn": [
        ("case", "case", ""),
        ("purpose", "call", ""),
        ("layout", "layout", ""),
        ("batch", "batch", "int"),
        ("ms_per_call", "ms/call", ""),
        ("molecules_per_s", "molecules/s", "int"),
        ("speedup_vs_edges", "vs edges", "x"),
        ("peak_mib", "peak MiB", ""),
    ],
    "precision": [
        ("case", "case", ""),
        ("variant", "variant", ""),
        ("train_ms_per_step", "train ms/step", ""),
        ("train_speedup", "train vs fp32", "x"),
        ("mfu", "MFU", "%"),
        ("sample_ms_per_call", "sampling ms/call", ""),
        ("sample_speedup", "sampling vs fp32", "x"),
        ("train_peak_mib", "train peak MiB", ""),
    ],
}
TITLES = {
    "training": "Training throughput per dataset preset",
    "sampling": "Sampler overhead: time per NFE over one bare network call",
    "noise": "Per-sample noise streams: set-up and one draw (cpu_streams vs philox)",
    "diagnostics": "Diagnostics cost per point: matrix-free vs exact",
    "estimators": "Regularity estimators: cost and ‖J‖₂ accuracy against the exact float64 path",
    "egnn": "EGNN layouts against the edge-list reference",
    "precision": "bf16 and torch.compile against fp32 eager",
}


def table(section: str, rows: list[dict[str, Any]]) -> str:
    columns = COLUMNS[section]
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    out = [
        f"Machine: {m['device']} ({m['cpu_cores']} cores), torch {m['torch']}, CUDA {m['cuda'] or '–'}, "
        f"Python {m['python']}; {m['date']}. Preset `{s['preset']}`, median of {s['repeats']} after "
        f"{s['warmup']} warm-up calls; compile {'on' if s['compile'] else 'off'}."
    ]
    for section, rows in result["sections"].items():
        out += [f"### {TITLES[section]}", table(section, rows) if rows else "(no rows for these datasets)"]
    return "\n\n".join(out) + "\n"
