"""The training loop: AdamW with warm-up, gradient clipping, EMA, periodic and timed atomic
checkpoints, exact resume, and a NaN guard.

Resume is exact by construction: the data order of step s is a pure function of (seed, epoch)
and the noise generator's state, the optimizer, the EMA, the DDDM buffer and every RNG state are
in ``checkpoints/last.pt``; so on the CPU with ``trainer.deterministic=true`` an interrupted and
resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rtkrun import distributed, runs
from rtkrun.diffusion.objectives import LossInputs
from rtkrun.errors import RtkrunError, Stopped
from rtkrun.loggers import duration
from rtkrun.loss_setup import build_objective
from rtkrun.preview import preview
from rtkrun.seeding import Stream, stream_seed

log = logging.getLogger("rtkrun.train")


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of example indices for one epoch (independent of resume)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(seed, Stream.EPOCH_ORDER, epoch)))


def get_batch(dataset, indices: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """Training examples at ``indices``; augmentation, where a dataset has it, is a pure function
    of (seed, epoch, index) so that resume is exact."""
    return dataset.get_batch(indices, epoch=epoch, seed=seed)


DAY = 86_400.0


def too_long_warning(eta_seconds: float, device_type: str) -> str | None:
    """A one-time warning when the projected time left on a CPU exceeds a day: the preset is
    sized for GPUs (the README's quick checks are sized for a CPU)."""
    if device_type != "cpu" or eta_seconds <= DAY:
        return None
    return (
        f"at this rate training needs {duration(eta_seconds)} more on the CPU: this preset is sized for GPUs. "
        "For a check on a CPU use debug=fast (any dataset) or a CPU-sized preset (experiment=qm9_cpu for QM9), "
        "or lower trainer.max_steps; the README's quick check lists them"
    )


class StopSignals:
    """SIGTERM and SIGUSR2 (cluster preemption and timeout) and SIGINT (Ctrl-C) become a request
    to stop at the next step boundary, where a consistent checkpoint can be written; a handler
    that was installed before (submitit's checkpoint-and-requeue) is then called, as it would
    have been. A second Ctrl-C before that boundary interrupts at once (the previous checkpoint
    stays valid: every write is atomic)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def forward(self, step: int, ckpt: Path) -> None:
        """After the checkpoint: hand the signal to the handler it displaced (which may requeue
        and exit), or stop with :class:`Stopped` where that was the default action."""
        signum, self.signum = self.signum, None
        previous = self.previous.get(signum, signal.SIG_DFL)
        name = signal.Signals(signum).name
        log.warning("%s at step %d: checkpoint %s saved", name, step, ckpt)
        if signum == signal.SIGINT:  # Python's own handler would raise KeyboardInterrupt mid-work
            previous = signal.SIG_DFL
        if callable(previous):
            previous(signum, None)  # submitit: checkpoint() and requeue; returns if it bypasses
        elif previous == signal.SIG_DFL:
            message = f"stopped by {name} at step {step}; checkpoint {ckpt} saved: re-run the same command to resume"
            raise Stopped(message, signum)


class AdaptiveClip:
    """EDM-for-molecules' adaptive gradient clipping (Hoogeboom et al. 2022, code release): the
    limit is 1.5·mean + 2·std of the last ``window`` recorded norms (starting from one record of
    3000), and a clipped step records the limit rather than its norm. All on the device: no sync."""

    def __init__(self, device, window: int = 50) -> None:
        self.history = torch.zeros(window, device=device, dtype=torch.float64)
        self.count = torch.ones((), device=device, dtype=torch.long)
        self.history[0] = 3000.0

    def limit(self) -> torch.Tensor:
        n = self.count.clamp(max=len(self.history))
        valid = torch.arange(len(self.history), device=self.history.device) < n
        mean = (self.history * valid).sum() / n
        var = (((self.history - mean) * valid) ** 2).sum() / n  # population std, as numpy's default
        return 1.5 * mean + 2.0 * var.sqrt()

    @torch.no_grad()
    def __call__(self, parameters) -> torch.Tensor:
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
        limit = self.limit()
        torch._foreach_mul_(grads, (limit / (norm + 1e-6)).clamp(max=1.0).to(grads[0].dtype))
        slot = self.count % len(self.history)
        self.history[slot] = torch.minimum(norm, limit)
        self.count += 1
        return norm

    def state(self) -> dict[str, torch.Tensor]:
        return {"history": self.history.cpu(), "count": self.count.cpu()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.history.copy_(state["history"])
        self.count.copy_(state["count"])


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, one fused call over all parameters."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def _rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def lr_per_seed_step(alpha: float, sigma: float, d: int) -> float:
    """The learning rate that makes a gradient step on the ε loss at (α, σ) a step of size 1 on
    the seed's score loss (Shah, Chen & Klivans 2023): the ε loss is σ²/d times the score loss
    and the student's parameter is θ = αμ, so η = 2·lr·α²σ²/d (the seed's gradient omits the
    square's 2), i.e. lr = η·d/(2α²σ²)."""
    return d / (2 * alpha**2 * sigma**2)


def seed_lr(eta: float, t: float, schedule, dataset) -> float:
    """The learning rate of a step of size ``eta`` in the seed's units at noise level t."""
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    return eta * lr_per_seed_step(alpha, sigma, math.prod(dataset.sample_shape))


class Trainer:
    def __init__(
        self,
        run,
        model: torch.nn.Module,
        dataset,
        schedule,
        run_dir: Path,
        device: torch.device,
        config_dict: dict[str, Any],
        tracker,
    ) -> None:
        self.cfg = run.trainer
        self.seed = run.seed
        self.evaluation, self.schedule = run.evaluation, schedule  # for previews
        self.model = model
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.adaptive_clip = AdaptiveClip(device)
        self.dataset = dataset
        self.device = device
        self.run_dir = run_dir
        self.ckpt_path = runs.checkpoint_path(run_dir)
        self.config_dict = config_dict
        self.tracker = tracker
        tc = self.cfg
        self.lr = tc.lr if tc.eta_seed is None else seed_lr(tc.eta_seed, tc.fixed_t, schedule, dataset)
        if tc.optimizer == "sgd":  # plain gradient descent, no momentum
            self.optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, weight_decay=tc.weight_decay)
        else:  # fused: one kernel for the whole update (CUDA and, since torch 2.4, the CPU: 3x faster there)
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=tc.weight_decay, fused=True)
        self.generator = torch.Generator(device=device).manual_seed(stream_seed(run.seed, Stream.TRAINING_NOISE))
        self.objective = build_objective(tc, dataset, schedule, self.ema, run.seed, device)
        self.step = 0
        self.last_loss = float("nan")  # the mean loss of the last logged interval
        self.batch_size = tc.batch_size if tc.fresh_data else min(tc.batch_size, len(dataset))
        # the examples trained on: all of them, or the first overfit_batches batches (debug=overfit)
        self.examples = min(len(dataset), tc.overfit_batches * self.batch_size or len(dataset))
        self.steps_per_epoch = max(self.examples // self.batch_size, 1)
        self.micro_batches = tc.grad_accum if self.batch_size % tc.grad_accum == 0 else 1
        self.place = distributed.place()
        if self.batch_size % (self.micro_batches * self.place.world):
            raise RtkrunError(
                f"trainer.batch_size={self.batch_size} must split evenly over {self.place.world} processes "
                f"× {self.micro_batches} micro-batches; pick a multiple of {self.place.world * self.micro_batches}"
            )
        dataset.to(device)  # gather batches where the model lives
        if tc.channels_last:
            model.to(memory_format=torch.channels_last)
            self.ema.to(memory_format=torch.channels_last)
        self.train_model = model
        if self.place.active:
            # The objective's generator is shared (same seed on every rank: it draws the whole
            # global batch's noise); the global RNG (dropout) is offset by rank.
            torch.manual_seed(stream_seed(run.seed, Stream.DROPOUT, self.place.rank))
            ids = [device.index or 0] if device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if tc.compile:
            self.train_model = torch.compile(self.train_model, mode=tc.compile_mode)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "buffer": None if self.objective.buffer is None else self.objective.buffer.z.cpu(),
            "one_step": None if self.objective.one_step_pairs is None else self.objective.one_step_pairs.state(),
            "rng": _rng_states(),
            "grad_norms": self.adaptive_clip.state(),
            "config": self.config_dict,
            "model_name": self.config_dict["model"]["name"],
            "loss": self.last_loss,
        }

    def saved_step(self) -> int:
        """The step of the checkpoint this run would resume from (0: none yet)."""
        return (runs.checkpoint_step(self.ckpt_path) or 0) if self.ckpt_path.exists() else 0

    def load(self, state: dict[str, Any]) -> None:
        try:
            self._load(state)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            what = f"'{e.args[0]}' entry is missing" if isinstance(e, KeyError) else f"state is malformed ({e})"
            raise RtkrunError(
                f"checkpoint {self.ckpt_path} cannot be resumed: its {what}; restore it or use a new hydra.run.dir"
            ) from None

    def _load(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except RuntimeError as e:
            raise RtkrunError(
                f"checkpoint {self.ckpt_path} holds a different model ({str(e).splitlines()[0]}); "
                "use a new hydra.run.dir for a new model"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.objective.buffer is not None:
            if state["buffer"] is None:
                raise RtkrunError(
                    f"checkpoint {self.ckpt_path} has no DDDM buffer; it was trained with another objective"
                )
            self.objective.buffer.z.copy_(state["buffer"])
        if self.objective.one_step_pairs is not None:
            if state.get("one_step") is None:
                raise RtkrunError(f"checkpoint {self.ckpt_path} has no one-step targets; it was trained without them")
            self.objective.one_step_pairs.load(state["one_step"])
        _set_rng_states(state["rng"])
        if state.get("grad_norms") is not None:
            self.adaptive_clip.load(state["grad_norms"])
        self.step = int(state["step"])
        loss = state.get("loss")
        self.last_loss = float(loss) if isinstance(loss, (int, float)) else float("nan")

    # -- the loop --------------------------------------------------------------------------------
    def train_step(self, index: torch.Tensor, epoch: int) -> tuple[torch.Tensor, float]:
        """Gradients of one optimizer step over ``index`` (in ``grad_accum`` micro-batches, under
        autocast), clipped; returns (mean loss, learning rate). The caller checks the loss and
        steps the optimizer, so a non-finite loss never reaches the weights."""
        tc = self.cfg
        lr = self.lr * min(1.0, (self.step + 1) / tc.warmup_steps) if tc.warmup_steps else self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        rank, world = self.place.rank, self.place.world
        sharded = world > 1 or self.micro_batches > 1
        # Every shard (rank × micro-batch) draws the whole step's noise from the same generator
        # state and keeps its own rows, so any split of the batch sees the noise one process would.
        start_state = self.generator.get_state() if self.micro_batches > 1 else None
        for k, micro in enumerate(index.chunk(self.micro_batches)):
            mine = micro.chunk(world)[rank]  # this rank's contiguous shard of the micro-batch
            if start_state is not None:
                self.generator.set_state(start_state)
            shard = (k * len(micro) + rank * len(mine), len(index)) if sharded else None
            if self.cfg.fresh_data:  # the step's whole fresh batch, this shard's rows (as for the noise)
                first = shard[0] if shard else 0
                x0 = self.dataset.fresh_batch(len(index), self.generator)[first : first + len(mine)]
            else:
                x0 = get_batch(self.dataset, mine, epoch, self.seed)
            x0 = x0.to(self.device, non_blocking=True)
            space = self.dataset.space_of(x0)
            mirror = None if self.cfg.fresh_data else self.dataset.mirrored(mine, epoch, self.seed)  # augmented images
            inputs = LossInputs(x0, mine.to(self.device), epoch, shard, space, mirror)
            last = k == self.micro_batches - 1
            # DDP all-reduces gradients on the last micro-batch only
            with contextlib.nullcontext() if last or world == 1 else self.train_model.no_sync():
                with self.autocast:
                    part = self.objective(self.train_model, inputs, self.generator)
                (part / self.micro_batches).backward()
            loss += part.detach() / self.micro_batches
        if tc.grad_clip_mode == "adaptive":
            self.adaptive_clip(self.model.parameters())
        elif tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        return loss, lr

    def step_once(self, index: torch.Tensor, epoch: int) -> tuple[torch.Tensor, float]:
        """One full training step: gradients, the NaN guard, the optimizer and the EMA."""
        loss, lr = self.train_step(index, epoch)
        loss = distributed.mean_over_ranks(loss)  # every rank sees the global loss, so all stop together
        if not torch.isfinite(loss):
            kept = (
                f"the last good checkpoint {self.ckpt_path} is kept"
                if self.ckpt_path.exists()
                else "no checkpoint was written"
            )
            raise RtkrunError(
                f"loss is {loss.item()} at step {self.step + 1}: training stopped and {kept}; "
                "lower trainer.lr, raise trainer.warmup_steps or set trainer.grad_clip"
            )
        self.optimizer.step()
        self.step += 1
        update_ema(self.ema, self.model, min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step)))
        return loss, lr

    def fit(self) -> dict[str, Any]:
        tc = self.cfg
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
        elif self.device.type == "cuda":  # fixed shapes: let cuDNN pick the fastest kernels once
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
        if self.ckpt_path.exists():
            self.load(runs.load_checkpoint(self.ckpt_path, map_location=self.device))
            if self.place.is_main:
                runs.truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)
            log.info("resumed from %s at step %d", self.ckpt_path, self.step)
        if self.step >= tc.max_steps:
            log.info("training already finished (step %d of %d)", self.step, tc.max_steps)
            return {"train/steps": self.step, "train/final_loss": self.last_loss, **self._epoch_size()}

        self.model.train()
        start_step, start_time = self.step, time.time()
        main = self.place.is_main  # rank 0 alone writes files, logs and shows a bar
        bar = tqdm(
            total=tc.max_steps, initial=self.step, disable=None if main else True, desc="train", dynamic_ncols=True
        )
        try:
            with StopSignals() as stop:
                self._loop(stop, start_step, start_time, bar)
        finally:
            bar.close()
        seconds = time.time() - start_time
        log.info("trained %d steps in %.1f s; checkpoint %s", self.step - start_step, seconds, self.ckpt_path)
        trained = {"train/steps": self.step, "train/final_loss": self.last_loss, "train/seconds_this_session": seconds}
        return {**trained, **self._epoch_size()}

    def _epoch_size(self) -> dict[str, int]:
        """What an epoch is here (T8's epoch axis reads it): steps, and examples per step."""
        return {
            "train/steps_per_epoch": self.steps_per_epoch,
            "train/batch_size": self.batch_size,
            "train/examples": self.examples,
        }

    def _loop(self, stop: StopSignals, start_step: int, start_time: float, bar) -> None:
        tc, main = self.cfg, self.place.is_main
        loss_sum, loss_steps = torch.zeros((), device=self.device), 0  # since the last record
        last_log = last_ckpt = time.time()
        warned, order_epoch, order = False, -1, None
        while self.step < tc.max_steps:
            epoch, position = divmod(self.step, self.steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(self.seed, epoch, self.examples)
            loss, lr = self.step_once(self._batch_index(order, position), epoch)
            loss_sum += loss.detach()  # on the device: read once per log line, not per step
            loss_steps += 1
            bar.update(1)

            now = time.time()
            # Records (metrics.jsonl, trackers) every log_every steps, so their steps are the same
            # on every run; console progress also after the first step and on a timer, so a long
            # step or a slow device shows its rate and ETA within seconds.
            record_due = self.step % tc.log_every == 0 or self.step == tc.max_steps
            if record_due or self.step == start_step + 1 or now - last_log >= tc.log_seconds:
                last_log = now
                mean_loss = (loss_sum / loss_steps).item()
                rate = (self.step - start_step) / max(now - start_time, 1e-9)
                if record_due:
                    self._record(mean_loss, lr, rate, epoch)
                    loss_sum, loss_steps = torch.zeros((), device=self.device), 0
                warned = self._show_progress(bar, mean_loss, lr, rate, now - start_time, warned)
            due = self._snapshot_paths() if main else []
            timed = time.time() - last_ckpt > 60 * tc.ckpt_minutes
            stopping = self._stop_requested(stop)
            checkpoint = self.step % tc.ckpt_every == 0 or self.step == tc.max_steps or timed or stopping
            if checkpoint and main:
                due.append(self.ckpt_path)  # after the snapshots: last.pt is never older than one
            if due:  # one serialisation for every file due at this step
                runs.save_checkpoint(due[0], self.state(), *due[1:])
            if checkpoint:
                last_ckpt = time.time()
            if stopping:
                distributed.barrier()  # every rank leaves after rank 0's checkpoint is whole
                stop.forward(self.step, self.ckpt_path)

    def _batch_index(self, order: torch.Tensor, position: int) -> torch.Tensor:
        """The examples of the step at ``position`` of its epoch (``order``: the epoch's permutation)."""
        tc = self.cfg
        index = order[position * self.batch_size : (position + 1) * self.batch_size]
        if tc.fresh_data:  # new examples every step: the index only numbers the batch's rows
            index = torch.arange(self.batch_size)
        if tc.overfit_batches:  # the same examples, times and noise at every visit of a batch
            index, _ = index.sort()
            self.generator.manual_seed(stream_seed(self.seed, Stream.TRAINING_NOISE, 1 + position))
        return index

    def _record(self, mean_loss: float, lr: float, rate: float, epoch: int) -> None:
        """The step's record: metrics.jsonl and the tracker (rank 0), with the model's own
        progress figures and a preview when one is due."""
        tc = self.cfg
        self.last_loss = mean_loss
        record = {
            "step": self.step,
            "loss": mean_loss,
            "lr": lr,
            "steps_per_s": rate,
            "samples_per_s": rate * self.batch_size,
            "epoch": epoch,
        }
        if hasattr(self.model, "progress"):  # e.g. the student's angle and distance to μ*
            record.update(self.model.progress(self.dataset))
        if self.place.is_main:
            if tc.preview_every and self.step % tc.preview_every == 0:
                record.update(self._preview())
            runs.append_jsonl(self.run_dir / "metrics.jsonl", record)
            self.tracker.log(record)

    def _show_progress(self, bar, mean_loss: float, lr: float, rate: float, elapsed: float, warned: bool) -> bool:
        """The console line (the bar's postfix, or a log line where there is no bar), and once a
        warning when the run would take too long here; returns whether it has warned."""
        tc, main = self.cfg, self.place.is_main
        eta = (tc.max_steps - self.step) / max(rate, 1e-12)
        bar.set_postfix(loss=f"{mean_loss:.4g}", samples_per_s=f"{rate * self.batch_size:.0f}")
        if bar.disable and main:
            log.info(
                "step %d/%d  loss %.5g  lr %.2e  %.2f steps/s  %.0f samples/s  elapsed %s  ETA %s",
                self.step,
                tc.max_steps,
                mean_loss,
                lr,
                rate,
                rate * self.batch_size,
                duration(max(elapsed, 1e-9)),
                duration(eta),
            )
        warning = None if warned or not main else too_long_warning(eta, self.device.type)
        if warning:
            log.warning(warning)
        return warned or warning is not None

    def _snapshot_paths(self) -> list[Path]:
        """The complete checkpoints to keep beside last.pt at this step: after the configured
        epochs (T8) and every ``snapshot_every`` steps; ``ckpt=`` and resume read them like last.pt."""
        tc = self.cfg
        finished_epoch, boundary = divmod(self.step, self.steps_per_epoch)
        paths = []
        if boundary == 0 and finished_epoch in tc.snapshot_epochs:
            paths.append(runs.snapshot_path(self.run_dir, finished_epoch))
        if tc.snapshot_every and self.step % tc.snapshot_every == 0:
            paths.append(runs.step_snapshot_path(self.run_dir, self.step))
        return paths

    def _preview(self) -> dict[str, float]:
        """A preview of the EMA model at this step (rtkrun/preview.py), drawn and logged."""
        tc = self.cfg
        folder = self.run_dir / "previews"
        numbers, path = preview(
            self.ema, self.dataset, self.schedule, self.evaluation, tc.preview_samples, tc.preview_steps,
            self.step, folder, self.device,
        )  # fmt: skip
        self.tracker.image("preview", path, caption=f"step {self.step}")
        return numbers

    def _stop_requested(self, stop: StopSignals) -> bool:
        """Whether a stop signal arrived; under data parallelism every rank agrees (one tiny
        all-reduce per step), so all ranks stop after the same step."""
        if self.place.world == 1:
            return stop.signum is not None
        flag = torch.tensor(float(stop.signum is not None), device=self.device)
        if distributed.mean_over_ranks(flag).item() > 0:
            stop.signum = stop.signum or signal.SIGTERM
            return True
        return False
