"""`controlfoley bench`: how fast a model samples on this machine, with the settings you would use.

    controlfoley bench [PRESET_OR_CHECKPOINT] [--batch 1 16] [--device cuda] [--precision auto|fp32|bf16|bf16-weights|fp8]
        [--compile] [--cuda-graph] [--steps 12] [--guidance-every 1] [--runs 5] [--warmup 1] [--decode] [--markdown]

Times `model.generate` (video features -> token map: the MaskGIT steps with the model's guidance)
on random inputs of the model's own shapes: features of every key its control encoder reads, at the
rates it declares (`feature_fps`: Synchformer 24, CLIP 8 per second; 24 where it declares none),
and a CLAP-like vector where the guidance needs text (features only where it reads video). A preset
is built with random weights (speed does not depend on them; one that ships weights, such as
specmaskfoley_synthetic, loads them); a checkpoint, file, folder or training run is loaded. Each batch size gets `--warmup` untimed calls (they also compile or capture, with
`--compile` / `--cuda-graph`), then `--runs` timed ones; the table gives the median and the fastest,
seconds per clip, clips per second and seconds of compute per second of audio. `--decode` also
times token map -> mel -> waveform (the model's own decoder and vocoder), per clip.

This answers "how fast on my card, with my settings". The comparisons behind the project's speed
claims (against a naive reference path, in the same process) are `benchmarks/sample_speed.py`.

The command leaves the OpenMP settings as the environment has them (`benchmarks/` sets
OMP_WAIT_POLICY=PASSIVE for steadier ratios on shared machines, which slows small models).

Library helpers (used by `benchmarks/` too): `time_interleaved` (warm-up rounds, then timed rounds
that call every function in turn, so ratios compare runs made at nearly the same moment; wall and
process CPU time), `environment` (one line: date, torch, CPU, threads, load, GPU), `median`, `sync`,
`fmt` and `print_table`.
"""

import argparse
import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from controlfoley.model import SpecMaskFoley

__all__ = ["Timings", "bench_main", "cpu_model", "environment", "fmt", "median", "print_table", "random_inputs", "sync", "time_interleaved"]

# generate's sampling precisions (controlfoley.pipeline.PRECISIONS) and, for throughput studies, "fp8"
PRECISION_CHOICES = ("auto", "fp32", "bf16", "bf16-weights", "fp8")
FEATURE_FPS = 24.0  # frames per second of a feature whose control encoder declares no `feature_fps`


