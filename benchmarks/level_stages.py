"""Where the shipped synthetic model's output loses level: the RMS level (dBFS) of the same held-out
clips after each stage of the chain, and of generation under a few sampler settings.

Stages, each on the true clips' audio or features:
  1. the true waveform;
  2. copy synthesis: waveform -> the model's mel -> its vocoder (no tokenizer);
  3. the tokenizer round trip: mel -> tokens -> decoded mel -> vocoder;
  4. generation: video features + tag prompt -> tokens (the model's sampler, one generator per clip
     seeded 1000 + k, as `score_synthetic`) -> decoded mel -> vocoder;
  then 4 again with other sampler settings (`--settings`, names of SETTINGS: cfg0 / cfg5 the
  final CFG scale 0 or 5 instead of 3; const3 multi-CFG at a constant scale 3 instead of the
  paper's linear ramp; temp0 greedy confidence order; steps24 24 MaskGIT steps).

"pooled" is the level of the pooled energy (what `evaluate_clips` reports as generated_dbfs);
"per clip" the mean and spread of each clip's own level. Each row also gives the mel-domain
power of what the vocoder was given, 10 log10 mean(mel magnitude^2), so a loss in the vocoder
shows as a gap between that column and the level.

    .venv/bin/python benchmarks/level_stages.py --clips 40                 # about 4 min on 2 cores
    .venv/bin/python benchmarks/level_stages.py --clips 16 --settings cfg5 const3 temp0
"""

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import math
from typing import Any

import numpy as np
import torch

from controlfoley import from_pretrained
from controlfoley.bench import environment
from controlfoley.data.synthetic import SyntheticWorld
from controlfoley.evaluation import level_dbfs
from controlfoley.evaluation_runs import CLIP_SEED, clip_inputs
from controlfoley.guidance import MultiCFG

SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "cfg0": {"cfg_scale": 0.0},
    "cfg5": {"cfg_scale": 5.0},
    "const3": {"guidance": MultiCFG(3.0, "constant")},  # the shipped model's rule at a constant scale
    "temp0": {"temperature": 0.0},
    "steps24": {"steps": 24},
}


def pooled(levels: list[float]) -> float:
    """The level of the pooled energy: 10 log10 of the mean of the clips' mean squares."""
    return 10.0 * math.log10(float(np.mean([10.0 ** (v / 10.0) for v in levels])))


def mel_power_db(model: Any, mel: torch.Tensor) -> float:
    """10 log10 of the mean squared mel magnitude of a normalised mel batch."""
    mag = torch.exp(model.mel.denormalize(mel.float()))
    return float(10.0 * torch.log10((mag**2).mean()))


def generate(model: Any, features: dict[str, torch.Tensor], text: torch.Tensor, batch: int, **kw: Any) -> torch.Tensor:
    """Tokens for every clip, clip k drawn from its own generator (seeded CLIP_SEED + k)."""
    out = []
    for i in range(0, text.shape[0], batch):
        n = min(batch, text.shape[0] - i)
        gens = [torch.Generator(model.device).manual_seed(CLIP_SEED + k) for k in range(i, i + n)]
        f = {k: v[i : i + n] for k, v in features.items()}
        out.append(model.generate(f, text[i : i + n], batch_size=n, generator=gens, **kw))
    return torch.cat(out)


def row(name: str, wavs: torch.Tensor, mel: torch.Tensor | None, model: Any) -> dict[str, Any]:
    levels = [level_dbfs(w) for w in wavs]
    r = {"stage": name, "pooled dBFS": pooled(levels), "per clip mean": float(np.mean(levels)), "per clip sd": float(np.std(levels))}
    r["mel power dB"] = mel_power_db(model, mel) if mel is not None else math.nan
    print(f"{name:<44} pooled {r['pooled dBFS']:7.2f}  per clip {r['per clip mean']:7.2f} +- {r['per clip sd']:5.2f}  mel power {r['mel power dB']:7.2f}", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=40, help="held-out test clips (the split score_synthetic uses)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--settings", nargs="*", default=[], choices=sorted(SETTINGS), help="generation settings besides the model's own")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    print(environment(torch.device("cpu")))
    torch.manual_seed(0)
    m = from_pretrained("specmaskfoley_synthetic")
    world = SyntheticWorld(seed=0, duration_s=m.n_samples / m.sample_rate, sample_rate=m.sample_rate)
    clips = [world.clip(i) for i in world.split("test", args.clips)]
    features, text = clip_inputs(clips)
    wav = torch.stack([torch.as_tensor(c.audio[: m.n_samples]).float() for c in clips])
    rows = []
    with torch.no_grad():
        mel = m.mel(wav)
        rows.append(row("1 true waveform", wav, mel, m))
        rows.append(row("2 copy synthesis (mel -> vocoder)", m.vocode(mel), mel, m))
        mel3 = m.decode(m.encode_audio(wav))
        rows.append(row("3 tokenizer round trip", m.vocode(mel3), mel3, m))
        for name in ["default", *[s for s in args.settings if s != "default"]]:
            mel4 = m.decode(generate(m, features, text, args.batch, **SETTINGS[name]))
            rows.append(row(f"4 generation ({name})", m.vocode(mel4), mel4, m))
    if args.markdown:
        print("\n| stage | pooled dBFS | per clip mean ± sd | mel power dB |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['stage']} | {r['pooled dBFS']:.2f} | {r['per clip mean']:.2f} ± {r['per clip sd']:.2f} | {r['mel power dB']:.2f} |")


if __name__ == "__main__":
    main()
