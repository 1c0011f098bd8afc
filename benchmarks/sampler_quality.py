"""What cheaper samplers cost in quality: the trained synthetic model (`specmaskfoley_synthetic`)
sampled with the paper's sampler (12 MaskGIT steps, multi-CFG at every step) and with cheaper
settings, scored on held-out clips of the synthetic world with the metrics of
benchmarks/SYNTHETIC.md.

The cheaper settings, each paired with its like in cost:
- `guidance_every=N` (`SpecMaskFoley.generate`): every condition set runs at every N-th guided
  step only; in between only the fully conditioned set runs and the others are reused from the
  last step that ran them, shifted by the conditioned set's change (`controlfoley.fast.GuidedStep`).
- fewer MaskGIT steps: the one lever the paper ablates (Fig. 3).

Cost is counted, not estimated: forward hooks on every backbone and ControlNet block add up the
rows each block ran ("block-rows per clip"; the paper preset costs ~4 GFLOP per block-row, the
same for every row, so the column is proportional to the arithmetic). A second seed of the paper's
sampler gives the seed-to-seed spread, the noise floor the other rows are read against.

Usage: python benchmarks/sampler_quality.py [--n-test 120] [--batch 8] [--seeds 2] [--markdown]
"""

import argparse
import time

from _common import environment, fmt, print_table  # first: sets OMP_WAIT_POLICY

import torch
from controlfoley import from_pretrained
from controlfoley.data.synthetic import SyntheticWorld
from controlfoley.evaluation import evaluate_clips
from controlfoley.evaluation_runs import clip_inputs

# name -> generate() settings
VARIANTS: dict[str, dict] = {
    "12 steps (paper)": {},
    "12 steps, guidance_every=2": {"guidance_every": 2},
    "9 steps": {"steps": 9},
    "12 steps, guidance_every=3": {"guidance_every": 3},
    "8 steps": {"steps": 8},
    "12 steps, guidance_every=4": {"guidance_every": 4},
    "7 steps": {"steps": 7},
    # the settings of the CPU bf16 numbers in RESULTS.md (bf16 autocast, as sample_speed's library_bf16)
    "12 steps (paper), bf16": {"dtype": torch.bfloat16},
    "12 steps, bf16, guidance_every=3": {"dtype": torch.bfloat16, "guidance_every": 3},
}


class BlockRows:
    """Counts the rows every ViT block of the backbone and the ControlNet runs (forward hooks)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows = 0
        blocks = list(model.backbone.blocks) + (list(model.controlnet.blocks) if model.controlnet is not None else [])
        self._handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        self.rows += int(args[0].shape[0])

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def sample(model: torch.nn.Module, clips: list, batch: int, seed: int, settings: dict) -> tuple[torch.Tensor, list[torch.Tensor], float, float]:
    """Token maps, waveforms, CPU seconds per clip and block-rows per clip."""
    features, text = clip_inputs(clips)
    codes, wavs = [], []
    counter = BlockRows(model)
    t0 = time.perf_counter()
    try:
        for i in range(0, len(clips), batch):
            sl = slice(i, i + batch)
            g = torch.Generator().manual_seed(seed + i)
            c = model.generate({k: v[sl] for k, v in features.items()}, text[sl], generator=g, **settings)
            codes.append(c)
            wavs.extend(model.vocode(model.decode(c)).float())
    finally:
        counter.close()
    return torch.cat(codes), wavs, (time.perf_counter() - t0) / len(clips), counter.rows / len(clips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-test", type=int, default=120, help="held-out clips of the synthetic world")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2, help="sampling seeds per variant; metrics are their mean, the spread is printed")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--variants", nargs="+", default=None, help=f"a subset of: {', '.join(VARIANTS)} (the paper's always runs)")
    args = ap.parse_args()
    unknown = set(args.variants or ()) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    print(environment(torch.device("cpu")), flush=True)
    model = from_pretrained("specmaskfoley_synthetic").eval()
    world = SyntheticWorld(seed=0, duration_s=model.n_samples / model.sample_rate)
    clips = [world.clip(i) for i in world.split("test", args.n_test)]
    names = [n for n in VARIANTS if args.variants is None or n in (*args.variants, "12 steps (paper)")]
    keys = ("desync_s", "recall_any", "f1_cls", "fd")
    rows, ref, base_cost = [], {}, None
    for name in names:
        per_seed, same, secs = [], [], []
        for j in range(args.seeds):
            seed = 1000 + 100_000 * j
            codes, wavs, sec, cost = sample(model, clips, args.batch, seed, VARIANTS[name])
            if name == "12 steps (paper)":
                ref[j] = codes
                base_cost = cost if base_cost is None else base_cost
            same.append((codes == ref[j]).float().mean().item())
            n = min(w.shape[0] for w in wavs)
            per_seed.append(evaluate_clips([w[:n] for w in wavs], clips, clips[0].sample_rate))
            secs.append(sec)
        mean = {k: sum(s[k] for s in per_seed) / len(per_seed) for k in keys}
        spread = {k: max(s[k] for s in per_seed) - min(s[k] for s in per_seed) for k in keys}
        print(
            f"  {name:<28} block-rows {cost:.0f}  tokens = paper {sum(same) / len(same):.3f}  "
            + "  ".join(f"{k} {mean[k]:.3f} (+-{spread[k] / 2:.3f})" for k in keys),
            flush=True,
        )
        rows.append(
            [name, fmt(cost), fmt(cost / base_cost), fmt(sum(same) / len(same))]
            + [f"{fmt(mean[k])} ± {fmt(spread[k] / 2)}" for k in keys]
            + [fmt(sum(secs) / len(secs))]
        )
    print(f"\nspecmaskfoley_synthetic, {args.n_test} held-out clips, multi-CFG 0 -> 3, batch {args.batch}, {args.seeds} seeds (mean ± half the spread)")
    headers = ["sampler", "block-rows per clip", "cost vs paper", "tokens = paper (same seed)", *keys, "CPU s per clip"]
    print_table(headers, rows, markdown=args.markdown)


if __name__ == "__main__":
    main()
