"""Sampling speed: a naive reference path vs the library's `generate`, measured in the same process.

What is timed
- token sampling: video features -> aligned control -> MaskGIT steps (12) with multi-CFG -> token
  map. The library path is `model.generate`; the naive reference, written plainly below, runs the
  library's MaskGIT sampler (token selection is the same cheap code for both) with three separate
  forwards per step (uncond backbone alone; backbone + ControlNet with the unconditional mask;
  backbone + ControlNet with the CLAP mask), math attention, fp32, eager, full vocabulary head.
- decode (token map -> mel, the SpecVQGAN decoder) and vocoder (mel -> waveform, Griffin-Lim),
  timed separately once per preset and batch: they are the same code whatever the sampling path.

Warm-up calls run 2 sampling steps (a scale-0 step and a guided one, so every row layout the
timed runs use is built and, with --paths ..._compile, compiled; 3 for the ..._everyN paths, whose
third step runs the text+video rows alone); the timed calls run all steps.
The ..._graph paths (CUDA) warm up with all steps: that call captures the loop the timed calls replay.
Weights are random (speed does not depend on them); the ControlNet's zero-initialised linears get
small random values so the control rows change the tokens as a trained model's would.

Usage
  python benchmarks/sample_speed.py --preset specmaskfoley_tiny --batch 1 16
  python benchmarks/sample_speed.py --preset specmaskfoley --batch 1 --runs 3
  python benchmarks/sample_speed.py --preset specmaskfoley --paths reference library library_bf16 \\
      library_masked_head library_noprune library_compile --runs 3
"""

import argparse
import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

from _common import environment, fmt, median, print_table, sync, time_interleaved  # first: sets OMP_WAIT_POLICY

import torch
from controlfoley import build_model
from controlfoley.backbones.specmaskgit import Attention
from controlfoley.errors import ConfigError
from controlfoley.model import SpecMaskFoley
from controlfoley.fast import fuse_gelu_epilogue
from controlfoley.quantize import quantize_fp8
from torch.nn.attention import SDPBackend, sdpa_kernel

# MMAudio-S-16k's network on this machine class (docs/DESIGN.md sec. 4): 25 Euler steps with CFG for an
# 8 s clip take ~12 s in fp32 and ~8 s in bf16 -> seconds of compute per second of audio.
MMAUDIO_S_CPU = {"fp32": 12.0 / 8.0, "bf16": 8.0 / 8.0}

# name -> generate() keyword arguments; "reference" is the naive path below. "library" is the
# library's default CPU path (fp32); the others switch one feature at a time.
LIBRARY_PATHS: dict[str, dict[str, Any]] = {
    "library": {"dtype": torch.float32, "prune_rows": True},
    "library_bf16": {"dtype": torch.bfloat16, "prune_rows": True},
    "library_mkl": {"dtype": torch.float32, "prune_rows": True, "onednn": False},
    "library_bf16_aten": {"dtype": torch.bfloat16, "prune_rows": True, "onednn": False},
    "library_static": {"dtype": torch.float32, "prune_rows": True, "static_shapes": True},
    "library_masked_head": {"dtype": torch.float32, "prune_rows": True, "static_shapes": False},
    "library_noprune": {"dtype": torch.float32, "prune_rows": False},
    "library_compile": {"dtype": torch.float32, "prune_rows": True, "compile": True},
    "library_bf16_compile": {"dtype": torch.bfloat16, "prune_rows": True, "compile": True},
    # the model's weights stored in bf16 (`model.to(torch.bfloat16)`, a copy made once): no per-step
    # weight casts under autocast
    "library_bf16_weights": {"dtype": torch.bfloat16, "prune_rows": True},
    "library_bf16_weights_compile": {"dtype": torch.bfloat16, "prune_rows": True, "compile": True},
    # CUDA: the whole sampling loop captured as one CUDA graph (controlfoley.graphs), captured in
    # the warm-up round and replayed in the timed ones
    "library_graph": {"dtype": torch.float32, "prune_rows": True, "cuda_graph": True},
    "library_bf16_graph": {"dtype": torch.bfloat16, "prune_rows": True, "cuda_graph": True},
    "library_bf16_weights_graph": {"dtype": torch.bfloat16, "prune_rows": True, "cuda_graph": True},
    "library_bf16_compile_graph": {"dtype": torch.bfloat16, "prune_rows": True, "compile": True, "cuda_graph": True},
}
# Model copies some paths sample with, by the longest matching path prefix: "bf16" a bf16 copy made
# once (`model.to(torch.bfloat16)`); "row" / "static" / "tensor" that copy with its block linears in
# fp8 (controlfoley.quantize.quantize_fp8, that granularity; compute capability >= 8.9 on CUDA).
MODEL_COPIES = {
    "library_bf16_weights": "bf16",
    "library_bf16_native": "bf16",
    "library_fp8": "row",
    "library_fp8_static": "static",  # x's scale fixed from a bound on the block's inputs: no reduction, fuses when compiled
    "library_fp8_tensor": "tensor",
    # the bf16 copy with each MLP's first linear + GELU as one GEMM with a GELU epilogue
    # (controlfoley.fast.fuse_gelu_epilogue; on CUDA cuBLASLt's tanh GELU)
    "library_bf16_gelu": "bf16_gelu",
}
# The copies sampled natively (their own dtype, no autocast; generate's default for a bf16 model:
# layer norms, residual adds and softmax in bf16 too), eager, compiled, in a whole-loop graph, or both
RUN_MODES = {"": {}, "_compile": {"compile": True}, "_graph": {"cuda_graph": True}, "_compile_graph": {"compile": True, "cuda_graph": True}}
for _prefix in ("library_bf16_native", "library_bf16_gelu", "library_fp8", "library_fp8_static", "library_fp8_tensor"):
    for _suffix, _mode in RUN_MODES.items():
        LIBRARY_PATHS[_prefix + _suffix] = {"prune_rows": True, **_mode}
