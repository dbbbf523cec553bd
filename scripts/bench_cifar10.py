"""CIFAR-10 throughput: DDDM training steps (images/s, model-FLOP utilisation, peak memory) for
fp32, bf16 and bf16 + torch.compile in one run, and sampling images/s at 1, 2 and 35 NFE.

The data are random uint8 images written in the release's format and read by the real loader
(throughput does not depend on pixel values; the real dataset cannot be downloaded here). A
training step is ``Trainer.step_once``: the DDDM objective with its 50,000-entry buffer on the
device, backward, clipping, AdamW and the EMA, as ``rtkrun train`` runs it. FLOPs are counted
with ``torch.utils.flop_counter`` on one step; MFU = FLOPs/step × steps/s ÷ the GPU's dense
bf16 peak. Timing: CUDA events around ``--steps`` steps after ``--warmup`` steps.

    python scripts/bench_cifar10.py --out docs/cifar10-bench.md            # GPU, reference size
    python scripts/bench_cifar10.py --preset small --batch 32 --steps 5    # CPU, small preset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from rtkrun.bench.presets import write_fake_cifar10
from rtkrun.bench.timing import Stopwatch
from rtkrun.config import EvaluationConfig, TrainerConfig
from rtkrun.data import cifar10
from rtkrun.diffusion.schedules import SCHEDULES, build_schedule
from rtkrun.loggers import NullTracker
from rtkrun.models.unet import UNetConfig, build
from rtkrun.samplers import dddm, ddim
from rtkrun.seeding import SampleNoise
from rtkrun.trainer import Trainer, epoch_order

PRESETS = {
    "reference": UNetConfig(),
    "small": UNetConfig(channels=32, channel_mult=[1, 2, 2], blocks_per_level=2, dropout=0.1),
}
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
BF16_PEAK = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4, "A100": 312.0}


def bf16_peak(name: str) -> float | None:
    if "H100" in name:
        return BF16_PEAK["H100 PCIe" if "PCIe" in name else "H100 NVL" if "NVL" in name else "H100 SXM"]
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def make_trainer(args, dataset, schedule, device, precision: str, compile_: bool, run_dir: Path) -> Trainer:
    torch.manual_seed(0)
    model = build(PRESETS[args.preset], dataset, schedule).to(device)
    tc = TrainerConfig(
        objective="dddm",
        distance="pseudo_huber",
        batch_size=args.batch,
        lr=1e-4,
        warmup_steps=0,
        ema_decay=0.9999,
        precision=precision,
        channels_last=args.channels_last == "on",
        compile=compile_,
        compile_mode=args.compile_mode,
    )
    run = SimpleNamespace(trainer=tc, seed=0, evaluation=EvaluationConfig())
    return Trainer(run, model, dataset, schedule, run_dir, device, {"model": {"name": "dddm_unet"}}, NullTracker())


def profile_steps(trainer: Trainer, batches: list[torch.Tensor], device: torch.device) -> None:
    """Print the kernels that take the most device time over a few steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for index in batches:
            trainer.step_once(index, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60), flush=True)


