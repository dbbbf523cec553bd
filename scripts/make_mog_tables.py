"""Regenerate tables T1 and T2 (docs/tables.md) on the mixture of Gaussians, on a CPU.

Runs the sweeps of conf/experiment/t1_mog*.yaml and t2_mog.yaml with the real `rtkrun`
command (one process per sweep), trains the learned models they compare, and collects every
job directory into outputs/tables/T1.{csv,md,png} and T2.{csv,md}.

    python scripts/make_mog_tables.py            # d = 2 and 16, about 15 minutes on 2 cores
    python scripts/make_mog_tables.py --dims 2 16 64 --collect-only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rtkrun.report.output import plot_quality_vs_nfe, write_docs_page, write_table
from rtkrun.report.rows import find_runs
from rtkrun.report.t1_t2 import SAMPLE_COLUMNS, SAMPLE_NOTE, sample_row, sort_rows

RTKRUN = str(Path(sys.executable).parent / "rtkrun")
T1_DATASET = [
    "dataset.layout=random",
    "dataset.n_components=8",
    "dataset.radius=4.0",
    "dataset.component_std=0.3",
    "dataset.weights=[1,2,3,4,1,2,3,4]",
]


def run(*args: str) -> None:
    print("+ rtkrun", " ".join(args), flush=True)
    subprocess.run([RTKRUN, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--root", default="outputs/multirun/tables")
    parser.add_argument("--out", default="outputs/tables")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--docs", help="also write both tables into this Markdown file (docs/tables-mog.md)")
    args = parser.parse_args()
    root, out = Path(args.root), Path(args.out)
    started = time.time()
    if not args.collect_only:
        for d in args.dims:
            sweep = f"hydra.sweep.dir={root}/t1/d{d}"
            run("sample", "-m", "experiment=t1_mog", "model=mog_oracle", f"dataset.dim={d}", f"{sweep}/oracle")
            run("sample", "-m", "experiment=t1_mog_dddm", f"dataset.dim={d}", f"{sweep}/flow_oracle")
            run("sample", "-m", "experiment=t1_mog_energy", f"dataset.dim={d}", f"{sweep}/energy")
            learned = root / "train" / f"d{d}"
            # the DDDM-trained network T8 recommends (docs/t8-mog.md): one network for every sampler
            variant = "dddm_variant=self_distill"
            run("train", *T1_DATASET, variant, f"dataset.dim={d}", f"hydra.run.dir={learned}", "~evaluation.samplers")
            run(
                "sample",
                "-m",
                "experiment=t1_mog",
                f"ckpt={learned}",
                "sampler=ddim,ddpm,pf_ode,dddm,rtk_mala,rtk_uld",
                f"{sweep}/learned",
            )
        run("sample", "-m", "experiment=t2_mog", "model=mog_oracle", "dataset.dim=2", f"hydra.sweep.dir={root}/t2/rtk")
        run(
            "sample",
            "-m",
            "experiment=t1_mog",
            "model=mog_oracle",
            "dataset.dim=2",
            "sampler=ddim",
            "sampler.nfe=2,4,8,16,32,64",
            f"hydra.sweep.dir={root}/t2/ddim",
        )
        run(
            "sample",
            "-m",
            "experiment=t1_mog_dddm",
            "dataset.dim=2",
            "sampler.levels=1,2,4,8",
            "sampler.nfe=8",
            f"hydra.sweep.dir={root}/t2/dddm",
        )
    out.mkdir(parents=True, exist_ok=True)
    note = (
        f"Built by scripts/make_mog_tables.py from {root}; n = 2,000 samples per row (W2 and MMD on 1,000), "
        f"seed 0, 8 unequal components. {SAMPLE_NOTE}"
    )
    t1 = sort_rows([sample_row(p) for p in find_runs([root / "t1"])])
    write_table(t1, SAMPLE_COLUMNS, out / "T1", "T1: samplers at equal NFE, mixture of Gaussians", note)
    plot_quality_vs_nfe(t1, out / "T1.png")
    t2 = sort_rows([sample_row(p) for p in find_runs([root / "t2"])])
    write_table(t2, SAMPLE_COLUMNS, out / "T2", "T2: constant step size, mixture of Gaussians (oracle, d = 2)", note)
    print(f"{len(t1)} T1 rows and {len(t2)} T2 rows in {out} after {time.time() - started:.0f} s")
    if args.docs:
        tables = [out / f"{name}.md" for name in ("T1", "T2")]
        write_docs_page(args.docs, "scripts/make_mog_tables.py", tables, out / "T1.png")


if __name__ == "__main__":
    main()
