"""torch.distributed set-up for `torchrun --nproc_per_node=N -m controlfoley.train ...`.

- `torchrun_env()`: torchrun's RANK / WORLD_SIZE / LOCAL_RANK as ints (one parser for the CLI's
  messages and the process group), a TrainingError naming a variable that is not a whole number.
- `init_distributed(device)`: reads them (and checks RANK < WORLD_SIZE); with WORLD_SIZE > 1
  it starts a process group (NCCL on CUDA, gloo on CPU) and pins each rank to cuda:LOCAL_RANK.
  Without those variables it is a single process and starts nothing.
- `all_reduce_sum`: sums tensors over ranks (identity in a single process).
- Only rank 0 logs and writes checkpoints (`DistInfo.is_main`); `barrier` keeps ranks together
  around those writes.
- `agree_before_training(info, failure, start_step)`: after the pre-flight checks every rank learns
  whether any rank failed, so all stop together; and whether all start at the same step (a rank
  that reads another run folder, a node's own disk, would train other steps than rank 0). Each message is printed once, by the lowest rank that hit it:
  an error the others share is marked `mark_reported(error, rank)` and the CLI stays quiet about
  it on the other ranks (`reported_by`), while an error only one rank hits is still printed there.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from controlfoley.errors import TrainingError, mark_reported, reported_by  # re-exported here

__all__ = ["DistInfo", "torchrun_env", "init_distributed", "all_reduce_sum", "barrier", "shutdown", "agree_before_training", "mark_reported", "reported_by"]



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
    """This rank's device: `pref` ("auto", "cpu", "cuda", "cuda:N", "mps"); "auto" and "cuda" take
    cuda:LOCAL_RANK. A device this machine lacks is a TrainingError naming the fix (torch would fail
    later with "invalid device ordinal" from deep inside the first transfer)."""
    if pref == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        dev = torch.device("cuda", local_rank)
    else:
        try:
            dev = torch.device(pref)
        except (RuntimeError, TypeError):
            raise TrainingError(f"--device {pref}: torch knows no such device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"device {pref!r} was asked for but Apple MPS is not available here; use --device cpu")
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise TrainingError(f"device {pref!r} was asked for but CUDA is not available; use --device cpu")
    explicit = dev.index is not None and pref != "auto"
    dev = dev if dev.index is not None else torch.device("cuda", local_rank)
    n = torch.cuda.device_count()
    if dev.index >= n:
        if explicit:
            raise TrainingError(f"--device {pref}: this machine has {n} CUDA GPU(s); use cuda:0 to cuda:{n - 1}, or cuda (each rank its LOCAL_RANK's)")
        raise TrainingError(
            f"LOCAL_RANK={local_rank}: this rank would train on cuda:{local_rank}, but this machine has {n} CUDA GPU(s); "
            f"launch at most {n} process(es) per machine (torchrun --nproc_per_node={n}), or train on the CPU with --device cpu"
        )
    return dev


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise TrainingError(f"environment variable {name}={raw!r} is not a whole number >= 0; torchrun sets it: unset it to train in one process")
    return value


def torchrun_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK: 0, 1 and RANK
    when unset."""
    rank = _env_int("RANK", 0)
    return rank, _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and choose this rank's device."""
    rank, world, local_rank = torchrun_env()
    if rank >= world:  # e.g. a RANK left in the shell: this process would never log or save (rank 0 does)
        raise TrainingError(
            f"RANK={rank} but WORLD_SIZE={world}: a rank must be below the world size; launch with torchrun, "
            "or unset RANK / WORLD_SIZE / LOCAL_RANK to train in one process"
        )
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


def agree_before_training(info: DistInfo, failure: Exception | None, start_step: int | None = None) -> None:
    """Raise on every rank when any rank's pre-flight checks failed (`failure`: this rank's). A rank
    that did not fail raises a TrainingError naming the first that did; a rank left going on would
    wait forever in DDP's first broadcast for ranks that had stopped. Then, with `start_step` (the
    step this rank starts at: 0, or the checkpoint's it resumes), a TrainingError on every rank
    when they differ: each rank reads the run folder itself, and one that sees another (--out on a
    node's local disk, a file system that shows it late) would silently train other steps on other
    data while DDP averages its gradients with the rest."""
    if not info.distributed:
        if failure is not None:
            raise failure
        return
    mine = None if failure is None else _describe(failure)
    box: list[tuple[str | None, int | None]] = [(None, None)] * info.world_size
    tdist.all_gather_object(box, (mine, start_step))
    failed = [(r, m) for r, (m, _) in enumerate(box) if m is not None]
    if failure is not None:
        first = next(r for r, m in failed if m == mine)
        raise failure if first == info.rank else mark_reported(failure, first)
    if failed:
        r, m = failed[0]
        raise mark_reported(TrainingError(f"rank {r} stopped before training: {m}"), r)
    starts = [s for _, s in box]
    if len(set(starts)) > 1:
        shown = ", ".join(f"rank {r} at step {s}" for r, s in enumerate(starts) if r == 0 or s != starts[0])
        error = TrainingError(
            f"the ranks do not agree where the run stands: {shown} (each reads the run folder's checkpoints itself). Every rank must "
            "see the same --out: a folder on a file system all nodes share, not a node's local disk"
        )
        raise error if info.is_main else mark_reported(error, 0)


def _describe(error: Exception) -> str:
    from controlfoley._registry import RegistryError
    from controlfoley.config import ConfigError
    from controlfoley.errors import ControlFoleyError

    return str(error) if isinstance(error, (ControlFoleyError, ConfigError, RegistryError)) else f"{type(error).__name__}: {error}"
