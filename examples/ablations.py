"""Compose the paper's ablations in code: aligner, guidance rule, ControlNet depth and sampling steps.

Every variant is one `build_model` call on top of a preset; the configs are printed so the
difference from the base is visible. With `--weights PATH` the variants share trained weights
(aligner changes need their own training; guidance and steps do not).

Run:  python examples/ablations.py [--weights specmaskfoley_synthetic]
"""

import argparse

from controlfoley import build_model, from_pretrained
from controlfoley.errors import CheckpointError
from controlfoley.presets import get_preset

VARIANTS = {
    "paper (FT-Aligner, multi-CFG)": {},
    "plain 1-D aligner": {"aligner": "plain1d"},
    "CFG w/o text&video (video only)": {"guidance": "cfg_video"},
    "CFG w/o video (text&video only)": {"guidance": "cfg_text_video"},
    "ControlNet of 6 blocks": {"controlnet": {"n_blocks": 6}},
    "interval injection (SD3 style)": {"controlnet": {"injection": "interval"}},
    "16 steps": {"sampler": {"steps": 16}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="specmaskfoley_tiny")
    ap.add_argument("--weights", default=None, help="a checkpoint, or a preset that ships weights (specmaskfoley_synthetic)")
    args = ap.parse_args()
    base = get_preset(args.preset) if args.weights is None else from_pretrained(args.weights).config
    for label, overrides in VARIANTS.items():
        cfg = base.override(**overrides)
        if args.weights is None:
            model = build_model(cfg)
            status = ""
        else:
            try:
                # strict: every key and shape must match; a part switched to another builder whose weights
                # still fit loads them, with a warning (they were trained for the other part)
                model = from_pretrained(args.weights, **overrides)
                retrain = [k for k in ("aligner", "controlnet") if k in overrides]
                status = "weights loaded" + (f", but trained for another {retrain[0]}: retrain it" if retrain else "")
            except CheckpointError:
                model = build_model(cfg)
                status = "weights do not fit: train this variant"
        n_train = sum(p.numel() for m in model.control_modules() for p in m.parameters())
        print(f"{label:<34} aligner={cfg.aligner.name:<8} guidance={cfg.guidance.name:<15} "
              f"controlnet={dict(cfg.controlnet.kwargs)} steps={cfg.sampler.steps} control params={n_train / 1e6:.2f}M  {status}")


if __name__ == "__main__":
    main()
