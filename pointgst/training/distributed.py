"""Distributed data parallel when launched with ``torchrun`` (gloo on CPU, nccl on GPU); one process otherwise."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (on the process device: nccl serves CUDA tensors only)."""
        if self.enabled:
            on_device = tensor.to(self.device)
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            tensor.copy_(on_device)
        return tensor

    def broadcast_flag(self, value: bool) -> bool:
        """Rank 0's ``value`` on every process (also a barrier)."""
        if not self.enabled:
            return value
        flag = torch.tensor([int(value)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device: str | None = None) -> Distributed:
    """Read torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and start the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, device=chosen)


def teardown_distributed() -> None:
    """Leave the process group together: the main rank writes the run's files last, and a rank that tears the group
    down while another still uses it can leave that one waiting in gloo forever."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
