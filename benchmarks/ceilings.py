"""The two ceilings a speed number is read against, measured on this machine: dense matrix-product
rate and device-memory copy bandwidth (docs: ../.library/device/METHOD.md "two numbers first").

- CUDA: an n x n x n bf16 (and fp32, TF32 off; fp8 e4m3 through `torch._scaled_mm` on compute
  capability >= 8.9, tensor-wise and row-wise scales) matrix product on random data, median of timed runs
  with CUDA events after warm-up; a device-to-device copy of `--copy-gib` GiB, counting bytes read
  plus bytes written.
- CPU: the same matrix products at a smaller n (the build machines have 2 cores). `torch.mm` runs
  MKL's GEMM (AVX2 kernels on AMD CPUs); the library's CPU linears run oneDNN instead
  (`controlfoley.fast.OneDNNLinear`), so oneDNN's linear is timed too, at n and at the shape of a
  paper-preset sampling step's fc1 (795 rows = 3 guidance rows x 265 tokens, 768 -> 3072).

Usage: python benchmarks/ceilings.py [--device cuda] [--n 8192]
"""

import argparse
import functools
import statistics
import time

from _common import environment, fmt, print_table, sync  # first: sets OMP_WAIT_POLICY

import torch


def timed(fn, device: torch.device, warmup: int = 3, runs: int = 10) -> float:
    """Median seconds of fn() (CUDA events on CUDA, perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(runs):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="matrix size (default 8192 on CUDA, 1024 on CPU)")
    ap.add_argument("--copy-gib", type=float, default=2.0)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.n or (8192 if device.type == "cuda" else 1024)
    torch.backends.cuda.matmul.allow_tf32 = False
    print(environment(device), flush=True)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        s = timed(functools.partial(torch.mm, a, b), device, runs=10 if device.type == "cuda" else 3)
        rows.append([f"{str(dtype).removeprefix('torch.')} matmul {n}^3", fmt(2 * n**3 / s / 1e12), "TFLOP/s"])
    if device.type == "cpu" and torch.backends.mkldnn.is_available():  # the GEMM the library's CPU linears run
        for dtype in (torch.bfloat16, torch.float32):
            for rows_, k, m in ((n, n, n), (795, 768, 3072)):
                x = torch.randn(rows_, k, dtype=dtype)
                w, bias = torch.randn(m, k, dtype=dtype), torch.zeros(m, dtype=dtype)
                fn = functools.partial(torch.ops.mkldnn._linear_pointwise, x, w, bias, "none", [], "")
                s = timed(fn, device, runs=5)
                rows.append([f"{str(dtype).removeprefix('torch.')} oneDNN linear {rows_}x{k}x{m}", fmt(2 * rows_ * k * m / s / 1e12), "TFLOP/s"])
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):  # fp8 tensor cores (Ada, Hopper)
        a8 = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b8 = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
        one = torch.ones((), device=device)
        for label, sa, sb in (("tensor-wise", one, one), ("row-wise", torch.ones(n, 1, device=device), torch.ones(1, n, device=device))):
            fn = functools.partial(torch._scaled_mm, a8, b8, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
            try:
                s = timed(fn, device)
                rows.append([f"fp8 e4m3 matmul {n}^3, {label} scales", fmt(2 * n**3 / s / 1e12), "TFLOP/s"])
            except RuntimeError as e:
                rows.append([f"fp8 e4m3 matmul {n}^3, {label} scales", f"failed: {str(e).splitlines()[0][:80]}", "-"])
    if device.type == "cuda":
        x = torch.empty(int(args.copy_gib * 2**30) // 4, device=device, dtype=torch.float32).uniform_()
        y = torch.empty_like(x)
        s = timed(functools.partial(y.copy_, x), device)
        rows.append([f"device-to-device copy {args.copy_gib:g} GiB", fmt(2 * x.numel() * 4 / s / 1e12), "TB/s (read + write)"])
    print_table(["ceiling", "measured", "unit"], rows, markdown=args.markdown)


if __name__ == "__main__":
    main()
