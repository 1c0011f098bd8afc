"""torch.distributed set-up for `torchrun --nproc_per_node=N -m controlfoley.train ...`.

- `init_distributed(device)`: reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1
  it starts a process group (NCCL on CUDA, gloo on CPU) and pins each rank to cuda:LOCAL_RANK.
  Without those variables it is a single process and starts nothing.
- `all_reduce_sum`: sums tensors over ranks (identity in a single process).
- Only rank 0 logs and writes checkpoints (`DistInfo.is_main`); `barrier` keeps ranks together
  around those writes.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from controlfoley.errors import TrainingError

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device {pref!r} was asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and choose this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local_rank)
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x


def barrier(info: DistInfo) -> None:
    if info.distributed:
        tdist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and tdist.is_initialized():
        tdist.destroy_process_group()
