"""Data-parallel SAE training on torch.distributed: one process per device, started by torchrun.

`--batch-size` stays the GLOBAL batch: every process reads the same seeded stream of global batches and
trains on its own contiguous slice of each, so a run on P processes follows the same trajectory as one
process on the same batches. Gradients are averaged with an all-reduce (after backward, before clipping),
dead-latent statistics (`fired_N`) are or-ed, and BatchTopK's threshold statistic (`min_active`) is a min
over processes. Backend: gloo on CPU, NCCL on GPU.

    torchrun --nproc-per-node 2 -m progsae.cli train --acts STORE --out OUT ...
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError
from progsae.train.config import TrainConfig
from progsae.train.sync import LocalSync


class DistributedSync(LocalSync):
    """The trainer's cross-process reductions (see progsae/train/sync.py) done with torch.distributed collectives."""

    def __init__(self, group: dist.ProcessGroup | None = None, device: str | torch.device = "cpu"):
        self.group = group
        self.device = torch.device(device)  # where collectives on fresh tensors run (CUDA for NCCL)
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def gradients(self, module: nn.Module) -> None:
        """Average gradients: one all-reduce over all of them flattened (a missing grad counts as zero)."""
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def fired(self, fired_N: Tensor) -> Tensor:
        """A latent fired this step if it fired on any process."""
        any_N = fired_N.to(torch.uint8)
        dist.all_reduce(any_N, op=dist.ReduceOp.MAX, group=self.group)
        return any_N.bool()

    def extras(self, extras: dict[str, Tensor]) -> dict[str, Tensor]:
        """BatchTopK's `min_active` (smallest kept activation of the batch) is the min over all processes."""
        if "min_active" in extras:
            m = extras["min_active"].detach().clone().reshape(1)
            dist.all_reduce(m, op=dist.ReduceOp.MIN, group=self.group)
            extras = {**extras, "min_active": m.reshape(extras["min_active"].shape)}
        return extras

    def mean(self, value: Tensor) -> Tensor:
        """Average over processes (logged scalars, and AuxK's batch statistics via TrainContext.global_mean)."""
        v = value.detach().clone()
        dist.all_reduce(v, op=dist.ReduceOp.SUM, group=self.group)
        return v / self.world_size

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def any(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], dtype=torch.uint8, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Make every process hold rank 0's parameters and buffers (as DDP does at start)."""
        for t in [*module.parameters(), *module.buffers()]:
            buf = t.data.contiguous()  # collectives need contiguous memory
            dist.broadcast(buf, src=0, group=self.group)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


class RankSliceStore(ActivationStore):
    """An activation store as one process sees it: its contiguous share of every global batch."""

    def __init__(self, store: ActivationStore, rank: int, world_size: int):
        self.__dict__.update(store.__dict__)
        self.rank, self.world_size = rank, world_size

    def iter_batches(self, split: str, batch_size: int, **kwargs) -> Iterator[Tensor]:
        if batch_size % self.world_size:
            raise ProgsaeError(f"--batch-size {batch_size} must be divisible by the number of processes ({self.world_size})")
        local = batch_size // self.world_size
        for x_BD in super().iter_batches(split, batch_size, **kwargs):
            yield x_BD[self.rank * local : (self.rank + 1) * local]


def launched_distributed() -> bool:
    """True inside a multi-process job: torchrun's environment, or a process group set up by the caller."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: str) -> None:
    """Join torchrun's job (env:// rendezvous): NCCL for CUDA devices, gloo otherwise."""
    if dist.is_initialized():
        return
    if not dist.is_available():
        raise ProgsaeError("this torch build has no torch.distributed; run a single process")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    atexit.register(shutdown)  # we joined the group, so we leave it (torchrun warns otherwise)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def data_parallel(store: ActivationStore, cfg: TrainConfig) -> tuple[ActivationStore, TrainConfig, LocalSync]:
    """What the trainer needs to run as one process of a data-parallel job (unchanged in a single process).

    Returns the store as this process sees it, the config with this process's device, and the sync object.
    """
    if not launched_distributed():
        return store, cfg, LocalSync()
    init_process_group(cfg.device)
    world, rank = dist.get_world_size(), dist.get_rank()
    if cfg.batch_size % world:
        raise ProgsaeError(f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({world})")
    if cfg.device.startswith("cuda"):
        cfg = dataclasses.replace(cfg, device=f"cuda:{local_rank()}")
    return RankSliceStore(store, rank, world), cfg, DistributedSync(device=cfg.device)


def is_main_process() -> bool:
    """Rank 0 of a data-parallel job, or the only process: the one that prints summaries."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown() -> None:
    """Leave the process group (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistributedSync", "RankSliceStore", "data_parallel", "launched_distributed", "init_process_group", "is_main_process", "shutdown"]
