"""Training losses for denoisers ``f(x_t, t, z=None) -> x0_hat``.

* ``eps``: Ho et al. 2020's simple loss ‖ε_hat − ε‖², ε_hat converted from x0_hat.
* ``x0``: ‖x0_hat − x0‖², weighted per noise level (``noise_weighting``).
* ``dddm``: Zhang, Wang & Luo 2024 (docs/science.md, DDDM training). A persistent buffer holds one estimate
  z_i per training example (global index i), initialised N(0, I) and read detached;
  loss = w·d(x0_hat, x0) + (1 − w)·d(x0_hat, z_i) with w = 1/(epoch + 1); the buffer entry is
  then overwritten by the detached x0_hat (``buffer_update=estimate``, the paper's text) or by
  the clean x0 (``buffer_update=clean``, what the official code does). A fraction
  ``null_estimate_prob`` of each batch gets z = None and only the data term, the
  self-conditioning trick of Chen, Zhang & Hinton 2022, so the same network stays a plain
  denoiser for every other sampler.
* One-step terms (added to a fraction ``one_step_prob`` of a ``dddm`` batch's rows, or every row
  of ``flow_map``): the DDDM-1 sampler's own input, x_T ~ N(0, I) (one fixed draw per example,
  ``OneStepPairs``) and a fresh z⁽⁰⁾ ~ N(0, I) at t_max, regressed onto a deterministic
  teacher's sample from the same x_T: the exact flow map (``flow_map``, the distillation
  reference on the MoG) or the network's own EMA DDIM solve (self-distillation).
  A regression target that does not depend on x_T is learned as its mean, so a one-step map
  needs a teacher that couples x_T to x0: see docs/t8-mog.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rtkrun.diffusion.param import eps_from_x0, expand_like
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.distributed import all_gather_rows
from rtkrun.schemas.diffusion import ObjectiveConfig


def distance(a: torch.Tensor, b: torch.Tensor, kind: str, huber_c: float, space=None) -> torch.Tensor:
    """Per-sample distance, shape (B,). ``mse``: mean of squares; ``pseudo_huber``:
    √(mean of squares + c²) − c (the per-coordinate-mean convention, so c does not scale with d).
    With a ``space`` the mean runs over the sample's own entries (a molecule's real atoms)."""
    mse = ((a - b) ** 2).flatten(1).mean(1) if space is None else space.mean_sq(a, b)
    if kind == "mse":
        return mse
    return torch.sqrt(mse + huber_c**2) - huber_c


@dataclass
class LossInputs:
    x0: torch.Tensor
    index: torch.Tensor  # global example indices, for the DDDM buffer
    epoch: int
    # Data parallel or accumulated: (first row, rows in the whole step) of this shard. The noise
    # of the whole step's batch is drawn and sliced, so any split sees the noise one call would.
    shard: tuple[int, int] | None = None
    # The subspace the batch lives in (molecules: real atoms, zero centre of mass), or None for
    # R^d: noise is projected into it, the model gets its ``cond`` and distances its ``mean_sq``.
    space: Any = None
    # Rows whose example is horizontally mirrored in this batch (image augmentation), or None.
    # The DDDM buffer keeps estimates in the examples' canonical orientation (see ``_dddm``).
    mirror: torch.Tensor | None = None

    def rows(self) -> tuple[int, slice]:
        """(how many rows to draw noise for, which of them are this shard's)."""
        n = self.x0.shape[0]
        if self.shard is None:
            return n, slice(0, n)
        start, total = self.shard
        return total, slice(start, start + n)


def mirror_rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``x`` with the rows flagged in ``rows`` flipped along the last (width) axis; its own
    inverse, so it maps canonical to batch orientation and back."""
    if rows is None:
        return x
    return torch.where(rows.to(x.device).view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)


class EstimateBuffer:
    """DDDM's per-example estimates z_i, indexed by the global dataset index. Under data
    parallelism every rank holds the whole buffer and each write is all-gathered, so the
    buffers stay identical and two ranks never write different values to one index."""

    def __init__(self, n: int, shape: tuple[int, ...], generator: torch.Generator, device) -> None:
        self.z = torch.randn(n, *shape, generator=generator).to(device)

    def read(self, index: torch.Tensor) -> torch.Tensor:
        return self.z[index]

    def write(self, index: torch.Tensor, values: torch.Tensor) -> None:
        index, values = all_gather_rows(index), all_gather_rows(values.detach().to(self.z.dtype))
        self.z[index] = values


class OneStepPairs:
    """The one-step rows' inputs and targets, one pair per training example i: a fixed
    x_T,i ~ N(0, I) and the teacher's sample from it. Targets are solved when a row first needs
    them: once for a fixed teacher (the exact flow map), and for the EMA teacher of
    self-distillation again at the first use in each later epoch. So an example costs one
    teacher solve per epoch in which it is drawn as a one-step row, not one per example per
    epoch (at ``one_step_prob`` = ¼ that is a quarter of the work). z⁽⁰⁾ is drawn fresh at every
    visit: the sampler's z⁽⁰⁾ is independent of x_T."""

    def __init__(
        self, n: int, shape: tuple[int, ...], generator: torch.Generator, device, refresh: bool, space_of=None
    ) -> None:
        # space_of(index) -> the examples' subspace (molecules: their atoms, zero centre of mass),
        # or None for R^d: x_T,i is then the standard normal of example i's own subspace.
        self.space_of = space_of
        self.x_T = torch.randn(n, *shape, generator=generator).to(device)
        if space_of is not None:
            for index in torch.arange(n, device=device).split(4096):
                self.x_T[index] = space_of(index).project(self.x_T[index])
        self.target = torch.zeros_like(self.x_T)
        self.solved = torch.full((n,), -1, dtype=torch.long, device=device)  # the epoch each target was solved in
        self.refresh = refresh

    def targets(self, teacher, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """The targets of examples ``index`` (distinct), solving the stale ones with
        ``teacher(x_T, space)`` (space None on R^d)."""
        stale = self.solved[index] < (epoch if self.refresh else 0)
        if stale.any():
            need = index[stale]
            space = None if self.space_of is None else self.space_of(need)
            with torch.no_grad():
                self.target[need] = teacher(self.x_T[need], space).to(self.target.dtype)
            self.solved[need] = epoch
        return self.target[index]

    def state(self) -> dict[str, Any]:
        return {"target": self.target.cpu(), "solved": self.solved.cpu()}

    def load(self, state: dict[str, Any]) -> None:
        if "solved" not in state:  # written before per-row solving: every target from one epoch, or none
            solved = torch.full_like(self.solved, int(state["epoch"]) if state["target"] is not None else -1)
            state = {"target": self.target if state["target"] is None else state["target"], "solved": solved}
        self.target = state["target"].to(self.x_T.device)
        self.solved = state["solved"].to(self.x_T.device)


class Objective:
    """The training loss of ``cfg`` (module docstring). ``buffer``: DDDM's estimates; ``data_std``:
    σ_data of the ``edm`` weighting; ``posterior_mean(x_t, α, σ)``: E[x0 | x_t] for
    Rao–Blackwellised targets (MoG); ``one_step_teacher`` and ``one_step_pairs``: the one-step rows."""

    def __init__(
        self,
        cfg: ObjectiveConfig,
        schedule: VPSchedule,
        *,
        buffer: EstimateBuffer | None = None,
        data_std: float = 1.0,
        posterior_mean=None,
        one_step_teacher=None,
        one_step_pairs: OneStepPairs | None = None,
    ) -> None:
        self.cfg = cfg
        self.schedule = schedule
        self.buffer = buffer
        self.data_std = data_std
        # Rao–Blackwellisation: E‖ε_hat − ε‖² = E‖ε_hat − E[ε | x_t]‖² + const, so regressing on
        # the conditional mean (closed form for the MoG) keeps the expected gradient and drops the
        # variance that the ε draw adds: posterior_mean(x_t, α, σ) = E[x0 | x_t].
        self.posterior_mean = posterior_mean
        self.one_step_prob = 1.0 if cfg.objective == "flow_map" else cfg.one_step_prob
        # teacher(x_T, space) -> x0: a deterministic sample from x_T at one_step_t (no gradient)
        self.one_step_teacher = one_step_teacher
        self.one_step_pairs = one_step_pairs

    def weight(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the x0 distance. ``edm``: Karras et al. 2022 eq. 8 (λ(σ) = 1/c_out²)
        in VP terms, α²/σ² + 1/s_d², the weight that gives every noise level unit-variance
        targets; ``none``: plain x0 regression (the DDDM paper)."""
        if self.cfg.noise_weighting == "edm":
            return alpha**2 / sigma**2 + 1.0 / self.data_std**2
        return torch.ones_like(alpha)

    def sample_t(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        """t ~ U(t_min, 1), or uniform on an N-point grid {1/N, …, 1} when ``discrete_steps``, or the
        one level ``fixed_t`` (which still consumes the draw, so the noise stream is unchanged)."""
        if self.cfg.discrete_steps:
            k = torch.randint(1, self.cfg.discrete_steps + 1, (n,), generator=generator, device=device)
            return k.double() / self.cfg.discrete_steps
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        if self.cfg.fixed_t is not None:
            return torch.full_like(u, self.cfg.fixed_t)
        return self.cfg.t_min + (1 - self.cfg.t_min) * u

    def data_weight(self, epoch: int) -> float:
        return 1.0 / (epoch + 1) if self.cfg.dddm_weight == "inverse_epoch" else 1.0

    def __call__(self, model, batch: LossInputs, generator: torch.Generator) -> torch.Tensor:
        x0 = batch.x0
        (n, mine), device = batch.rows(), x0.device
        t64 = self.sample_t(n, generator, device)[mine]
        alpha, sigma = self.schedule.alpha_sigma(t64)
        alpha, sigma, t = alpha.to(x0.dtype), sigma.to(x0.dtype), t64.to(x0.dtype)
        eps = torch.randn((n, *x0.shape[1:]), generator=generator, device=device, dtype=x0.dtype)[mine]
        space, cond = batch.space, ({} if batch.space is None else batch.space.cond)
        if space is not None:
            eps = space.project(eps)
        x_t = expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * eps

        weight = self.weight(alpha, sigma)
        if self.cfg.objective == "flow_map":
            return self._one_step(model, x0, batch, generator).mean()
        if self.cfg.objective == "dddm":
            loss = self._dddm(model, x0, x_t, t, batch, generator, weight)
            if self.one_step_prob > 0:
                # drawn after the DDDM rows' draws, so one_step_prob = 0 leaves every stream as it was
                rows = torch.rand(n, generator=generator, device=device)[mine] < self.one_step_prob
                loss = loss + self._one_step(model, x0, batch, generator, rows)
            return loss.mean()
        x0_hat = model(x_t, t, None, **cond)
        if self.posterior_mean is not None:
            with torch.no_grad():
                x0 = self.posterior_mean(x_t, alpha, sigma).to(x0.dtype)
            eps = eps_from_x0(x_t, x0, alpha, sigma)
        if self.cfg.objective == "eps":
            return distance(eps_from_x0(x_t, x0_hat, alpha, sigma), eps, "mse", 0.0, space).mean()
        return (weight * distance(x0_hat, x0, self.cfg.distance, self.cfg.huber_c, space)).mean()

    def _one_step(self, model, x0: torch.Tensor, batch: LossInputs, generator, rows=None) -> torch.Tensor:
        """Per-row loss of the DDDM-1 sampler's input (x_T,i and a fresh z⁽⁰⁾ at ``one_step_t``)
        against the teacher's sample from x_T,i, weighted like any row at that noise level; zero
        outside ``rows`` (a boolean mask; None: every row)."""
        (n, mine), device = batch.rows(), x0.device
        z0 = torch.randn((n, *x0.shape[1:]), generator=generator, device=device, dtype=x0.dtype)[mine]
        index, space = batch.index, batch.space
        if rows is not None:
            index, z0 = index[rows], z0[rows]
            space = None if space is None else space.take(rows)
        pairs = self.one_step_pairs
        x_T = pairs.x_T[index].to(x0.dtype)
        target = pairs.targets(self.one_step_teacher, batch.epoch, index).to(x0.dtype)
        cond = {}
        if space is not None:  # the sampler's z⁽⁰⁾ is the subspace's standard normal too
            z0, cond = space.project(z0), space.cond
        t = torch.full((len(x_T),), self.cfg.one_step_t, dtype=torch.float64, device=device)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x0_hat = model(x_T, t.to(x0.dtype), z0, **cond).to(x0.dtype)
        weight = self.weight(alpha.to(x0.dtype), sigma.to(x0.dtype))
        loss = weight * distance(x0_hat, target, self.cfg.distance, self.cfg.huber_c, space)
        if rows is None:
            return loss
        return torch.zeros(len(rows), dtype=loss.dtype, device=device).masked_scatter(rows, loss)

    def _dddm(self, model, x0, x_t, t, batch: LossInputs, generator, weight: torch.Tensor) -> torch.Tensor:
        # Flips are redrawn every epoch, so an estimate stored as the batch saw its image would
        # meet the mirror of that image on the next visit: read z in the batch's orientation and
        # store x0_hat back in the canonical one.
        z = mirror_rows(self.buffer.read(batch.index).to(x0.dtype), batch.mirror)
        space, cond = batch.space, ({} if batch.space is None else batch.space.cond)
        if space is not None:  # the buffer starts as N(0, I) in every coordinate
            z = space.project(z)
        n, mine = batch.rows()
        use_estimate = torch.rand(n, generator=generator, device=x0.device)[mine] >= self.cfg.null_estimate_prob
        # Null rows take the model's own z=None path rather than a faked zero estimate: in one
        # call when the model takes a per-sample estimate mask, else by splitting the batch.
        if getattr(getattr(model, "module", model), "accepts_estimate_mask", False):  # unwrap DDP
            x0_hat = model(x_t, t, z, estimate_mask=use_estimate, **cond).to(x0.dtype)
        else:
            if space is not None:
                raise ValueError("a model on a subspace must accept estimate_mask")
            x0_hat = torch.empty_like(x0)
            if use_estimate.any():
                x0_hat[use_estimate] = model(x_t[use_estimate], t[use_estimate], z[use_estimate])
            if (~use_estimate).any():
                x0_hat[~use_estimate] = model(x_t[~use_estimate], t[~use_estimate], None)
        w = self.data_weight(batch.epoch)
        data_term = distance(x0_hat, x0, self.cfg.distance, self.cfg.huber_c, space)
        estimate_term = distance(x0_hat, z, self.cfg.distance, self.cfg.huber_c, space)
        loss = torch.where(use_estimate, w * data_term + (1 - w) * estimate_term, data_term)
        # Null rows write their old estimate back: no boolean indexing, so no host sync.
        new = x0_hat.detach() if self.cfg.buffer_update == "estimate" else x0
        kept = torch.where(use_estimate.view(-1, *[1] * (x0.ndim - 1)), new, z)
        self.buffer.write(batch.index, mirror_rows(kept, batch.mirror))
        return weight * loss