# `generate(guidance_every=N)`, an approximation (all condition sets at every N-th guided step only;
# what it does to quality: benchmarks/sampler_quality.py): "<path>_everyN"
EVERY = (2, 3, 4)
for _base in ("library", "library_bf16", "library_bf16_native_graph", "library_bf16_native_compile_graph", "library_fp8_static_compile_graph"):
    for _n in EVERY:
        LIBRARY_PATHS[f"{_base}_every{_n}"] = {**LIBRARY_PATHS[_base], "guidance_every": _n}
DEFAULT_PATHS = ("reference", "library", "library_bf16")
# on CUDA also the fastest measured paths (benchmarks/RESULTS.md): whole-loop CUDA graphs, a bf16 model
DEFAULT_CUDA_PATHS = (*DEFAULT_PATHS, "library_bf16_graph", "library_bf16_native_graph")
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH,
}
TARGET_STEPS = 12  # issue 6's targets are for the paper's 12-step multi-CFG sampling


@contextlib.contextmanager
def math_attention(model: SpecMaskFoley) -> Iterator[None]:
    """Every attention layer (backbone and ControlNet copy) on the explicit math path."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    before = [m.fused for m in layers]
    for m in layers:
        m.fused = False
    try:
        yield
    finally:
        for m, f in zip(layers, before):
            m.fused = f


def naive_generate(model: SpecMaskFoley, features: dict[str, torch.Tensor], text: torch.Tensor, seed: int, steps: int) -> torch.Tensor:
    """The reference: three plain forwards per step, multi-CFG l_u + s[(l_tv - l_u) + (l_v - l_u)]."""
    bb, cn, rule = model.backbone, model.controlnet, model.guidance
    b = text.shape[0]
    with torch.no_grad(), math_attention(model):
        control = model.encode_control(features)

        def logits_fn(codes: torch.Tensor, mask: torch.Tensor, k: int, n: int) -> torch.Tensor:
            x_u = bb.embed(codes, mask)  # learned unconditional mask
            x_t = bb.embed(codes, mask, text)  # CLAP conditional mask
            l_u = bb.logits(bb.forward_blocks(x_u))
            l_v = bb.logits(bb.forward_blocks(x_u, cn(x_u, control)))
            l_tv = bb.logits(bb.forward_blocks(x_t, cn(x_t, control)))
            s = rule.scale_at(k, n)
            return l_u + s * ((l_tv - l_u) + (l_v - l_u))

        gen = torch.Generator(model.device).manual_seed(seed)
        flat = model.sampler.sample(
            logits_fn, batch=b, n_tokens=model.n_tokens, vocab_size=bb.vocab_size, device=model.device, generator=gen, steps=steps
        )
    return flat.view(b, *model.grid)


def make_model(preset: str, device: torch.device) -> SpecMaskFoley:
    torch.manual_seed(0)
    model = build_model(preset).eval().to(device)
    with torch.no_grad():
        for p in [*model.controlnet.outs.parameters(), *model.controlnet.cond_in.parameters()]:
            p.normal_(0.0, 0.02)
    return model


def make_inputs(model: SpecMaskFoley, batch: int, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random features at the paper's rates: Synchformer 24 fps, CLIP 8 fps, and a CLAP-like vector."""
    g = torch.Generator().manual_seed(1)
    seconds = model.n_samples / model.sample_rate
    enc = model.control_encoder
    feats = {
        "sync": torch.randn(batch, round(24 * seconds), enc.sync_dim, generator=g),
        "clip": torch.randn(batch, round(8 * seconds), enc.clip_dim, generator=g),
    }
    text = torch.randn(batch, model.backbone.cond_dim, generator=g)
    return {k: v.to(device) for k, v in feats.items()}, text.to(device)


