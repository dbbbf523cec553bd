"""EGNN throughput: our dense (B, N, N) layer against the edge-list formulation of the same layer
(gather h_i, h_j per edge, scatter-add the messages: the reference code's way), same weights, in
one run, on batches of real QM9 molecules at EDM's size (9 layers × 256).

Rows: training (forward + backward of the DDDM-input EGNN on a batch of 64, molecules/s) and
sampling (forward only, no grad, molecule·NFE/s at a larger batch). Both graphs are checked to
agree before timing. Timing: median of ``--repeats`` after ``--warmup``; CUDA events on a GPU.

    python scripts/bench_egnn.py                                  # CPU
    python scripts/bench_egnn.py --device cuda --sample-batch 1024 --out docs/qm9-bench.md
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
from pathlib import Path

import numpy as np
import torch

from rtkrun.bench.timing import measure
from rtkrun.data import qm9
from rtkrun.diffusion.schedules import PolynomialSchedule
from rtkrun.models.egnn import EGNN, EGNNConfig
from rtkrun.runs import atomic_write_bytes


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call (the suite's clock: CUDA events on a GPU)."""
    return measure(fn, device, warmup=warmup, repeats=repeats).seconds


def training_molecules(path: str | None, n: int) -> qm9.MoleculeTable:
    """The first n molecules of the EDM training split: from the prepared QM9 table, or from an
    .npz written by ``--save-molecules`` (for machines without qm9pack)."""
    if path is not None:
        with np.load(path) as f:
            table = qm9.MoleculeTable(*(f[k] for k in qm9.FIELDS))
        return table.take(np.arange(n) % len(table))
    table = qm9.load_table(qm9.QM9Config())
    return table.take(qm9.split_indices(len(table))["train"][:n])


def real_batch(table: qm9.MoleculeTable, n: int, device: torch.device, seed: int = 0):
    """n molecules of ``table``, noised at random levels (zero-CoM noise), with random estimates."""
    x0 = qm9.encode(table.take(np.arange(n))).to(device)
    space = qm9.MoleculeSpace(qm9.mask_of(x0))
    g = torch.Generator().manual_seed(seed)
    schedule = PolynomialSchedule()
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    alpha, sigma = (v.float().to(device)[:, None, None] for v in schedule.alpha_sigma(t))
    eps = space.project(torch.randn(x0.shape, generator=g).to(device))
    z = space.project(torch.randn(x0.shape, generator=g).to(device))
    return alpha * x0 + sigma * eps, t.float().to(device), z, space.mask, schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--molecules", default=None, help="read the molecules from this .npz (see --save-molecules)")
    ap.add_argument("--save-molecules", default=None, help="write the benchmark's molecules to this .npz and stop")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast on CUDA")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (static shapes)")
    ap.add_argument("--graphs", default="edges,dense,pairs", help="which layouts to time (edges first)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    ap.add_argument("--out", default=None, help="write a Markdown page here (docs/qm9-bench.md)")
    args = ap.parse_args()
    device = torch.device(args.device)
    graphs = args.graphs.split(",")
    molecules = training_molecules(args.molecules, max(args.train_batch, args.sample_batch))
    if args.save_molecules:
        buf = io.BytesIO()
        np.savez(buf, **molecules.arrays())
        atomic_write_bytes(Path(args.save_molecules), buf.getvalue())
        return
    torch.manual_seed(0)
    rows = []
    results: dict[str, dict[str, float]] = {}
    for graph in graphs:
        cfg = EGNNConfig(layers=args.layers, hidden=args.hidden, graph=graph)
        torch.manual_seed(0)
        x, t, z, mask, schedule = real_batch(molecules, args.train_batch, device)
        model = EGNN(cfg, qm9.N_FEATURES - 3, schedule).to(device)
        if args.compile:
            model = torch.compile(model, dynamic=False)

        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

        def train_step(model=model, x=x, t=t, z=z, mask=mask, autocast=autocast):
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = model(x, t, z, node_mask=mask).float().square().mean()
            loss.backward()

        xs, ts, zs, masks, _ = real_batch(molecules, args.sample_batch, device, seed=1)

        @torch.no_grad()
        def sample_call(model=model, xs=xs, ts=ts, zs=zs, masks=masks, autocast=autocast):
            with autocast:
                model(xs, ts, zs, node_mask=masks)

        results[graph] = {
            "train_s": timed(train_step, device, args.warmup, args.repeats),
            "sample_s": timed(sample_call, device, args.warmup, args.repeats),
        }
        with torch.no_grad():
            results[graph]["out"] = model(x, t, z, node_mask=mask).double().cpu()
    agree = max(float((results[g]["out"] - results[graphs[0]]["out"]).abs().max()) for g in graphs)
    n_params = sum(p.numel() for p in model.parameters())
    for graph in graphs:
        r = results[graph]
        rows.append(
            {
                "graph": graph,
                "train ms/batch": 1e3 * r["train_s"],
                "train molecules/s": args.train_batch / r["train_s"],
                "sample molecule·NFE/s": args.sample_batch / r["sample_s"],
                "train speed-up vs edges": results[graphs[0]]["train_s"] / r["train_s"],
                "sample speed-up vs edges": results[graphs[0]]["sample_s"] / r["sample_s"],
            }
        )
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    threads = torch.get_num_threads()
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    table = "\n".join(lines)
    summary = (
        f"EGNN {args.layers} × {args.hidden} ({n_params:,} parameters) on {machine} "
        f"({device.type}, {threads} threads, {args.precision}{', compiled' if args.compile else ''}), "
        f"torch {torch.__version__}; train batch {args.train_batch}, sample batch {args.sample_batch} real QM9 "
        f"molecules; median of {args.repeats}; largest |Δ| to the reference = {agree:.2e}"
    )
    print(summary)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    if args.out:
        page = (
            f"<!-- generated by `python scripts/bench_egnn.py --device {device.type} --out {args.out}` -->\n"
            f"# EGNN: dense graph vs edge list\n\nDate: {datetime.date.today()}. {summary}.\n\n{table}\n"
        )
        atomic_write_bytes(Path(args.out), page.encode())
    assert agree < 1e-3 * max(1.0, float(results[graphs[-1]]["out"].abs().max())), agree


if __name__ == "__main__":
    main()
