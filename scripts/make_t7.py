"""Regenerate T7 (steps vs dimension, Benton et al. 2023; PAPER_TABLES.md) on a CPU: with the exact
MoG denoiser (``mog_oracle``), find for each d and time grid the smallest number of DDPM steps
whose samples reach sliced W2 ≤ (1 + tol) × the exact sampler's value at the same n, and fit the
growth exponent of steps in d per grid.

The quality is the sliced W2 to the exact mixture (sorted projections against the exact 1-D
quantiles, ``rtkrun.metrics.mog.sliced_w2_to_mixture``), averaged over ``--seeds`` sample sets;
the baseline is the same statistic of exact samples. The search is an exponential search then a
bisection over a √2-spaced ladder of step counts, with the same seeds at every step count. Each
(d, grid) search is saved as a run directory (``metrics.json``) and the table is built from them.

    python scripts/make_t7.py                    # d = 2 … 512, about 8 minutes on 2 cores
    python scripts/make_t7.py --docs docs/t7-mog.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rtkrun.data.mog import MogConfig, MogDataset
from rtkrun.diffusion.schedules import SCHEDULES, build_schedule
from rtkrun.metrics.mog import projection_directions, sliced_w2_to_mixture
from rtkrun.models.oracle import MogOracleConfig
from rtkrun.models.oracle import build as build_oracle
from rtkrun.report import T7_COLUMNS, fit_exponent, write_docs_page, write_table
from rtkrun.runs import write_json
from rtkrun.samplers.ddpm import ddpm
from rtkrun.seeding import SampleNoise

GRIDS = ["uniform", "benton", "logsnr"]
LADDER = sorted({round(2 ** (k / 2)) for k in range(0, 25)})  # 1, 2, 3, 4, 6, 8, 11, 16, … 4096


def search(passes, ladder: list[int]) -> tuple[int | None, int]:
    """Smallest ladder entry that passes (exponential search, then bisection); (None, evals) if
    none does. Assumes passing is monotone in the step count."""
    evaluations, lo, hi = 0, -1, 0  # invariant: ladder[lo] failed (lo = -1: nothing tried yet)
    while True:
        evaluations += 1
        if passes(ladder[hi]):
            break
        if hi == len(ladder) - 1:
            return None, evaluations
        lo, hi = hi, min(2 * hi + 1, len(ladder) - 1)
    if hi == 0:
        return ladder[0], evaluations
    while hi - lo > 1:
        mid = (lo + hi) // 2
        evaluations += 1
        if passes(ladder[mid]):
            hi = mid
        else:
            lo = mid
    return ladder[hi], evaluations


def run_case(d: int, grid: str, args, root: Path) -> dict:
    torch.manual_seed(0)
    schedule = build_schedule(SCHEDULES["cosine"][0]())
    cfg = MogConfig(dim=d, n_components=4, layout="random", radius=4.0, component_std=0.3, train_size=1)
    dataset = MogDataset(cfg)
    mixture, model = dataset.mixture, build_oracle(MogOracleConfig(), dataset, schedule)
    gen = torch.Generator().manual_seed(0)
    directions = projection_directions(mixture, 128, gen)
    baseline = sum(sliced_w2_to_mixture(mixture, mixture.sample(args.n, gen), directions) for _ in range(8)) / 8
    cache: dict[int, float] = {}

    def quality(steps: int) -> float:
        if steps not in cache:
            values = []
            for seed in range(args.seeds):
                noise = SampleNoise.for_range(seed, 0, args.n, dtype=torch.float64)
                x = ddpm(model, noise.randn(d), schedule, generator=noise, steps=steps, grid=grid).x0
                values.append(sliced_w2_to_mixture(mixture, x, directions))
            cache[steps] = sum(values) / len(values)
        return cache[steps]

    steps, evaluations = search(lambda s: quality(s) <= (1 + args.tol) * baseline, LADDER)
    row = {
        "dim": d,
        "grid": grid,
        "steps": steps,
        "quality_ratio": None if steps is None else quality(steps) / baseline,
        "baseline": baseline,
        "evaluations": evaluations,
        "n": args.n,
        "seeds": args.seeds,
        "tol": args.tol,
        "curve": {str(k): v / baseline for k, v in sorted(cache.items())},
    }
    run_dir = root / f"d{d}_{grid}"
    write_json(run_dir / "metrics.json", row)
    return {**row, "run_dir": str(run_dir)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for grid in GRIDS:
        pts = sorted((r["dim"], r["steps"]) for r in rows if r["grid"] == grid and r["steps"])
        if pts:
            ax.loglog(
                *zip(*pts),
                marker="o",
                label=f"{grid} (slope {fit_exponent([r for r in rows if r['grid'] == grid]):.2f})",
            )
    ax.set_xlabel("dimension d")
    ax.set_ylabel("DDPM steps to reach the target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32, 128, 512])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1.0)
    parser.add_argument("--root", default="outputs/multirun/t7")
    parser.add_argument("--out", default="outputs/tables")
    parser.add_argument("--docs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root, out, started = Path(args.root), Path(args.out), time.time()
    rows = []
    for d in args.dims:
        for grid in GRIDS:
            rows.append(run_case(d, grid, args, root))
            print(json.dumps({k: rows[-1][k] for k in ("dim", "grid", "steps", "evaluations")}), flush=True)
    fits = {grid: fit_exponent([r for r in rows if r["grid"] == grid]) for grid in GRIDS}
    note = (
        f"Built by scripts/make_t7.py from {root}: exact MoG denoiser (K = 4 random means, |μ_k| ≈ 4, s = 0.3), "
        f"cosine schedule, DDPM; target: sliced W2 to the exact mixture ≤ {1 + args.tol:g} × the exact sampler's "
        f"value at n = {args.n} (mean of {args.seeds} seeds, the same at every step count). Fitted exponents "
        "(steps ∝ d^k): " + ", ".join(f"{g} {k:.2f}" if k is not None else f"{g} n/a" for g, k in fits.items()) + "."
    )
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, T7_COLUMNS, out / "T7", "T7: DDPM steps vs dimension with the exact score", note)
    plot(rows, out / "T7.png")
    print(f"{len(rows)} T7 rows in {out} after {time.time() - started:.0f} s; exponents {fits}")
    if args.docs:
        write_docs_page(args.docs, "scripts/make_t7.py", [out / "T7.md"], out / "T7.png")


if __name__ == "__main__":
    main()