def copy_of(path: str) -> str | None:
    """The model copy `path` samples with (MODEL_COPIES), None for the model itself."""
    prefix = max((p for p in MODEL_COPIES if path.startswith(p)), key=len, default=None)
    return None if prefix is None else MODEL_COPIES[prefix]


def models_for(model: SpecMaskFoley, paths: list[str]) -> dict[str, SpecMaskFoley]:
    """The model each path samples with, each copy made once. A copy that cannot be made (fp8 on a
    GPU without it) is reported and its paths left out; the others go on."""
    copies: dict[str, SpecMaskFoley | None] = {}

    def get(kind: str | None) -> SpecMaskFoley | None:
        if kind is None:
            return model
        if kind not in copies:
            if kind == "bf16":
                copies[kind] = copy.deepcopy(model).to(torch.bfloat16)
            elif kind == "bf16_gelu":
                copies[kind] = fuse_gelu_epilogue(copy.deepcopy(get("bf16")))
            else:
                try:
                    copies[kind] = quantize_fp8(copy.deepcopy(get("bf16")), granularity=kind)
                except ConfigError as e:
                    print(f"  the fp8 ({kind}) model FAILED, its paths not timed: {e}", flush=True)
                    copies[kind] = None
        return copies[kind]

    picked = {p: get(copy_of(p)) for p in paths}
    return {p: m for p, m in picked.items() if m is not None}


def sampling_fns(models: dict[str, SpecMaskFoley], batch: int, steps: int, device: torch.device, out: dict[str, torch.Tensor]) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]]]:
    """(timed, warm-up) callables per path; each timed call stores its tokens in `out`."""
    feats, text = make_inputs(next(iter(models.values())), batch, device)
    timed: dict[str, Callable[[], object]] = {}
    warm: dict[str, Callable[[], object]] = {}

    def bind(name: str, n_steps: int) -> Callable[[], object]:
        m = models[name]
        if name == "reference":
            return lambda: out.__setitem__(name, naive_generate(m, feats, text, 0, n_steps))
        kw = LIBRARY_PATHS[name]
        return lambda: out.__setitem__(
            name, m.generate(feats, text, steps=n_steps, generator=torch.Generator(device).manual_seed(0), **kw)
        )

    for name in models:
        # a captured loop is specific to its step count: warm (capture) it with the timed one's
        # (2 steps: a scale-0 and a full one; with guidance_every also a third, the anchor-only layout)
        kw = LIBRARY_PATHS.get(name, {})
        warm_steps = steps if kw.get("cuda_graph") else min(steps, 3 if kw.get("guidance_every", 1) > 1 else 2)
        timed[name], warm[name] = bind(name, steps), bind(name, warm_steps)
    return timed, warm