def sync(device: Any) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work it launched."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Timings:
    """Seconds per call: wall clock, and CPU time of the whole process (all threads)."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, runs: int, device: Any) -> dict[str, Timings]:
    """Time every function: `warmup` untimed rounds, then `runs` timed rounds (each round calls every
    function once, in turn)."""
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


def environment(device: Any) -> str:
    """One line saying where and when the numbers were measured."""
    import torch

    parts = [
        datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        f"torch {torch.__version__}",
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)",
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
    ]
    if hasattr(os, "getloadavg"):
        parts.append("load avg %.1f/%.1f/%.1f" % os.getloadavg())
    if torch.device(device).type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return " | ".join(parts)


def fmt(x: float | None, digits: int = 3) -> str:
    """`digits` significant digits, without switching to exponent notation for large values."""
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False) -> str:
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


def random_inputs(model: Any, batch: int, *, seed: int = 1) -> tuple[dict[str, Any], Any]:
    """(features, text) of the model's shapes, random, on its device: every feature key its control
    encoder reads, at its declared `feature_fps` (else `FEATURE_FPS`) over the window, and a CLAP-like
    [batch, c] vector."""
    import torch

    from controlfoley.control.encoders import feature_dims
    from controlfoley.errors import ConfigError

    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, int(model.backbone.cond_dim), generator=g).to(model.device)
    if not model.has_control:
        return {}, text
    dims = feature_dims(model.control_encoder)
    keys = tuple(model.control_encoder.required_features)
    missing = [k for k in keys if k not in dims]
    if missing:
        raise ConfigError(
            f"the control encoder {type(model.control_encoder).__name__} does not say how wide its features "
            f"{missing} are, so no inputs can be made for it; give it a `feature_dims` mapping (key -> width)"
        )
    fps = {str(k): float(v) for k, v in dict(getattr(model.control_encoder, "feature_fps", None) or {}).items()}
    seconds = model.n_samples / model.sample_rate
    # a training clip's count, as the pipeline conditions one window (FoleyPipeline.rows_per_window)
    frames = {k: max(2, math.floor(fps.get(k, FEATURE_FPS) * seconds + 1e-9)) for k in keys}
    feats = {k: torch.randn(batch, frames[k], dims[k], generator=g).to(model.device) for k in keys}
    return feats, text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlfoley bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="specmaskfoley", metavar="PRESET_OR_CHECKPOINT", help="default: specmaskfoley (random weights)")
    p.add_argument(
        "--model", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a build_model override of the model timed, as train takes it: backbone.depth=12, controlnet.n_blocks=6; repeatable",
    )  # fmt: skip
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes to time (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision", choices=PRECISION_CHOICES, default="auto",
        help="auto: bf16 on CUDA, fp32 elsewhere; bf16: autocast; bf16-weights: the backbone and control parts stored in bf16 and sampled natively, as generate --precision bf16-weights (fastest on an H100 at batch 1); "
        "fp8: bf16-weights with the transformer blocks' linears in fp8 with static scales (controlfoley.quantize, experimental; Ada/Hopper GPUs; pays only with --compile at large batches: 112 clips/s at batch 64 on an H200 with --compile --cuda-graph; benchmarks/sample_speed.py measured 107-108 on an H100)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (generate(compile=True))")
    p.add_argument("--cuda-graph", action="store_true", help="(CUDA) capture the whole sampling loop as one CUDA graph")
    p.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: the model's)")
    p.add_argument("--guidance", default=None, metavar="NAME[,ARG=VALUE...]", help="a GUIDANCE rule replacing the model's, as `generate --guidance` takes it (default: the model's)")
    p.add_argument("--cfg-scale", type=float, default=None, help="final CFG scale (default: the model's; 0 samples the unconditional logits alone, one row per step)")
    p.add_argument(
        "--guidance-every", type=int, default=1, metavar="N",
        help="every condition set of the guidance rule at every N-th step only (generate(guidance_every=N), an approximation; default 1: the paper's sampler)",
    )  # fmt: skip
    p.add_argument("--runs", type=int, default=5, help="timed calls per batch size (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compiling and graph capture happen there)")
    p.add_argument("--decode", action="store_true", help="also time token map -> mel -> waveform")
    p.add_argument("--markdown", action="store_true", help="print GitHub tables")
    return p


def _model_last(argv: list[str]) -> list[str]:
    """`bench --batch 1 16 PRESET`: argparse gives PRESET to --batch (nargs "+"); it is the model."""
    if "--batch" not in argv:
        return argv
    i = argv.index("--batch") + 1
    j = i
    while j < len(argv) and not argv[j].startswith("-"):
        j += 1
    values = argv[i:j]
    extra = [v for v in values if not v.lstrip("+").isdigit()]
    if len(extra) == 1 and values[-1] == extra[0] and j - i > 1:
        return [extra[0], *argv[: j - 1], *argv[j:]]
    return argv


def _check(args: argparse.Namespace) -> None:
    from controlfoley.errors import ConfigError

    bad = [f"--batch {b}" for b in args.batch if b < 1]
    bad += [f"--{k} {v}" for k, v in (("runs", args.runs), ("steps", args.steps), ("guidance-every", args.guidance_every)) if v is not None and v < 1]
    bad += [f"--warmup {args.warmup}"] if args.warmup < 0 else []
    if bad:
        raise ConfigError(f"{', '.join(bad)}: batch sizes, runs, steps and guidance-every must be >= 1 and warmup >= 0")


def _device(spec: str) -> Any:
    import torch

    from controlfoley.errors import ConfigError

    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError(f"--device {spec!r} is not a torch device ({e}); use cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}, but torch sees no usable CUDA GPU here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps, but MPS is not available here; use --device cpu")
    return device


def bench_main(argv: Sequence[str]) -> int:
    # The process runs as the user's would: no OMP_WAIT_POLICY of its own (benchmarks/ sets PASSIVE
    # for steadier ratios on shared machines; that made small models up to 1.7x slower here).
    args = _parser().parse_args(_model_last(list(argv)))
    from controlfoley.errors import ConfigError, ControlFoleyError, RegistryError, one_line
    from controlfoley.model import checked_guidance_every

    try:
        _check(args)
        device = _device(args.device)
        if args.cuda_graph and device.type != "cuda":
            raise ConfigError("--cuda-graph needs a CUDA device (--device cuda)")
        model, label = _load(args.model, args.precision, device, args.overrides)
        guidance = _rule(model, args.guidance)
        # 1, with one warning, for a rule of one condition set: the label then says what runs
        args.guidance_every = checked_guidance_every(args.guidance_every, guidance)
        settings = _settings(args, device, model, guidance)
        rows = _run(model, args, device, guidance)
    except (ControlFoleyError, ConfigError, RegistryError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{environment(device)}\n{label}: {settings}", flush=True)
    if args.warmup == 0 and (args.compile or args.cuda_graph):
        print("note: --warmup 0 with --compile / --cuda-graph: the first timed call compiles or captures, and min s is the steady state", flush=True)
    headers = ["batch", "median s", "min s", "CPU s", "s per clip", "clips/s", "s per s audio"]
    if args.decode:
        headers += ["decode s per clip", "vocoder s per clip"]
    print_table(headers, rows, markdown=args.markdown)
    return 0


def _load(spec: str, precision: str, device: Any, overrides: list[str] | None = None) -> tuple[Any, str]:
    """The model on `device`; with bf16-weights its sampling parts in bf16, as the pipeline does; with
    fp8 those parts' block linears then swapped for static-scale fp8 ones (`quantize_fp8`)."""
    from controlfoley.cli import model_from_arg
    from controlfoley.pipeline import sampling_parts_to_bf16
    from controlfoley.quantize import quantize_fp8

    from controlfoley.config import parse_overrides

    built, label = model_from_arg(spec, parse_overrides(overrides or []))
    model = cast("SpecMaskFoley", built).eval().to(device)  # model_from_arg's model (`object` there: light imports)
    if precision in ("bf16-weights", "fp8"):
        sampling_parts_to_bf16(model)
    if precision == "fp8":  # a ConfigError (exit 2) on a GPU without fp8 tensor cores
        quantize_fp8(model, granularity="static")
    return model, label


