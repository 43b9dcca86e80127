"""Several processes, one training: torchrun's environment, PyTorch's process group and
DistributedDataParallel. Nothing here synchronises by hand what torch.distributed already does."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process initialised the group, so it tears it down

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment variables are set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); a no-op for one process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    if not launched_by_torchrun():
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


def process_device(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per process: cuda -> cuda:LOCAL_RANK."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def all_reduce_sums(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum numbers over every process (identity in one process)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_shards(shard: torch.Tensor, indices: list[int], total: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble per-rank rows (rank r computed rows `indices`) into the full tensor on every rank."""
    if not ctx.enabled:
        return shard
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, (indices, shard.cpu()))
    full = torch.empty((total, *shard.shape[1:]), dtype=shard.dtype)
    for idx, rows in parts:
        if len(idx):
            full[torch.tensor(idx)] = rows
    return full


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in one process)."""
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's value, on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ctx: DistContext) -> None:
    """Leave the process group, if one was started."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
