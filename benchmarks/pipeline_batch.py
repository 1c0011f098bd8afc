"""Videos per second of `FoleyPipeline` over several videos, sampled one at a time and in batches.

The same N synthetic-world videos (features read once, before timing) go through
`FoleyPipeline.generate_many(..., batch_size=B)` for each B given; batch 1 is the reference, timed
in the same run, interleaved (every round runs every batch size once). Timed: token sampling of
every window, decode (tokens -> mel) and the vocoder (mel -> waveform), i.e. everything after
feature extraction. Also checked, not timed: every batch size gives each video the tokens batch 1
gives it (the pipeline's promise; "tokens = batch 1" in the table).

    # the shipped synthetic model (trained weights), 8 videos of 6 s, on this machine's device
    .venv/bin/python benchmarks/pipeline_batch.py --batch 1 4 8
    # the paper preset (random weights: speed only), on a GPU
    .venv/bin/python benchmarks/pipeline_batch.py --preset specmaskfoley --videos 16 --seconds 10 --batch 1 16 --device cuda
"""

import _common  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from _common import environment, fmt, median, print_table, time_interleaved


def _pipeline(args: argparse.Namespace):  # noqa: ANN202
    from controlfoley import build_model
    from controlfoley.pipeline import FoleyPipeline
    from controlfoley.pipeline_parts import feature_dims

    if args.preset is None:
        return FoleyPipeline.from_pretrained(args.model, map_location=args.device, progress=False, precision=args.precision)
    import logging

    logging.getLogger("controlfoley.pipeline").setLevel(logging.ERROR)  # random weights: "the waveform peaks beyond full scale" per video
    torch.manual_seed(0)
    model = build_model(args.preset).to(args.device).eval()
    dims = feature_dims(model.control_encoder)  # the synthetic world's extractors, sized to the model (random weights: speed only)
    extractors = {k: (f"synthetic_{k}", {"dim": dims[k]}) for k in model.control_encoder.required_features}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights on purpose
        return FoleyPipeline(
            model, extractors, ("synthetic_clap", {"dim": int(model.backbone.cond_dim)}), vocoder="griffinlim", progress=False, precision=args.precision
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="specmaskfoley_synthetic", help="a checkpoint or a preset that ships weights (default: the shipped synthetic model)")
    p.add_argument("--preset", default=None, help="instead of --model: a preset built with random weights (speed only)")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0, help="length of each synthetic video")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], help="batch sizes; 1 is always run (the reference)")
    p.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: the model's)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "bf16-weights"))
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4

    pipe = _pipeline(args)
    world = SyntheticWorld()
    with tempfile.TemporaryDirectory() as d:
        paths = [write_clip_mp4(world.clip(1000 + i, duration_s=args.seconds), Path(d) / f"v{i}.mp4") for i in range(args.videos)]
        inputs = [pipe.read_features(v) for v in paths]
    seeds = list(range(args.videos))
    sizes = sorted({1, *args.batch})
    got: dict[int, list] = {}

    def run(b: int):  # noqa: ANN202
        return lambda: got.__setitem__(b, pipe.generate_many(inputs, seed=seeds, steps=args.steps, batch_size=b))

    print(environment(args.device))
    windows = sum(len(pipe.plan(d).windows) for _, d in inputs)
    print(f"model {pipe.model.config.name}, {args.videos} videos of {args.seconds:g} s ({windows} windows), precision {args.precision}", flush=True)
    times = time_interleaved({f"batch {b}": run(b) for b in sizes}, warmup=args.warmup, runs=args.runs, device=args.device)
    ref = median(times["batch 1"].wall)
    rows = []
    for b in sizes:
        t = median(times[f"batch {b}"].wall)
        same = all(torch.equal(x.codes, y.codes) for x, y in zip(got[1], got[b], strict=True))
        rows.append((b, fmt(t / args.videos), f"{args.videos / t:.2f}", f"{ref / t:.2f}x", "yes" if same else "NO"))
    print_table(("batch", "s per video", "videos/s", "vs batch 1", "tokens = batch 1"), rows, markdown=args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