def _rule(model: Any, spec: str | None) -> Any:
    """The model's guidance rule, or `NAME[,ARG=VALUE...]` built from the GUIDANCE registry."""
    if spec is None:
        return model.resolve_guidance(None)
    from controlfoley._registry import GUIDANCE
    from controlfoley.config import parse_spec
    from controlfoley.errors import ConfigError

    try:
        name, kwargs = parse_spec(spec)
    except ValueError as e:
        raise ConfigError(f"--guidance {e}") from e
    return GUIDANCE.build(name, **kwargs)


def _settings(args: argparse.Namespace, device: Any, model: Any, guidance: Any) -> str:
    import torch

    from controlfoley.fast import sampling_dtype
    from controlfoley.model import param_dtype
    from controlfoley.pipeline import PRECISIONS

    steps = args.steps or model.sampler.steps
    scale = "" if args.cfg_scale is None else f", final scale {args.cfg_scale:g}"
    parts = [f"{steps} steps", f"guidance {guidance}{scale}"]
    if args.guidance_every > 1:
        parts.append(f"guidance_every={args.guidance_every} (every condition set at one guided step in {args.guidance_every})")
    dt = sampling_dtype(device, PRECISIONS.get(args.precision), param_dtype(model.backbone, torch.float32))  # what generate will run in
    dt_name = str(dt).removeprefix("torch.")
    parts.append(f"precision {args.precision} (" + (f"float8_e4m3fn block linears, static scales; {dt_name} elsewhere)" if args.precision == "fp8" else f"{dt_name})"))
    parts += [name for name, on in (("compile", args.compile), ("cuda graph", args.cuda_graph)) if on]
    parts.append(f"median of {args.runs} after {args.warmup} warm-up call(s)")
    return ", ".join(parts)


def _run(model: Any, args: argparse.Namespace, device: Any, guidance: Any) -> list[list[str]]:
    import torch

    from controlfoley.pipeline import PRECISIONS

    steps = args.steps or model.sampler.steps
    seconds = model.n_samples / model.sample_rate
    kw: dict[str, Any] = {"steps": steps, "guidance": guidance, "cfg_scale": args.cfg_scale, "compile": args.compile, "cuda_graph": args.cuda_graph,
        "guidance_every": args.guidance_every,
    }  # fmt: skip
    if PRECISIONS.get(args.precision) is not None:  # None (auto, bf16-weights, fp8): generate's own default for this model
        kw["dtype"] = PRECISIONS[args.precision]
    rows = []
    for batch in args.batch:
        all_feats, text = random_inputs(model, batch)
        feats = (all_feats or None) if guidance.needs_video else None  # only what the rule reads (generate warns of the rest)
        text = text if guidance.needs_text else None
        out: dict[str, Any] = {}

        def call(feats: Any = feats, text: Any = text, batch: int = batch) -> None:
            size = None if feats is not None or text is not None else batch
            gen = torch.Generator(device).manual_seed(0)
            out["codes"] = model.generate(feats, text, batch_size=size, generator=gen, **kw)

        t = time_interleaved({"generate": call}, warmup=args.warmup, runs=args.runs, device=device)["generate"]
        wall = median(t.wall)
        row = [str(batch), fmt(wall), fmt(min(t.wall)), fmt(median(t.cpu)), fmt(wall / batch), fmt(batch / wall), fmt(wall / (batch * seconds))]
        if args.decode:
            codes = out["codes"]
            mel = model.decode(codes)
            with torch.inference_mode():
                d = time_interleaved({"decode": lambda: model.decode(codes), "vocoder": lambda: model.vocode(mel)}, warmup=1, runs=args.runs, device=device)
            row += [fmt(median(d["decode"].wall) / batch), fmt(median(d["vocoder"].wall) / batch)]
        rows.append(row)
    return rows
