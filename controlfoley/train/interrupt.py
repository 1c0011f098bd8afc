"""SIGTERM, the way SLURM, Kubernetes and torchrun's agent stop a job, handled like Ctrl-C.

- `terminate_as_interrupt(deferred)`: while a run trains, SIGTERM raises `TrainingInterrupted`, a
  KeyboardInterrupt: what handles Ctrl-C handles it (the CLI names the intact checkpoint and the
  --resume command, and exits 128 + 15). Nothing more is written, as with Ctrl-C: checkpoints are
  atomic, so the latest one is whole.
- In one process it raises at once, as SIGINT does. Under torchrun (`deferred`) every rank is sent
  the signal, but a rank that stopped at once could leave the others waiting in a collective for
  ever; there the handler only records it (`interrupt_pending`), the loop sums the record with the
  step's statistics, and every rank stops after the same step. A second SIGTERM raises at once.
- Once SIGTERM arrived, any error on the way out (a DataLoader worker the same signal killed, a
  peer that left a collective) is reported as the interruption it is.
- Installed from the main thread only, and only over the default handler (a caller's own, such as
  submitit's, stays in charge); the previous handler is restored afterwards. Forked children
  (DataLoader workers) ignore it: their trainer stops them.
"""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["TrainingInterrupted", "terminate_as_interrupt", "interrupt_pending"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal (`signum`: SIGTERM); a KeyboardInterrupt, so Ctrl-C handling applies."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_received: list[int] = []  # SIGTERMs received while a handler of ours is installed


def interrupt_pending() -> bool:
    """Whether a SIGTERM arrived that the run has not stopped for yet (deferred mode)."""
    return bool(_received)


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
        if not deferred or len(_received) > 1:
            raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except TrainingInterrupted:
        raise
    except Exception as e:
        if _received:  # an error the termination caused
            raise TrainingInterrupted(_received[0]) from e
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received.clear()
