"""What sampling precision does to the output: the trained synthetic model (`specmaskfoley_synthetic`)
sampled in fp32, bf16, bf16 with the tanh GELU (what `controlfoley.fast.fuse_gelu_epilogue`
computes on CUDA) and the experimental fp8 linears (`controlfoley.quantize`: row-wise,
tensor-wise and static scales), scored on held-out clips of the synthetic world with the same
metrics as benchmarks/SYNTHETIC.md, plus the share of tokens equal to the fp32 sample (same seeds).

Only the sampling parts (backbone, ControlNet, control encoder, aligner) change precision; the
tokenizer decoder and the vocoder stay fp32, so the differences are the sampler's. Runs on the CPU
(PyTorch's fp8 kernel there is slow but exact to the format); speed is not the point here.

Usage: python benchmarks/precision_quality.py [--n-test 40] [--batch 8] [--markdown] [--variants bf16 "bf16 tanh GELU"]
"""

import argparse
import copy
import time

from _common import environment, fmt, print_table  # first: sets OMP_WAIT_POLICY

import torch
from controlfoley import from_pretrained
from controlfoley.data.synthetic import SyntheticWorld
from controlfoley.evaluation import evaluate_clips
from controlfoley.evaluation_runs import clip_inputs
from controlfoley.quantize import quantize_fp8

SAMPLING_PARTS = ("backbone", "controlnet", "control_encoder", "aligner")
VARIANTS = ("fp32", "bf16", "bf16 tanh GELU", "fp8 row-wise", "fp8 tensor-wise", "fp8 static")


def in_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose sampling parts are bf16 (sampled natively, no autocast); decoder and vocoder fp32."""
    m = copy.deepcopy(model)
    for part in SAMPLING_PARTS:
        getattr(m, part).to(torch.bfloat16)
    return m


def with_tanh_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose ViT MLPs use the tanh GELU: the numerics of `fuse_gelu_epilogue` on CUDA
    (cuBLASLt's GELU epilogue), emulated on the CPU. With the CPU's oneDNN sampling path the GELU
    is applied to fc1's fp32 accumulator and rounded to bf16 once, as the epilogue does."""
    from controlfoley.backbones.specmaskgit import Mlp

    m = copy.deepcopy(model)
    for mlp in m.modules():
        if isinstance(mlp, Mlp):
            mlp.act = torch.nn.GELU(approximate="tanh")
    return m


def sample(model: torch.nn.Module, clips: list, batch: int) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """Token maps, fp32 waveforms and seconds per clip; the seeds of evaluation_runs._generate_rows."""
    features, text = clip_inputs(clips)
    codes, wavs = [], []
    t0 = time.perf_counter()
    for i in range(0, len(clips), batch):
        sl = slice(i, i + batch)
        c = model.generate({k: v[sl] for k, v in features.items()}, text[sl], generator=torch.Generator().manual_seed(1000 + i))
        codes.append(c)
        wavs.extend(model.vocode(model.decode(c)).float())
    return torch.cat(codes), wavs, (time.perf_counter() - t0) / len(clips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-test", type=int, default=40, help="held-out clips (the synthetic benchmark uses 40)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--variants", nargs="+", default=None, help=f"a subset of: {', '.join(VARIANTS)} (default all; fp32 always runs, as the reference)")
    args = ap.parse_args()
    print(environment(torch.device("cpu")), flush=True)
    model = from_pretrained("specmaskfoley_synthetic").eval()
    world = SyntheticWorld(seed=0, duration_s=model.n_samples / model.sample_rate)
    clips = [world.clip(i) for i in world.split("test", args.n_test)]
    bf16 = in_bf16(model)
    make = {
        "fp32": lambda: model,
        "bf16": lambda: bf16,
        "bf16 tanh GELU": lambda: with_tanh_gelu(bf16),
        "fp8 row-wise": lambda: quantize_fp8(copy.deepcopy(bf16), granularity="row"),
        "fp8 tensor-wise": lambda: quantize_fp8(copy.deepcopy(bf16), granularity="tensor"),
        "fp8 static": lambda: quantize_fp8(copy.deepcopy(bf16), granularity="static"),
    }
    assert tuple(make) == VARIANTS
    unknown = set(args.variants or ()) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    variants = {name: make[name]() for name in VARIANTS if args.variants is None or name in (*args.variants, "fp32")}
    rows, ref = [], None
    for name, m in variants.items():
        codes, wavs, sec = sample(m, clips, args.batch)
        ref = codes if ref is None else ref
        n = min(w.shape[0] for w in wavs)
        s = evaluate_clips([w[:n] for w in wavs], clips, clips[0].sample_rate)
        same = (codes == ref).float().mean().item()
        print(f"  {name:<16} tokens = fp32 {same:.3f}  desync {s['desync_s']:.3f} s  f1_cls {s['f1_cls']:.3f}  fd {s['fd']:.2f}", flush=True)
        rows.append([name, fmt(same), fmt(s["desync_s"]), fmt(s["recall_any"]), fmt(s["f1_cls"]), fmt(s["fd"]), fmt(sec)])
    print(f"\nspecmaskfoley_synthetic, {args.n_test} held-out clips, 12-step multi-CFG, batch {args.batch}")
    print_table(["sampling precision", "tokens = fp32", "desync_s", "recall_any", "f1_cls", "fd", "CPU s per clip"], rows, markdown=args.markdown)


if __name__ == "__main__":
    main()
