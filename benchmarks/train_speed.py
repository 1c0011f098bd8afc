"""ControlNet training step: throughput (clips/s) and peak memory, frozen backbone vs a plain reference.

Variants (same model, inputs and optimizer):
- frozen: the library's recipe, `model.freeze_backbone()`. Only the control encoder, aligner and
  ControlNet require grad. Gradients still flow THROUGH the frozen backbone blocks after the first
  injection point to reach the ControlNet; autograd computes and keeps no weight gradients for
  frozen parameters, and records nothing before the first injection (the embedding and block 0
  do not depend on a trainable parameter).
- frozen_ckpt: frozen, with `model.enable_activation_checkpointing()` (`--activation-checkpointing`):
  each backbone and ControlNet block keeps only its input and recomputes the rest in the backward
  pass. The same gradients; the table's "vs frozen" columns give its time and memory over frozen's.
- reference: every parameter requires grad, so the backward computes and keeps backbone weight
  gradients; the optimizer steps only the control parameters (the result is the same training).

A step is `model.loss` (random codes, video features and CLAP vector; masked-token cross-entropy)
+ backward + AdamW step + zero_grad(set_to_none=True). Each variant runs in a fresh subprocess, so
peak memory is its own: on CUDA `torch.cuda.max_memory_allocated`, on the CPU the growth of the
process's peak RSS (ru_maxrss) from just before the first step to the end (gradients, optimizer
state and activations above the loaded model). Step times are the median after one warm-up step.
`--precision fp32` (the default) runs the step in fp32; `--precision bf16` under bf16 autocast, as
`controlfoley train` runs it on CUDA (its `--precision auto`), so that its memory is what training
takes there.

Usage
  python benchmarks/train_speed.py --preset specmaskfoley_tiny --batch 8 --steps 10
  python benchmarks/train_speed.py --preset specmaskfoley --batch 2 --steps 3
  python benchmarks/train_speed.py --device cuda --preset specmaskfoley --batch 64 --steps 5 --precision bf16
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from _common import environment, fmt, median, print_table, sync  # first: sets OMP_WAIT_POLICY

import torch
from controlfoley import build_model
from controlfoley.model import SpecMaskFoley

VARIANTS = ("frozen", "frozen_ckpt", "reference")


def make_batch(model: SpecMaskFoley, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    seconds = model.n_samples / model.sample_rate
    enc = model.control_encoder
    x = {
        "codes": torch.randint(0, model.backbone.vocab_size, (batch, *model.grid), generator=g),
        "sync": torch.randn(batch, round(24 * seconds), enc.sync_dim, generator=g),
        "clip": torch.randn(batch, round(8 * seconds), enc.clip_dim, generator=g),
        "text": torch.randn(batch, model.backbone.cond_dim, generator=g),
    }
    return {k: v.to(device) for k, v in x.items()}


def prepare(variant: str, preset: str, device: torch.device) -> tuple[SpecMaskFoley, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(preset).to(device).train()
    if variant in ("frozen", "frozen_ckpt"):
        model.freeze_backbone()
    else:
        model.requires_grad_(True)
    model.enable_activation_checkpointing(variant == "frozen_ckpt")
    control = [p for m in model.control_modules() for p in m.parameters()]
    return model, torch.optim.AdamW(control, lr=1e-4)


def probe(variant: str, preset: str, batch: int, steps: int, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """Run in a fresh process: time `steps` training steps and measure the memory they add."""
    model, opt = prepare(variant, preset, device)
    x = make_batch(model, batch, device)
    gen = torch.Generator(device).manual_seed(0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):  # as the training loop's _autocast
            loss, _ = model.loss(x["codes"], features={"sync": x["sync"], "clip": x["clip"]}, cond=x["text"], generator=gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    step()  # warm-up: also allocates the optimizer state
    wall, cpu = [], []
    for _ in range(steps):
        sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        sync(device)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB -> MiB on Linux
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    saved = saved_for_backward_mib(model, step)
    return {"wall": median(wall), "cpu": median(cpu), "peak_mib": peak, "trainable": trainable, "params": sum(p.numel() for p in model.parameters()),
            "saved_mib": saved}  # fmt: skip


def saved_for_backward_mib(model: SpecMaskFoley, step: Callable[[], None]) -> float:
    """MiB that autograd keeps for the backward pass of one step (an untimed extra step): the
    storages of every tensor saved for backward (`torch.autograd.graph.saved_tensors_hooks`), each
    counted once, less the model's parameters (held anyway). Deterministic and the same on any
    device, unlike peak memory: a device-independent measure of what activation checkpointing saves
    (under `--precision bf16` it includes the bf16 copies of the weights that autocast makes and
    keeps for backward, which are real memory too)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values()) / 2**20


def run_probe(variant: str, args: argparse.Namespace, preset: str, batch: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--probe", variant, "--preset", preset, "--batch", str(batch), "--steps", str(args.steps), "--device", args.device,
           "--precision", args.precision]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:  # show the probe's own error, not only "non-zero exit status"
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"train_speed: the {variant!r} probe failed (exit {out.returncode}); its output is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", nargs="+", default=["specmaskfoley_tiny"])
    ap.add_argument("--batch", nargs="+", type=int, default=[8])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32, or bf16 autocast as `controlfoley train` runs on CUDA")
    ap.add_argument("--probe", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.probe:
        print(json.dumps(probe(args.probe, args.preset[0], args.batch[0], args.steps, device, args.precision)))
        return
    print(f"{environment(device)} | precision {args.precision}", flush=True)
    rows = []
    for preset in args.preset:
        for batch in args.batch:
            res = {v: run_probe(v, args, preset, batch) for v in VARIANTS}
            ref, frozen = res["reference"], res["frozen"]
            for v, r in res.items():
                rows.append([preset, batch, v, f"{r['trainable'] / 1e6:.1f}M / {r['params'] / 1e6:.1f}M", fmt(r["wall"]), fmt(batch / r["wall"]),
                             fmt(r["cpu"]), fmt(ref["wall"] / r["wall"]), fmt(ref["cpu"] / r["cpu"]), f"{r['peak_mib']:.0f}",
                             fmt(r["wall"] / frozen["wall"]), _ratio(r["peak_mib"], frozen["peak_mib"]), f"{r['saved_mib']:.0f}",
                             _ratio(r["saved_mib"], frozen["saved_mib"])])
            print(f"  {preset} batch {batch}: " + ", ".join(f"{v} {fmt(r['wall'])} s/step" for v, r in res.items()), flush=True)
    mem = "peak CUDA MiB above model" if device.type == "cuda" else "peak RSS growth MiB"
    print(f"\n{environment(device)} | precision {args.precision}\n")
    print_table(["preset", "batch", "variant", "requires grad / params", "s/step", "clips/s", "CPU s/step", "speedup (wall)", "speedup (CPU s)", mem,
                 "s/step vs frozen", "memory vs frozen", "saved for backward MiB", "saved vs frozen"], rows, markdown=args.markdown)


def _ratio(a: float, b: float) -> str:
    """a / b, or "-" where b is not positive (a CPU peak RSS that did not grow)."""
    return fmt(a / b) if b > 0 else "-"


if __name__ == "__main__":
    main()
