"""Data-parallel plumbing for ``torchrun``: process group, per-rank streams, collectives.

Under ``torchrun --nproc_per_node=N -m rgflow train ...`` the environment carries ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL
on CUDA, gloo on CPU). Without a launcher it returns a single-process context whose
collectives are no-ops, so the training loop has one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "sampler_seed"]


def sampler_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sampling stream (rank 0 of any world gets the same stream)."""
    return (seed * 1_000_003 + rank * 7_919 + 1) % (2**63)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (``sum``, ``max`` or ``min``); returns ``t``."""
        if self.enabled:
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
            dist.all_reduce(t, op=ops[op])
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Gather equally shaped tensors from every rank (a one-element list single-process)."""
        if not self.enabled:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t.contiguous())
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Join the ``torchrun`` process group if there is one; returns ``(context, device)``.

    On CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank, world, local), device
