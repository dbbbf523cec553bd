"""Regenerate every paper table (T1–T8, listed in the README) and its figures into outputs/tables/.

``--size small`` (``make reproduce-small``) runs the whole pipeline at CPU sizes on the real
commands: T1/T2 sweeps on the 2-D mixture, T3 diagnostics, T4 on real QM9 molecules with a
small EGNN trained for a few minutes, T5 on CIFAR-10 when the data are present, T6, T7 and the
DDDM training study T8 (every `dddm_variant` on the mixture, three on QM9, snapshots at
log-spaced epochs).
``--size full`` (``make reproduce``) runs the papers' protocol: larger sweeps, EDM's EGNN and
the reference U-Net (GPU; days of training), so it is meant for a GPU machine or a cluster.
Every table is built from run directories by the same code as ``rtkrun report``; each step's
wall time is printed and written to outputs/tables/README.md.

    python scripts/reproduce.py --size small
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rtkrun.report.output import write_table
from rtkrun.report.t5 import T5_COLUMNS, t5_quoted_rows
from rtkrun.runs import atomic_write_bytes

PYTHON = sys.executable
RTKRUN = str(Path(sys.executable).parent / "rtkrun")
SIZES = {
    "small": {
        "mog_dims": ["2"],
        "t3_dims": ["2"],
        "t8_dims": "2",
        "t8_qm9": [],  # experiment=t8_qm9 as written: the first 1,000 molecules, 100 epochs
        "t7": ["--dims", "2", "8", "32", "128", "--seeds", "2"],
        "qm9": ["experiment=qm9_cpu", "trainer.max_steps=600", "evaluation.n_samples=100", "evaluation.batch_size=100"],
        "qm9_data_n": "1000",
        "cifar": [
            "model=dddm_unet_small",
            "trainer.max_steps=300",
            "trainer.batch_size=32",
            "trainer.precision=fp32",
            "evaluation.n_samples=500",
            "evaluation.batch_size=250",
        ],
    },
    "full": {
        "mog_dims": ["2", "16", "64"],
        "t3_dims": ["2", "16"],
        "t8_dims": "2,16",
        "t8_qm9": ["dataset.limit=null", "model=egnn", "trainer.max_steps=156200"],  # 100 epochs of QM9
        "t7": [],
        "qm9": ["dataset=qm9"],
        "qm9_data_n": "10000",
        "cifar": ["dataset=cifar10", "evaluation.n_samples=50000"],
    },
}


def step(label: str, command: list[str], timings: dict[str, float]) -> None:
    print(f"== {label}: {' '.join(command)}", flush=True)
    start = time.time()
    subprocess.run(command, check=True)
    timings[label] = time.time() - start
    print(f"== {label}: {timings[label]:.0f} s", flush=True)


def cifar10_root() -> Path:
    return Path(os.environ.get("RTKRUN_DATA", "data")) / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--root", default="outputs/multirun/reproduce")
    parser.add_argument("--out", default="outputs/tables")
    args = parser.parse_args()
    size, root, out = SIZES[args.size], Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.time()

    step("T1, T2", [PYTHON, "scripts/make_mog_tables.py", "--dims", *size["mog_dims"], "--out", str(out)], timings)
    step("T3", [PYTHON, "scripts/make_t3.py", "--dims", *size["t3_dims"], "--out", str(out)], timings)

    qm9 = root / "t4"
    step("T4 train", [RTKRUN, "train", *size["qm9"], f"hydra.run.dir={qm9 / 'train'}"], timings)
    data_row = [RTKRUN, "evaluate", "samples=data", "dataset=qm9", f"evaluation.n_samples={size['qm9_data_n']}"]
    step("T4 data row", [*data_row, f"hydra.run.dir={qm9 / 'data'}"], timings)
    report = [RTKRUN, "report", f"runs={qm9}", f"out={out}", f"hydra.run.dir={qm9 / 'report'}"]
    step("T4 table", report, timings)

    cifar = root / "t5"
    if (cifar10_root() / "cifar-10-batches-py").is_dir():
        train = [RTKRUN, "train", "dataset=cifar10", *size["cifar"], f"hydra.run.dir={cifar / 'train'}"]
        step("T5 train", train, timings)
        report = [RTKRUN, "report", f"runs={cifar}", f"out={out}", f"hydra.run.dir={cifar / 'report'}"]
        step("T5 table", report, timings)
    else:
        note = (
            f"NOT RUN: CIFAR-10 was not found under {cifar10_root()} (it cannot be downloaded here). Only the "
            "published rows are shown; put the python-pickle release there (or set RTKRUN_DATA) and re-run."
        )
        write_table(t5_quoted_rows(), T5_COLUMNS, out / "T5", "T5: CIFAR-10 samplers", note)
        print(f"== T5: {note}", flush=True)

    step("T6", [PYTHON, "scripts/make_t6.py", "--out", str(out)], timings)
    step("T7", [PYTHON, "scripts/make_t7.py", *size["t7"], "--out", str(out)], timings)

    t8 = root / "t8"
    step(
        "T8 train",
        [RTKRUN, "train", "-m", "experiment=t8_mog", f"dataset.dim={size['t8_dims']}", f"hydra.sweep.dir={t8}"],
        timings,
    )
    t8_qm9 = root / "t8_qm9"
    step(
        "T8 QM9 train",
        [RTKRUN, "train", "-m", "experiment=t8_qm9", *size["t8_qm9"], f"hydra.sweep.dir={t8_qm9}"],
        timings,
    )
    report = [RTKRUN, "report", f"runs=[{t8},{t8_qm9}]", f"out={out}", f"hydra.run.dir={root / 't8_report'}"]
    step("T8 tables", report, timings)

    total = time.time() - started
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    lines = [
        f"# Tables ({args.size} protocol)",
        "",
        f"Generated by `python scripts/reproduce.py --size {args.size}` on {datetime.date.today()} ({machine}).",
        f"Total wall time: {total / 60:.1f} min.",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.0f} |" for k, v in timings.items()),
        "",
        "Tables: " + ", ".join(sorted(p.name for p in out.glob("*.md") if p.name != "README.md")),
    ]
    atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
