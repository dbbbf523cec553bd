"""``rtkrun diagnose``: the regularity of the DDDM map F(z) = x_t − f(z, x_t, t) at points where
samplers use it, per point: along a sampler's trajectory (a callback records (x_t, t, z) at every
evaluation) and at data-derived x_t with z the plain estimate. Writes ``diagnostics/points.csv``,
histograms, and per-(source, t) summaries into ``metrics.json``: exact float64 Jacobians and
Hessians for small d, the matrix-free chain (Lanczos, Hutchinson, a B_sq bracket) for large d."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import torch

from rtkrun import runs
from rtkrun.build import load_trained_parts, resolve_device
from rtkrun.diagnostics.convexity import bound_chain, matrix_free_chain
from rtkrun.diffusion.param import expand_like
from rtkrun.errors import RtkrunError
from rtkrun.rundir import flatten, provenance
from rtkrun.samplers import SAMPLERS, settings_for
from rtkrun.sampling import bind_to_data, start_batch
from rtkrun.seeding import SampleNoise

log = logging.getLogger("rtkrun")
EXACT_MAX_DIM = 64  # above this, estimator=auto goes matrix-free (the exact path stores d×d×d Hessians)
COLUMNS = [
    "L",
    "L_residual",
    "sigma_min",
    "R",
    "B_sq",
    "frobenius_sq",
    "frobenius_se",
    "weighted_hessian",
    "true",
    "link_sigma_min",
    "margin",
    "margin_frobenius",
    "paper_margin",
]


def _points(run, dataset, schedule, model, device: torch.device) -> list[dict[str, Any]]:
    """(source, t, level, iteration, x_t, z) batches to diagnose."""
    dc, n = run.diagnostics, run.diagnostics.n_points
    gen = torch.Generator().manual_seed(run.seed)
    if dataset.mixture is not None:  # exact samples
        x0 = dataset.mixture.sample(n, gen)
    else:  # n training examples, drawn without replacement
        x0 = dataset.get_batch(torch.randperm(len(dataset), generator=gen)[:n]).double().cpu()
    # Molecules live on a subspace (real atoms, zero centre of mass): noise is projected into it
    # and the denoiser gets the batch's node mask, so F maps the subspace to itself. The
    # estimators still run in the ambient 29 × 9 space, where the complement is inert (J = 0
    # there): L is exact, but σ_min(I + J) is reported as min(1, its value on the subspace) and
    # the true curvature as min(1/σ², its value on the subspace).
    space = dataset.space_of(x0)
    denoiser = bind_to_data(model, dataset, x0.to(device))
    out = []
    for t in dc.noise_levels:
        tt = torch.full((x0.shape[0],), float(t), dtype=torch.float64)
        a, s = schedule.alpha_sigma(tt)
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        eps = eps if space is None else space.project(eps)
        x_t = expand_like(a, x0) * x0 + expand_like(s, x0) * eps
        x_t, tt = x_t.to(device), tt.to(device)
        with torch.no_grad():
            z = denoiser(x_t, tt)
        out.append(
            {"source": "data", "t": float(t), "level": -1, "iteration": -1, "x": x_t, "z": z, "denoiser": denoiser}
        )
    if dc.trajectory:
        recorded = []
        noise = SampleNoise.for_range(run.seed, 0, n, device=device, dtype=torch.float64)
        traj_denoiser, x_T, noise, _ = start_batch(model, dataset, noise)
        SAMPLERS[run.sampler.name][1](
            traj_denoiser,
            x_T,
            schedule,
            generator=noise,
            callback=recorded.append,
            **settings_for(run.sampler),
        )
        for info in recorded:
            z = info.get("z", info.get("x0_hat"))
            if z is None or "x" not in info:
                continue
            out.append(
                {
                    "source": f"trajectory/{run.sampler.name}",
                    "t": float(info["t"]),
                    "level": int(info.get("level", info.get("step", -1))),
                    "iteration": int(info.get("iteration", 0)),
                    "x": info["x"].detach(),
                    "z": z.detach(),
                    "denoiser": traj_denoiser,
                }
            )
    return out


def _summaries(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(f"{r['source']}/t={r['t']:.4g}", []).append(r)
    for key, rs in groups.items():
        stats: dict[str, float] = {"n": len(rs)}
        for col in ("L", "sigma_min", "R", "B_sq", "margin", "paper_margin", "true"):
            v = torch.tensor([r[col] for r in rs], dtype=torch.float64)
            stats[f"{col}/median"] = v.median().item()
            stats[f"{col}/p90"] = v.quantile(0.9).item()
        truly = [r["true"] > 0 for r in rs]
        stats["certified"] = sum(r["margin"] > 0 for r in rs) / len(rs)
        stats["paper_certified"] = sum(r["paper_margin"] > 0 for r in rs) / len(rs)
        stats["strongly_convex"] = sum(truly) / len(rs)
        stats["paper_false_claims"] = sum(r["paper_margin"] > 0 and not c for r, c in zip(rs, truly)) / len(rs)
        out.update(flatten(key, stats))
    return out


def _symlog_bins(values: list[float], n: int = 40):
    """Bin edges even in asinh(v): log-like on both sides of 0, linear near it, so outliers
    (margins near 2.4·10⁴) do not flatten the bulk into one bin."""
    import numpy as np

    lo, hi = np.arcsinh(min(values)), np.arcsinh(max(values))
    return np.sinh(np.linspace(lo, hi if hi > lo else lo + 1e-9, n + 1))


def _histograms(rows: list[dict[str, Any]], path: Path) -> None:
    """One row of panels per noise level t (L, corrected margin, true λ_min), on symmetric-log
    axes, one colour per point source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["t"] for r in rows})
    titles = {"L": "L = ||dF/dz||", "margin": "corrected margin", "true": "true lambda_min(grad^2 g)"}
    fig, axes = plt.subplots(len(levels), 3, figsize=(13, 3 * len(levels)), squeeze=False)
    for i, t in enumerate(levels):
        mine = [r for r in rows if r["t"] == t]
        for ax, col in zip(axes[i], titles):
            bins = _symlog_bins([r[col] for r in mine])
            for source in sorted({r["source"] for r in mine}):
                ax.hist([r[col] for r in mine if r["source"] == source], bins=bins, alpha=0.6, label=source)
            ax.set_xscale("symlog", linthresh=1e-3)
            ax.set_title(f"{titles[col]}, t = {t:.4g}", fontsize=9)
            ax.legend(fontsize=7)
    # fixed margins: tight_layout measures every symlog tick label, half the figure's cost
    rows_tall = len(levels)
    fig.subplots_adjust(
        left=0.04, right=0.99, bottom=0.15 / rows_tall, top=1 - 0.1 / rows_tall, wspace=0.18, hspace=0.45
    )
    runs.save_figure(fig, path, dpi=100)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A console table per (point source, t): medians of L, R and the corrected margin, the
    fraction certified strongly convex by it, and the fraction truly strongly convex."""
    header = f"{'source':<16} {'t':>8} {'n':>5} {'median L':>10} {'median R':>10} {'median margin':>14} "
    lines = [header + f"{'certified':>10} {'truly convex':>13}"]
    for source, t in sorted({(r["source"], r["t"]) for r in rows}):
        rs = [r for r in rows if r["source"] == source and r["t"] == t]
        med = {c: torch.tensor([r[c] for r in rs], dtype=torch.float64).median().item() for c in ("L", "R", "margin")}
        certified = 100 * sum(r["margin"] > 0 for r in rs) / len(rs)
        truly = 100 * sum(r["true"] > 0 for r in rs) / len(rs)
        lines.append(
            f"{source:<16} {t:>8.4g} {len(rs):>5} {med['L']:>10.4g} {med['R']:>10.4g} {med['margin']:>14.4g} "
            f"{certified:>9.0f}% {truly:>12.0f}%"
        )
    return lines


def diagnose(run, run_dir: Path) -> dict[str, Any]:
    dc = run.diagnostics
    device = resolve_device(run.device)
    dataset, schedule, model = load_trained_parts(run)
    model = model.double().eval().requires_grad_(False).to(device)  # derivatives in z only
    dim = math.prod(dataset.sample_shape)
    estimator = dc.estimator if dc.estimator != "auto" else ("exact" if dim <= EXACT_MAX_DIM else "lanczos")
    if estimator == "exact" and dataset.on_subspace:
        # The exact path differentiates one sample at a time (vmap), but a molecule denoiser
        # carries its whole batch's node mask: the two do not fit together.
        raise RtkrunError(
            f"diagnostics.estimator=exact does not support dataset={dataset.cfg.name} (per-batch node masks); "
            "use diagnostics.estimator=lanczos"
        )
    log.info("diagnosing with the %s estimators (d = %d)", estimator, dim)
    rows = []
    for p in _points(run, dataset, schedule, model, device):
        x, z, n = p["x"], p["z"], p["x"].shape[0]
        t = torch.full((n,), p["t"], dtype=torch.float64, device=device)
        sigma = dc.sigma or schedule.sigma(torch.tensor(p["t"], dtype=torch.float64)).item()

        denoiser = p["denoiser"]

        def F(zz, xx, tt, denoiser=denoiser):  # the DDDM map at (x_t, t): F(z) = x_t − f(z, x_t, t)
            return xx - denoiser(xx, tt, zz)

        if estimator == "exact":
            chain = bound_chain(F, x, z, sigma, context=(x, t))
        else:
            gen = torch.Generator().manual_seed(run.seed)  # probes drawn on the CPU: device-independent
            chain = matrix_free_chain(
                F,
                x,
                z,
                sigma,
                iters=dc.iters,
                tol=dc.tol,
                probes=dc.probes,
                restarts=dc.restarts,
                ascent_steps=dc.ascent_steps,
                generator=gen,
                context=(x, t),
            )
        zero = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            rows.append(
                {
                    "source": p["source"],
                    "t": p["t"],
                    "level": p["level"],
                    "iteration": p["iteration"],
                    "sample": i,
                    "sigma": sigma,
                    "estimator": estimator,
                    **{c: chain.get(c, zero)[i].item() for c in COLUMNS},
                }
            )
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["source", "t", "level", "iteration", "sample", "sigma", "estimator", *COLUMNS]
    )
    writer.writeheader()
    writer.writerows(rows)
    runs.atomic_write_bytes(run_dir / "diagnostics" / "points.csv", buf.getvalue().encode())
    _histograms(rows, run_dir / "diagnostics" / "histograms.png")
    metrics = {
        "status": "complete",
        **provenance(run),
        "ckpt": run.ckpt,
        "model": run.model.name,
        "dataset/dim": dim,
        "estimator": estimator,
        "points": len(rows),
        **flatten("diag", _summaries(rows)),
    }
    runs.write_json(run_dir / "metrics.json", metrics)
    for line in summary_lines(rows):
        log.info(line)
    certified = sum(r["margin"] > 0 for r in rows) / max(len(rows), 1)
    log.info(
        "%d points: %.0f%% certified strongly convex by the corrected margin; %s",
        len(rows),
        100 * certified,
        run_dir.resolve(),
    )
    return metrics
