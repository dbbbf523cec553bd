"""Regenerate T6 (learning regimes of the tanh student, docs/tables.md) on a CPU: train
``mog_student`` by plain gradient descent on the DDPM loss at one noise level each, with a fresh
batch every step, and collect the per-step angle and distance to μ* into outputs/tables/T6.*
and a figure of both curves.

Large noise levels start from a small random μ (the power-iteration regime); small noise levels
start near μ* (the gradient-EM regime, the warm start the large-noise phase provides); one run
uses K = 4 means matched to the truth by the Hungarian assignment. Learning rates are set in the
seed's units, η = 2·lr·α²σ²/d.

    python scripts/make_t6.py                    # about a minute on 2 cores
    python scripts/make_t6.py --docs docs/t6-mog.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from rtkrun.diffusion.schedules import SCHEDULES, build_schedule
from rtkrun.report.output import write_docs_page, write_table
from rtkrun.report.t6 import T6_COLUMNS, t6_row

RTKRUN = str(Path(sys.executable).parent / "rtkrun")
DIM = 16
RUNS = [  # label, t, eta (seed units), init, init_scale, extra overrides
    ("large_t0.9", 0.9, 0.3, "random", 0.1, []),
    ("large_t0.8", 0.8, 0.3, "random", 0.1, []),
    ("large_t0.7", 0.7, 0.3, "random", 0.1, []),
    ("small_t0.3", 0.3, 0.2, "perturbed", 1.5, []),
    ("small_t0.2", 0.2, 0.2, "perturbed", 1.5, []),
    ("small_t0.1", 0.1, 0.2, "perturbed", 1.5, []),
    (
        "small_t0.2_K4",
        0.2,
        0.2,
        "perturbed",
        1.0,
        ["dataset.n_components=4", "dataset.layout=random", "model.symmetric=false"],
    ),
]


def lr_for(t: float, eta: float) -> float:
    schedule = build_schedule(SCHEDULES["cosine"][0]())
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    return eta * DIM / (2 * alpha**2 * sigma**2)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        records = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        steps = [x["step"] for x in records]
        axes[0].semilogy(steps, [max(x["angle_deg"], 1e-3) for x in records], label=r["label"])
        axes[1].semilogy(steps, [max(x["distance"], 1e-4) for x in records], label=r["label"])
    axes[0].set_title("angle to μ* (degrees)")
    axes[1].set_title("distance to μ*")
    for ax in axes:
        ax.set_xlabel("gradient step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="outputs/multirun/t6")
    parser.add_argument("--out", default="outputs/tables")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=20000)
    parser.add_argument("--docs")
    args = parser.parse_args()
    root, out, started = Path(args.root), Path(args.out), time.time()
    for label, t, eta, init, scale, extra in RUNS:
        overrides = [
            "experiment=t6_mog",
            f"dataset.dim={DIM}",
            f"trainer.fixed_t={t}",
            f"trainer.lr={lr_for(t, eta)}",
            f"trainer.max_steps={args.steps}",
            f"trainer.batch_size={args.batch}",
            f"model.init={init}",
            f"model.init_scale={scale}",
            *extra,
            f"hydra.run.dir={root / label}",
        ]
        print("+ rtkrun train", " ".join(overrides), flush=True)
        subprocess.run([RTKRUN, "train", *overrides], check=True, stdout=subprocess.DEVNULL)
    rows = [t6_row(root / label) for label, *_ in RUNS]
    note = (
        f"Built by scripts/make_t6.py from {root}: mog_student (tanh, tied ±μ; K = 4: free means, Hungarian-"
        f"matched), d = {DIM}, |μ*| = 3, unit component variance, cosine schedule, plain gradient descent on the "
        f"ε loss at one noise level t, {args.batch} fresh samples per step, {args.steps} steps. Factors are per "
        "step, geometric means: tan(angle) over the small-norm phase (|μ| < |μ*|/2) next to the seed's "
        "power-iteration prediction λ₂/λ₁; the distance over the EM phase (|μ| ≥ |μ*|/2, above 3× its final value)."
    )
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, T6_COLUMNS, out / "T6", "T6: learning regimes of the tanh student (mixture of Gaussians)", note)
    plot(rows, out / "T6.png")
    print(f"{len(rows)} T6 rows in {out} after {time.time() - started:.0f} s")
    if args.docs:
        write_docs_page(args.docs, "scripts/make_t6.py", [out / "T6.md"], out / "T6.png")


if __name__ == "__main__":
    main()
