"""Regenerate T3 (regularity of the learned denoiser, docs/tables.md) on the mixture of
Gaussians on a CPU: train the default `mog_mlp` per dimension, run `rtkrun diagnose` along the
DDDM sampler's trajectory and at data-derived x_t, and collect outputs/tables/T3.{csv,md}.

    python scripts/make_t3.py                  # d = 2 and 16, about 2 minutes on 2 cores
    python scripts/make_t3.py --docs docs/t3-mog.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rtkrun.report.output import write_docs_page, write_table
from rtkrun.report.rows import find_runs
from rtkrun.report.t3 import T3_COLUMNS, T3_NOTE, diagnose_rows

RTKRUN = str(Path(sys.executable).parent / "rtkrun")


def run(*args: str) -> None:
    print("+ rtkrun", " ".join(args), flush=True)
    subprocess.run([RTKRUN, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--root", default="outputs/multirun/t3")
    parser.add_argument("--out", default="outputs/tables")
    parser.add_argument("--docs")
    parser.add_argument("--collect-only", action="store_true")
    args = parser.parse_args()
    root, out, started = Path(args.root), Path(args.out), time.time()
    if not args.collect_only:
        for d in args.dims:
            data = [f"dataset.dim={d}"] + (
                ["dataset.layout=random", "dataset.radius=4.0", "dataset.component_std=0.3"] if d > 2 else []
            )
            run("train", *data, f"hydra.run.dir={root}/train/d{d}", "~evaluation.samplers")
            run("diagnose", f"ckpt={root}/train/d{d}", f"hydra.run.dir={root}/diagnose/d{d}")
    rows = [row for p in find_runs([root / "diagnose"]) for row in diagnose_rows(p)]
    note = (
        f"Built by scripts/make_t3.py from {root}: the default-trained mog_mlp, 64 points per row, "
        "DDDM sampler with 2 levels x 3 iterations; exact float64 derivatives; sigma = sqrt(1 - alpha_bar_t). "
        "`certified`: corrected margin ((1-L)+^2 - R sqrt(B_sq))/sigma^2 > 0; `paper_false_claims`: the paper's "
        "margin ((1-L)^2 - R B_sq)/sigma^2 > 0 where the true lambda_min <= 0. " + T3_NOTE
    )
    write_table(rows, T3_COLUMNS, out / "T3", "T3: regularity of the learned DDDM map, mixture of Gaussians", note)
    print(f"{len(rows)} T3 rows in {out} after {time.time() - started:.0f} s")
    if args.docs:
        write_docs_page(args.docs, "scripts/make_t3.py", [out / "T3.md"])


if __name__ == "__main__":
    main()
