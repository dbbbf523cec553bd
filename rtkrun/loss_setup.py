"""The training loss a trainer config asks for, with the parts that depend on the data and the
model: DDDM's estimate buffer, the one-step rows and their teacher (the exact flow map on the
mixture, or the EMA network's own DDIM solve), and the Rao–Blackwell posterior mean (MoG)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rtkrun.data.base import DiffusionDataset
from rtkrun.diffusion.objectives import EstimateBuffer, Objective, ObjectiveConfig, OneStepPairs
from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import RtkrunError
from rtkrun.models.oracle import MogFlowOracle, MogFlowOracleConfig
from rtkrun.samplers.ddim import ddim
from rtkrun.seeding import Stream, stream_seed


def build_objective(
    tc, dataset: DiffusionDataset, schedule: VPSchedule, ema: torch.nn.Module, seed: int, device: torch.device
) -> Objective:
    """The objective of trainer config ``tc`` (an :class:`ObjectiveConfig` with ``rao_blackwell``,
    ``fresh_data`` and ``one_step_teacher_steps``) on ``dataset``; ``ema`` is the teacher of
    self-distillation."""
    if tc.fresh_data and dataset.mixture is None:
        raise RtkrunError(
            f"trainer.fresh_data=true needs a dataset that can draw new examples (mog), not {dataset.cfg.name}"
        )
    buffer = None
    if tc.objective == "dddm":
        gen = torch.Generator().manual_seed(stream_seed(seed, Stream.DDDM_BUFFER))
        buffer = EstimateBuffer(len(dataset), tuple(dataset.sample_shape), gen, device)
    teacher, pairs = one_step_teacher(tc, dataset, schedule, ema, tc.one_step_teacher_steps), None
    if teacher is not None:
        gen = torch.Generator().manual_seed(stream_seed(seed, Stream.ONE_STEP_PAIRS))
        refresh = tc.objective != "flow_map"  # the EMA teacher improves; the exact one does not
        space_of = None
        if dataset.on_subspace:
            space_of = lambda index: dataset.space_of(dataset.get_batch(index.cpu()).to(device))  # noqa: E731
        pairs = OneStepPairs(len(dataset), tuple(dataset.sample_shape), gen, device, refresh, space_of)
    return Objective(
        tc,
        schedule,
        buffer=buffer,
        data_std=dataset.data_std,
        posterior_mean=posterior_mean(tc, dataset) if tc.rao_blackwell else None,
        one_step_teacher=teacher,
        one_step_pairs=pairs,
    )


def posterior_mean(cfg: ObjectiveConfig, dataset: DiffusionDataset) -> Callable:
    """(x_t, α, σ) -> E[x0 | x_t], exact for the mixture (Rao–Blackwellised targets)."""
    if dataset.mixture is None or cfg.objective == "dddm":
        raise RtkrunError(
            "trainer.rao_blackwell=true needs a dataset with a closed-form posterior (mog) and objective eps or x0"
        )
    mixture = dataset.mixture
    return lambda x_t, alpha, sigma: mixture.denoise(x_t.double(), alpha.double(), sigma.double())


def one_step_teacher(
    cfg: ObjectiveConfig, dataset: DiffusionDataset, schedule: VPSchedule, ema: torch.nn.Module, steps: int
) -> Callable | None:
    """(x_T, space) -> x0 for the one-step rows: the exact flow map (``objective=flow_map``, MoG)
    or the EMA network's own deterministic DDIM solve in ``steps`` steps (``one_step_prob > 0``);
    None otherwise."""
    t_max = torch.tensor(cfg.one_step_t, dtype=torch.float64)
    if cfg.objective == "flow_map":
        if dataset.mixture is None:
            raise RtkrunError(
                f"trainer.objective=flow_map regresses the exact flow map of a mixture (dataset=mog), "
                f"not {dataset.cfg.name}"
            )
        oracle = MogFlowOracle(MogFlowOracleConfig(), dataset.mixture, schedule)
        return lambda x_T, space: oracle(x_T, t_max.expand(len(x_T)))
    if cfg.one_step_prob > 0:

        def solve(x_T: torch.Tensor, space) -> torch.Tensor:
            net = ema if space is None else space.bind(ema)
            return ddim(net, x_T, schedule, generator=None, steps=steps, t_max=cfg.one_step_t).x0

        return solve
    return None
