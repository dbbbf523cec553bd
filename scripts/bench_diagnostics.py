"""Cost and accuracy of the regularity estimators (rtkrun/diagnostics) against the exact path.

For d in {64, 768, 3072}: a SiLU MLP, for image-shaped d (3×16×16, 3×32×32) a small SiLU conv
net, and the DDDM map of a small ``dddm_unet`` at d = 3072. Reports, per estimator,
seconds, forward-pass equivalents (seconds / one forward of the batch) and the relative error
of ‖J‖₂ against the exact float64 value (jacrev + SVD). Prints a table; --out writes Markdown.

    python scripts/bench_diagnostics.py --out docs/diagnostics-bench.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
from pathlib import Path

import torch

from rtkrun.bench.timing import Stopwatch
from rtkrun.diagnostics.hessian import hutchinson_frobenius
from rtkrun.diagnostics.jacobian import exact_singular_values, lanczos_singular_values, power_iteration_norm


def mlp(d: int, width: int = 512):
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, width),
        torch.nn.SiLU(),
        torch.nn.Linear(width, width),
        torch.nn.SiLU(),
        torch.nn.Linear(width, d),
    )
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
    return net.double()


def conv(channels: int, size: int, width: int = 32, device: torch.device | None = None):
    g = torch.Generator().manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(channels, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, channels, 3, padding=1),
    )
    for p in body.parameters():
        p.data = torch.randn(p.shape, generator=g) / max(p[0].numel(), 1) ** 0.5
    body = body.double().to(device or "cpu")
    return lambda z: body(z.reshape(z.shape[0], channels, size, size)).reshape(z.shape[0], -1)


def unet(device: torch.device):
    """The DDDM map F(z) = x − f(z, x, t) of an (untrained) ``dddm_unet_small`` at one fixed image x
    and t = 0.5, for every z in the batch (rows stay independent: GroupNorm is per sample)."""
    from rtkrun.diffusion.schedules import SCHEDULES, build_schedule
    from rtkrun.models.unet import DDDMUNet, UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(channels=16, channel_mult=[1, 2], blocks_per_level=1, dropout=0.0, groups=8)
    model = DDDMUNet(cfg, (3, 32, 32), build_schedule(SCHEDULES["linear"][0]()), 0.5).double().eval().to(device)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    t = torch.full((1,), 0.5, dtype=torch.float64, device=device)

    def F(z):
        n = z.shape[0]
        xs = x.expand(n, -1, -1, -1)
        return (xs - model(xs, t.expand(n), z.reshape(n, 3, 32, 32))).reshape(n, -1)

    return F


def timed(fn, repeats: int = 3):
    """Median time of ``fn`` (the suite's clock) and its last output."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times, out = [], None
    for _ in range(repeats):
        with Stopwatch(device) as clock:
            out = fn()
        times.append(clock.seconds)
    return statistics.median(times), out


def bench_case(name: str, d: int, F, batch: int, device: torch.device, chunk: int) -> list[str]:
    z = torch.randn(batch, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    gen = torch.Generator().manual_seed(0)  # CPU draws, moved to the device: same numbers everywhere
    with torch.no_grad():
        t_fwd, _ = timed(lambda: F(z), repeats=5)

    def exact_sv():  # one sample at a time: vmap over samples × cotangents multiplies the memory
        return torch.cat([exact_singular_values(F, z[i : i + 1], chunk_size=chunk) for i in range(len(z))])

    t_exact, sv = timed(exact_sv, repeats=2 if d <= 768 else 1)  # the first call pays vmap's tracing
    exact = sv[:, 0]
    t_lanczos, (lz, _, iters, _, _) = timed(lambda: lanczos_singular_values(F, z, iters=60, tol=1e-5, generator=gen))
    t_power, pw = timed(lambda: power_iteration_norm(F, z, iters=30, generator=gen))
    t_hutch, _ = timed(lambda: hutchinson_frobenius(F, z, probes=16, generator=gen), repeats=1)
    rel = lambda est: f"{((est - exact).abs() / exact).max().item():.1e}"  # noqa: E731
    rows = [
        ("exact (jacrev + SVD)", t_exact, "reference", d),
        ("Lanczos (GKL), residual ≤ 1e-5·σ", t_lanczos, rel(lz), iters),
        ("power iteration", t_power, rel(pw), 30),
        ("Hutchinson Σ‖H‖²_F, 16 probes", t_hutch, "", 16),
    ]
    lines = [
        f"| {name} | {d} | {est} | {secs:.3f} | {secs / t_fwd:.0f} | {err} | {it} |" for est, secs, err, it in rows
    ]
    lines.append(f"| {name} | {d} | **Lanczos speed-up over exact** | {t_exact / t_lanczos:.1f}× |  |  |  |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated model names to leave out, e.g. dddm_unet_small")
    parser.add_argument("--chunk", type=int, default=256, help="vjps per vmap chunk of the exact Jacobian")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    cases = [
        ("mlp", 64, mlp(64).to(device)),
        ("mlp", 768, mlp(768).to(device)),
        ("conv 3x16x16", 768, conv(3, 16, device=device)),
        ("mlp", 3072, mlp(3072).to(device)),
        ("conv 3x32x32", 3072, conv(3, 32, device=device)),
        ("dddm_unet_small 3x32x32", 3072, unet(device)),
    ]
    lines = [
        "| model | d | estimator | seconds | forward equivalents | ‖J‖₂ rel. error | iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    skip = {name for name in args.skip.split(",") if name}
    for name, d, F in [c for c in cases if c[0].split()[0] not in skip]:
        rows = bench_case(name, d, F, args.batch, device, args.chunk)
        print("\n".join(rows), flush=True)
        lines += rows
    header = (
        f"Batch {args.batch}, float64, "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else platform.machine() + ' CPU, torch threads 2'}, "
        f"torch {torch.__version__}, "
        f"{datetime.date.today()}.\nRegenerate: `python scripts/bench_diagnostics.py --out docs/diagnostics-bench.md`."
    )
    if args.out:
        text = "# Diagnostics: estimator cost and accuracy\n\n" + header + "\n\n" + "\n".join(lines) + "\n"
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