def failing(warm: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> list[str]:
    """Run the warm-up rounds path by path; the paths that raise, each reported with its error."""
    bad: list[str] = []
    for _ in range(rounds):
        for name, fn in warm.items():
            if name in bad:
                continue
            try:
                fn()
                sync(device)
            except Exception as e:  # noqa: BLE001  (reported, and the other paths go on)
                print(f"  {name} FAILED in warm-up, not timed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
                bad.append(name)
    return bad


def time_decode(model: SpecMaskFoley, codes: torch.Tensor, runs: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of token map -> mel and of mel -> waveform."""
    mel = model.decode(codes)
    t = time_interleaved({"decode": lambda: model.decode(codes), "vocoder": lambda: model.vocode(mel)}, warmup=1, runs=runs, device=device)
    return median(t["decode"].wall), median(t["vocoder"].wall)


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    model = make_model(preset, device)
    models = models_for(model, args.paths)
    seconds = model.n_samples / model.sample_rate
    results = []
    for batch in args.batch:
        out: dict[str, torch.Tensor] = {}
        timed, warm = sampling_fns(models, batch, args.steps, device, out)
        for name in failing(warm, args.warmup, device):  # a path that fails in its warm-up costs only itself
            del timed[name]
        out.clear()  # only the timed calls' tokens are compared and decoded
        times = time_interleaved(timed, warmup=0, runs=args.runs, device=device)
        ref = times.get("reference")
        dec, voc = None, None
        if not args.no_decode and out:
            dec, voc = time_decode(model, out[[p for p in args.paths if p in out][-1]], args.decode_runs, device)
        for name in args.paths:
            if name not in times:
                continue
            t = times[name]
            wall, cpu = median(t.wall), median(t.cpu)
            same = None if "reference" not in out else (out[name] == out["reference"]).float().mean().item()
            results.append(dict(
                preset=preset, batch=batch, path=name, seconds=wall, min=min(t.wall), cpu=cpu, per_audio_s=wall / (seconds * batch),
                speedup=None if ref is None else median(ref.wall) / wall, cpu_speedup=None if ref is None else median(ref.cpu) / cpu,
                same_tokens=same, decode=dec, vocoder=voc, clip_s=seconds,
            ))
        print(f"  {preset} batch {batch}: " + ", ".join(f"{n} {fmt(median(v.wall))} s" for n, v in times.items()), flush=True)
    return results


def targets(results: list[dict[str, Any]], threads: int) -> list[list[str]]:
    """The CPU targets of issue 6, for the paper preset at batch 1. Wall time on a loaded machine
    overstates the cost; CPU s / threads estimates the wall time on an idle one (a lower bound)."""
    rows = []
    by = {(r["preset"], r["batch"], r["path"]): r for r in results}
    paths = [("library", "fp32"), ("library_bf16", "bf16")]
    paths += [(f"{p}_every{n}", prec) for p, prec in paths for n in EVERY]  # approximations: labelled as such
    for path, prec in paths:
        r = by.get(("specmaskfoley", 1, path))
        if r is None:
            continue
        if "_every" in path:
            path += f" (guidance_every={path.rsplit('_every', 1)[1]}: an approximation, not the paper's sampler)"
        if r["speedup"] is not None:
            measured = f"{fmt(r['speedup'])}x (wall), {fmt(r['cpu_speedup'])}x (CPU s)"
            rows.append([f"{path} vs naive reference, batch 1", measured, ">= 2x", _met(r["speedup"] >= 2, r["cpu_speedup"] >= 2)])
        mm = MMAUDIO_S_CPU[prec]
        idle = r["cpu"] / threads / r["clip_s"]
        measured = f"{fmt(r['per_audio_s'])} wall, {fmt(idle)} idle estimate"
        rows.append([f"{path}: s per s of audio (MMAudio-S {prec}: {mm:.2f})", measured, f"<= {mm / 2:.2f}", _met(r["per_audio_s"] <= mm / 2, idle <= mm / 2)])
    return rows


# Issue 6 on an H100: under 50 ms per 10 s clip at batch 1, over 100 clips/s at batch 64 (12-step
# multi-CFG token sampling; the paper preset's clip is 9.85 s).
GPU_BATCH1_S, GPU_BATCH64_CLIPS_S = 0.050, 100.0


def gpu_targets(results: list[dict[str, Any]]) -> list[list[str]]:
    """The GPU targets of issue 6 for every library path of the paper preset measured at batch 1 or 64."""
    rows = []
    for r in results:
        if r["preset"] != "specmaskfoley" or r["path"] == "reference":
            continue
        if r["batch"] == 1:
            rows.append([f"{r['path']}: s per clip, batch 1", fmt(r["seconds"]), f"< {GPU_BATCH1_S}", "yes" if r["seconds"] < GPU_BATCH1_S else "no"])
        elif r["batch"] == 64:
            rate = r["batch"] / r["seconds"]
            rows.append([f"{r['path']}: clips/s, batch 64", fmt(rate), f"> {GPU_BATCH64_CLIPS_S:g}", "yes" if rate > GPU_BATCH64_CLIPS_S else "no"])
    return rows


def _met(wall_ok: bool, cpu_ok: bool) -> str:
    return {(True, True): "yes", (False, True): "by CPU s only", (True, False): "by wall only", (False, False): "no"}[(wall_ok, cpu_ok)]


def report(results: list[dict[str, Any]], device: torch.device, markdown: bool, steps: int) -> None:
    print(f"\n{environment(device)}")
    print("\nToken sampling (features -> tokens; median of the timed runs)")
    print_table(
        ["preset", "batch", "path", "median s", "min s", "CPU s", "s per s audio", "speedup (wall)", "speedup (CPU s)", "tokens = ref"],
        [[r["preset"], r["batch"], r["path"], fmt(r["seconds"]), fmt(r["min"]), fmt(r["cpu"]), fmt(r["per_audio_s"]), fmt(r["speedup"]),
          fmt(r["cpu_speedup"]), fmt(r["same_tokens"])] for r in results],
        markdown=markdown,
    )
    seen = {(r["preset"], r["batch"]): r for r in results if r["decode"] is not None}
    if seen:
        print("\nDecode and vocoder (same for every path; median)")
        print_table(
            ["preset", "batch", "clip s", "decode s", "vocoder (Griffin-Lim) s", "(decode + vocoder) per s audio"],
            [[p, b, fmt(r["clip_s"]), fmt(r["decode"]), fmt(r["vocoder"]),
              fmt((r["decode"] + r["vocoder"]) / (r["clip_s"] * b))] for (p, b), r in seen.items()],
            markdown=markdown,
        )
    cuda = device.type == "cuda"
    rows = gpu_targets(results) if cuda else targets(results, torch.get_num_threads())
    if rows and steps != TARGET_STEPS:
        rows = [[*r[:3], f"n/a: {steps} steps, the targets are for {TARGET_STEPS}"] for r in rows]
    if rows:
        what = "GPU targets (issue 6, set for an H100)" if cuda else "CPU targets (issue 6)"
        print(f"\n{what}, paper preset, {steps} steps, token sampling only (MMAudio-S's figures are its network only)")
        print_table(["check", "measured", "target", "met"], rows, markdown=markdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", nargs="+", default=["specmaskfoley_tiny"], help="presets to time (random weights)")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--paths", nargs="+", default=None, choices=["reference", *LIBRARY_PATHS],
                    help=f"default: {' '.join(DEFAULT_PATHS)}; on CUDA also {' '.join(DEFAULT_CUDA_PATHS[len(DEFAULT_PATHS):])}")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed 2-step rounds before timing (they also find the paths that fail, which are then left out; with 0 a failing path stops the run)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--decode-runs", type=int, default=3)
    ap.add_argument("--no-decode", action="store_true", help="skip the decode and vocoder timing")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--markdown", action="store_true", help="print GitHub tables (for RESULTS.md)")
    ap.add_argument("--sdpa", choices=sorted(SDPA_BACKENDS), help="restrict the library paths' attention to one SDPA backend")
    ap.add_argument("--max-autotune", action="store_true",
                    help="the _compile paths with inductor's max-autotune GEMMs (Triton templates that can take the bias + GELU "
                         "as an epilogue) and coordinate-descent tuning; compiling takes minutes")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.max_autotune:  # process-wide inductor settings, read when the compiled forward is first built
        import torch._inductor.config as inductor_config

        inductor_config.max_autotune = True
        inductor_config.max_autotune_gemm = True
        inductor_config.coordinate_descent_tuning = True
        inductor_config.epilogue_fusion = True
    if args.paths is None:
        args.paths = list(DEFAULT_CUDA_PATHS if device.type == "cuda" else DEFAULT_PATHS)
    print(environment(device) + (f" | SDPA backend {args.sdpa}" if args.sdpa else "") + (" | inductor max-autotune" if args.max_autotune else ""), flush=True)
    results = []
    with sdpa_kernel([SDPA_BACKENDS[args.sdpa]]) if args.sdpa else contextlib.nullcontext():
        for preset in args.preset:
            results += bench_preset(preset, args, device)
    sync(device)
    report(results, device, args.markdown, args.steps)


if __name__ == "__main__":
    main()
