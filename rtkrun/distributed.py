"""Data parallelism under ``torchrun``: the process group, this process's place in it, and the
collectives the trainer and the sample loop need.

``torchrun --nproc_per_node=N -m rtkrun train ...`` starts N processes with RANK, WORLD_SIZE
and LOCAL_RANK set. Each process holds the whole model, dataset and DDDM buffer; the global
batch is split into N equal contiguous shards, gradients are averaged by DDP, and every new
DDDM estimate is all-gathered so the buffers stay identical on all ranks. Rank 0 alone writes
checkpoints, metrics and logs. ``hydra/launcher=slurm_ddp`` (submitit, ``tasks_per_node`` ×
``nodes`` tasks) takes the same path: each task exports the variables torchrun would set.
``rtkrun sample`` (and train's evaluation) on N processes splits the sample indices into N
contiguous blocks; rank 0 gathers them and scores (sample i depends only on (seed, i)).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Place:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def adopt_launcher_tasks() -> None:
    """Inside a job of Hydra's submitit launcher with more than one task (``tasks_per_node`` ×
    ``nodes``: a SLURM job, or the local executor's), export RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT from submitit's job environment (SLURM's variables), so the job
    takes torchrun's code path: one process group, rank 0 writes. A no-op anywhere else."""
    try:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        tasks = submitit.JobEnvironment().num_tasks
    except (ImportError, RuntimeError):  # not in a submitit job
        return
    if tasks > 1 and "WORLD_SIZE" not in os.environ:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # LOCAL_RANK picks the GPU


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def place() -> Place:
    if not dist.is_available() or not dist.is_initialized():
        return Place()
    return Place(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init(device_type: str) -> Place:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU); a no-op for
    a single process. Returns this process's place."""
    if not launched():
        return Place()
    if not dist.is_initialized():
        # rank 0 scores each evaluation sampler (FID: minutes at 50k images) while the others
        # wait at the next gather: a longer timeout than NCCL's 10 minutes
        timeout = datetime.timedelta(hours=1)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    here = place()
    if device_type == "cuda":
        torch.cuda.set_device(here.local_rank)
    return here


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    here = place()
    if not here.active:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(here.world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The average of a scalar tensor over ranks (identical on every rank afterwards)."""
    here = place()
    if not here.active:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / here.world


def barrier() -> None:
    if place().active:
        dist.barrier()


def rank_block(n: int) -> range:
    """The contiguous block of indices 0..n-1 this rank handles (blocks differ by at most one)."""
    here = place()
    return range(n * here.rank // here.world, n * (here.rank + 1) // here.world)


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (None on the others); [obj] alone."""
    here = place()
    if not here.active:
        return [obj]
    parts = [None] * here.world if here.is_main else None
    dist.gather_object(obj, parts, dst=0)
    return parts
