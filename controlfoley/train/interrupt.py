"""SIGTERM, the way SLURM, Kubernetes and torchrun's agent stop a job: finish the step, checkpoint, stop.

- `terminate_as_interrupt(deferred)`: while a run trains, SIGTERM ends it with
  `TrainingInterrupted`, a KeyboardInterrupt: what handles Ctrl-C handles it (the CLI names the
  checkpoint and the --resume command, and exits 128 + 15).
- While steps run (`steps_running()`, which the loop enters) the handler only records the signal
  (`interrupt_pending`): the step in progress finishes, the loop writes a checkpoint of it and then
  raises. A preempted run so loses nothing, not even the steps since the last periodic
  checkpoint, provided the scheduler's grace period (SLURM's KillWait, Kubernetes'
  terminationGracePeriodSeconds, torchrun's 30 s before SIGKILL) covers one step and one
  checkpoint write. Every SIGTERM is deferred alike: under torchrun each worker gets the signal
  twice (from the job's process group and from the agent that forwards it), so a second SIGTERM
  cannot mean "hurry". Ctrl-C (SIGINT) still stops at once, with nothing written: the latest
  checkpoint is intact (checkpoints are written atomically).
- Outside the steps (building the model, reading data) one process stops at once; nothing is lost.
  Under torchrun (`deferred`) a rank never stops on its own, since the others could wait in a
  collective for ever: the loop sums the record with each step's statistics and every rank stops
  after the same step.
- Once SIGTERM arrived, an error on the way out (a DataLoader worker the same signal killed, a
  peer that left a collective) is reported as the interruption it is; the library's own errors
  (a non-finite loss, a full disk: `ControlFoleyError`) are not, since the step that finishes
  after the signal can meet a real one, which must keep its message.
- Installed from the main thread only, and only over the default handler (a caller's own, such as
  submitit's, stays in charge); the previous handler is restored afterwards. Forked children
  (DataLoader workers) ignore it: their trainer stops them.
- DataLoader workers ignore SIGTERM (`ignore_sigterm_in_worker`, the loader's worker_init_fn):
  torch installs its own handler in each worker, which dies on it, and a scheduler signals the
  whole process group (SLURM's scancel, systemd, torchrun's agent on each rank's group), so the
  step in progress met a dead worker at its next batch and the steps since the last checkpoint
  were lost. A worker still ends with its trainer (the loader stops it, and torch's watchdog ends
  a worker whose parent is gone).
"""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from controlfoley.errors import ControlFoleyError

__all__ = ["TrainingInterrupted", "terminate_as_interrupt", "interrupt_pending", "steps_running", "ignore_sigterm_in_worker"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal (`signum`: SIGTERM); a KeyboardInterrupt, so Ctrl-C handling applies.

    `checkpoint`: the checkpoint written on the way out (the step that was running when the signal
    came), or None when the run stopped before its first step."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.checkpoint = checkpoint


_received: list[int] = []  # SIGTERMs received while a handler of ours is installed
_deferring: list[bool] = []  # non-empty while the loop's steps run (`steps_running`)


def ignore_sigterm_in_worker(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`: the worker ignores SIGTERM (it runs after torch's own worker
    signal handlers are set), so a signal to the process group leaves it serving the step in
    progress while the trainer finishes that step and checkpoints it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def interrupt_pending() -> bool:
    """Whether a SIGTERM arrived that the run has not stopped for yet."""
    return bool(_received)


@contextlib.contextmanager
def steps_running() -> Iterator[None]:
    """While inside, a SIGTERM is recorded for the loop to act on after the step, not raised."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()


@contextlib.contextmanager
def terminate_as_interrupt(*, deferred: bool = False) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    owner = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked DataLoader worker: the trainer stops it
            return
        _received.append(signum)
        if not (deferred or _deferring):
            raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except TrainingInterrupted:
        raise
    except Exception as e:
        if _received and not isinstance(e, ControlFoleyError):  # an error the termination caused
            raise TrainingInterrupted(_received[0]) from e
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received.clear()
