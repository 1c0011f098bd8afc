"""Shared helpers of the benchmarks: interleaved timing (warm-up, then the median of N rounds), the
environment line every result is printed with, and plain-text / markdown tables.

Timing is interleaved: each round calls every variant once in turn (A B C, A B C, ...), so on a
shared, noisy machine every ratio compares runs made at nearly the same moment. Process CPU time is
recorded next to wall time: on a loaded machine it measures the work done, not the waiting.

Importing this module (before torch: the benchmarks import it first) sets OMP_WAIT_POLICY=PASSIVE
unless the environment sets it: OpenMP threads that spin while waiting make timings on a shared
CPU erratic (10x spreads seen on the 2-core build machines); passive waiting makes them repeatable.
"""

import dataclasses
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads its OpenMP runtime

import torch  # noqa: E402

__all__ = ["Timings", "cpu_model", "environment", "fmt", "median", "print_table", "sync", "time_interleaved"]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Timings:
    """Seconds per call: wall clock, and CPU time of the whole process (all threads)."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)


def time_interleaved(
    fns: dict[str, Callable[[], object]], *, warmup: int, runs: int, device: torch.device
) -> dict[str, Timings]:
    """Time every function: `warmup` untimed rounds, then `runs` timed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times = {name: Timings() for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].wall.append(time.perf_counter() - w0)
            times[name].cpu.append(time.process_time() - c0)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> str:
    """One line saying where and when the numbers were measured."""
    parts = [
        datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        f"torch {torch.__version__}",
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)",
    ]
    parts.append(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    if hasattr(os, "getloadavg"):
        parts.append("load avg %.1f/%.1f/%.1f" % os.getloadavg())
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return " | ".join(parts)


def fmt(x: float | None, digits: int = 3) -> str:
    """`digits` significant digits, without switching to exponent notation for large values."""
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool = False) -> str:
    """Print (and return) an aligned table; `markdown=True` gives a GitHub table."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    if markdown:
        lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    else:
        line = "  ".join("{:<%d}" % w for w in widths)
        lines = [line.format(*headers), line.format(*("-" * w for w in widths))]
        lines += [line.format(*(str(c) for c in r)) for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