def bench_training(args, dataset, schedule, device, run_dir: Path) -> list[dict]:
    modes = [(m.split("+")[0], m.endswith("+compile")) for m in args.modes.split(",")]
    rows = []
    order = epoch_order(0, 0, len(dataset))
    flops_per_step = None
    for precision, compile_ in modes:
        trainer = make_trainer(args, dataset, schedule, device, precision, compile_, run_dir)
        batches = [order[i * args.batch : (i + 1) * args.batch] for i in range(args.warmup + args.steps)]
        if flops_per_step is None:
            with FlopCounterMode(display=False) as counter:
                trainer.train_step(batches[0], 0)
            flops_per_step = counter.get_total_flops()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for index in batches[: args.warmup]:
            trainer.step_once(index, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - started
        with Stopwatch(device) as timer:
            for index in batches[args.warmup :]:
                trainer.step_once(index, 0)
        if args.profile:
            profile_steps(trainer, batches[args.warmup : args.warmup + 3], device)
        steps_per_s = args.steps / timer.seconds
        peak = bf16_peak(torch.cuda.get_device_name()) if device.type == "cuda" else None
        rows.append(
            {
                "mode": f"{precision}{f' + compile ({args.compile_mode})' if compile_ else ''}"
                f"{', channels-last' if args.channels_last == 'on' else ''}",
                "batch": args.batch,
                "images_per_s": steps_per_s * args.batch,
                "ms_per_step": 1000 / steps_per_s,
                "tflops_per_step": flops_per_step / 1e12,
                "achieved_tflop_s": flops_per_step * steps_per_s / 1e12,
                "mfu_bf16_peak": flops_per_step * steps_per_s / (peak * 1e12) if peak else None,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                "warmup_s": warmup_s,
            }
        )
        print(rows[-1], flush=True)
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_sampling(args, dataset, schedule, device) -> list[dict]:
    torch.manual_seed(0)
    model = build(PRESETS[args.preset], dataset, schedule).to(device).eval()
    configs = [
        ("dddm", 1, lambda net, x, g: dddm.dddm(net, x, schedule, generator=g, iterations=1, clip=1.0)),
        ("dddm", 2, lambda net, x, g: dddm.dddm(net, x, schedule, generator=g, iterations=2, clip=1.0)),
        ("ddim", 35, lambda net, x, g: ddim.ddim(net, x, schedule, generator=g, steps=35)),
    ]
    rows = []
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    for precision in precisions:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        for name, nfe, run in configs:
            n = args.sample_batch
            noise = SampleNoise.for_range(0, 0, n, device=device)
            x_T = noise.randn(3, 32, 32)
            with autocast:
                run(model, x_T, noise)  # warm-up (cuDNN autotuning)
            seconds = {}
            for what in ("end_to_end", "network_only"):
                with Stopwatch(device) as timer, autocast:
                    if what == "end_to_end":  # per-sample noise streams drawn on the CPU, as rtkrun does
                        noise = SampleNoise.for_range(0, 0, n, device=device)
                        run(model, noise.randn(3, 32, 32), noise)
                    else:
                        with torch.no_grad():
                            t = torch.full((n,), 0.5, device=device)
                            for _ in range(nfe):
                                model(x_T, t, x_T)
                seconds[what] = timer.seconds
            rows.append(
                {
                    "sampler": name,
                    "nfe": nfe,
                    "precision": precision,
                    "batch": n,
                    "images_per_s": n / seconds["end_to_end"],
                    "network_only_images_per_s": n / seconds["network_only"],
                    "overhead_ratio": seconds["end_to_end"] / seconds["network_only"],
                }
            )
            print(rows[-1], flush=True)
    return rows


def markdown(meta: dict, train_rows: list[dict], sample_rows: list[dict]) -> str:
    def fmt(v, spec):
        return "–" if v is None else format(v, spec)

    lines = [
        f"# CIFAR-10 throughput ({meta['preset']} U-Net, {meta['parameters'] / 1e6:.2f} M parameters)",
        "",
        f"Machine: {meta['device_name']}; torch {meta['torch']}; {meta['date']}. "
        f"Command: `python scripts/bench_cifar10.py {meta['argv']}`.",
        "",
        "## Training (DDDM objective, buffer on the device, AdamW, EMA, clipping)",
        "",
        "| mode | batch | images/s | ms/step | TFLOP/step | achieved TFLOP/s | MFU (bf16 peak) | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in train_rows:
        mfu = None if r["mfu_bf16_peak"] is None else 100 * r["mfu_bf16_peak"]
        lines.append(
            f"| {r['mode']} | {r['batch']} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | "
            f"{r['tflops_per_step']:.2f} | {r['achieved_tflop_s']:.1f} | {fmt(mfu, '.1f')}{'%' if mfu else ''} | "
            f"{fmt(r['peak_memory_gib'], '.1f')} |"
        )
    lines += [
        "",
        "## Sampling",
        "",
        "End to end includes rtkrun's per-sample noise streams (drawn on the CPU); network only is NFE bare calls.",
        "",
        "| sampler | NFE | precision | batch | images/s | network-only images/s | overhead ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sample_rows:
        lines.append(
            f"| {r['sampler']} | {r['nfe']} | {r['precision']} | {r['batch']} | {r['images_per_s']:.0f} | "
            f"{r['network_only_images_per_s']:.0f} | {r['overhead_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sample-batch", type=int, default=500)
    parser.add_argument(
        "--modes", help="training modes, e.g. fp32,bf16,bf16+compile (default: all on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--channels-last", choices=["on", "off"], default="off")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of each training mode")
    parser.add_argument("--images", type=int, default=50_000, help="training images in the fake release")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (and .json beside it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.modes = args.modes or ("fp32,bf16,bf16+compile" if device.type == "cuda" else "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_cifar10(Path(tmp), args.images // 5)
        dataset = cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=tmp, verify="never"))
        schedule = build_schedule(SCHEDULES["linear"][0]())
        train_rows = bench_training(args, dataset, schedule, device, Path(tmp) / "run")
        sample_rows = [] if args.skip_sampling else bench_sampling(args, dataset, schedule, device)
        parameters = sum(p.numel() for p in build(PRESETS[args.preset], dataset, schedule).parameters())
    import sys

    meta = {
        "preset": args.preset,
        "parameters": parameters,
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores, {platform.machine()})",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "argv": " ".join(sys.argv[1:]),
    }
    text = markdown(meta, train_rows, sample_rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "train": train_rows, "sample": sample_rows}))


if __name__ == "__main__":
    main()
