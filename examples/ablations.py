"""Compose the paper's ablations in code: aligner, guidance rule, ControlNet depth and sampling steps.

Every variant is one `build_model` call on top of a preset; the configs are printed so the
difference from the base is visible. With `--weights PATH` the variants share trained weights
(aligner changes need their own training; guidance and steps do not), and `--score N` scores each
variant whose weights loaded on N held-out clips of the synthetic world (`score_synthetic`: desync,
onset F1, FD), beside sampling-time knobs that need no new model (ControlNet strength).

Run:  python examples/ablations.py [--weights specmaskfoley_synthetic [--score 16]]
"""

import argparse

from controlfoley import build_model, from_pretrained
from controlfoley.errors import CheckpointError
from controlfoley.evaluation import format_table
from controlfoley.evaluation_runs import score_synthetic
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
# generate() settings of one model: no rebuild, no retraining
KNOBS = {
    "ControlNet at half strength": {"control_scale": 0.5},
    "no video (ControlNet off)": {"control_scale": 0.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="specmaskfoley_tiny")
    ap.add_argument("--weights", default=None, help="a checkpoint, or a preset that ships weights (specmaskfoley_synthetic)")
    ap.add_argument("--score", type=int, default=0, metavar="N", help="with --weights: score each loaded variant on N synthetic clips")
    args = ap.parse_args()
    if args.score and args.weights is None:
        ap.error("--score needs --weights (untrained variants would score noise)")
    rows = []
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
        if args.score and status == "weights loaded":  # a variant whose weights are its own: comparable
            rows.append({"variant": label, **score_synthetic(model, args.score)})
    if args.score:
        base_model = from_pretrained(args.weights)
        for label, knobs in KNOBS.items():
            rows.append({"variant": label, **score_synthetic(base_model, args.score, **knobs)})
        print()
        print(format_table(rows, ("variant", "desync_s", "f1_any", "f1_cls", "fd", "sec_per_clip")))


if __name__ == "__main__":
    main()
