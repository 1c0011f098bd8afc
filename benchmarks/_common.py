"""Shared helpers of the benchmarks: interleaved timing (warm-up, then the median of N rounds), the
environment line every result is printed with, and plain-text / markdown tables. They live in
`controlfoley.bench` (the `controlfoley bench` command uses them too); this module re-exports them.

Timing is interleaved: each round calls every variant once in turn (A B C, A B C, ...), so on a
shared, noisy machine every ratio compares runs made at nearly the same moment. Process CPU time is
recorded next to wall time: on a loaded machine it measures the work done, not the waiting.

Importing this module (before torch: the benchmarks import it first) sets OMP_WAIT_POLICY=PASSIVE
unless the environment sets it: OpenMP threads that spin while waiting make timings on a shared
CPU erratic (10x spreads seen on the 2-core build machines); passive waiting makes them repeatable.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads its OpenMP runtime

from controlfoley.bench import Timings, cpu_model, environment, fmt, median, print_table, sync, time_interleaved  # noqa: E402

__all__ = ["Timings", "cpu_model", "environment", "fmt", "median", "print_table", "sync", "time_interleaved"]
