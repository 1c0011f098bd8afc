"""Where one sampling call's time goes: torch.profiler over one `generate` call (after a warm-up
call), kernels grouped into matrix products, attention, and the rest.

Prints the top kernels by device time (CUDA) or operators by CPU time, then a summary by group
with the share of the call's wall time. Weights are random (as in sample_speed.py).

Usage
  python benchmarks/profile_sampling.py --preset specmaskfoley --batch 64 --device cuda
  python benchmarks/profile_sampling.py --preset specmaskfoley_tiny --batch 2 --device cpu --steps 4
"""

import argparse
import re
import time

from _common import environment, fmt, print_table, sync  # first: sets OMP_WAIT_POLICY

import torch
from sample_speed import LIBRARY_PATHS, make_inputs, make_model, models_for
from torch.profiler import ProfilerActivity, profile

GROUPS = (
    ("matrix products", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|addmm|\bmm\b|linear|matmul", re.I)),
    ("attention", re.compile(r"attention|fmha|flash|sdpa|softmax_backward|cudnn", re.I)),
)


def group_of(name: str) -> str:
    for label, pattern in GROUPS:
        if pattern.search(name):
            return label
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="specmaskfoley")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--path", default="library_bf16", choices=list(LIBRARY_PATHS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(environment(device), flush=True)
    model = models_for(make_model(args.preset, device), [args.path])[args.path]  # the path's copy (bf16, fp8) if it has one
    feats, text = make_inputs(model, args.batch, device)
    kw = LIBRARY_PATHS[args.path]

    def call() -> None:
        model.generate(feats, text, steps=args.steps, generator=torch.Generator(device).manual_seed(0), **kw)

    call()  # warm-up (and capture, for the graph paths)
    sync(device)
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        call()
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # on CUDA: device kernels only (their self time is the GPU's); on the CPU: every operator
    rows = [e for e in events if getattr(e, key, 0) > 0 and (not cuda or getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)]
    rows.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in rows) / 1e6
    print(f"\n{args.preset}, batch {args.batch}, {args.steps} steps, path {args.path}: wall {fmt(wall)} s, "
          f"{'device' if cuda else 'CPU self'} time {fmt(total)} s\n")
    print_table(
        ["kernel" if cuda else "operator", "calls", "s", "share"],
        [[e.key[:90], e.count, fmt(getattr(e, key) / 1e6), f"{getattr(e, key) / 1e6 / total:.1%}"] for e in rows[: args.top]],
    )
    groups: dict[str, list[float]] = {}
    for e in rows:
        g = groups.setdefault(group_of(e.key), [0.0, 0])
        g[0] += getattr(e, key) / 1e6
        g[1] += e.count
    print()
    print_table(
        ["group", "calls", "s", "share of kernel time", "share of wall"],
        [[g, int(c), fmt(s), f"{s / total:.1%}", f"{s / wall:.1%}"] for g, (s, c) in sorted(groups.items(), key=lambda kv: -kv[1][0])],
    )


if __name__ == "__main__":
    main()
