"""Rank, world size and the reductions the loop agrees on across workers (gloo on CPU, NCCL on GPU)."""
from __future__ import annotations

import torch

from alignkit.device import host, place


def rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """Reduce `t` over the workers in place (default: sum); a host tensor under NCCL (which reduces GPU memory
    only) takes the trip to this worker's GPU and back."""
    op = torch.distributed.ReduceOp.SUM if op is None else op
    if rank_world()[1] > 1:
        if torch.distributed.get_backend() == "nccl" and t.device.type == "cpu":
            on_gpu = place(t, torch.device("cuda", torch.cuda.current_device()))
            torch.distributed.all_reduce(on_gpu, op=op)
            t.copy_(host(on_gpu))
        else:
            torch.distributed.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return all_reduce(t)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return all_reduce(t, torch.distributed.ReduceOp.MAX)
