"""`controlfoley experiment synthetic`: the learning proof on the synthetic audio-visual world.

One command trains every learned part of the tiny SpecMaskFoley with the same recipes as the
full-size model, then evaluates the paper's claims on held-out clips (docs/DESIGN.md section 3):

1. tokenizer  : SpecVQGAN recipe on mels of rendered clips;
2. extraction : tokens (with that tokenizer) + sync / clip / tag features of train, val, test clips;
3. backbone   : SpecMaskGIT masked-token pretraining with tag prompts (the CLAP role);
4. controlnet : the paper's ControlNet recipe (frozen backbone, 90% unconditional mask), once with
                the FT-Aligner and once with the plain 1-D aligner;
5. evaluation : generated waveform -> onsets, classes, DeSync analogue, P/R/F1, Frechet distance, for
                the backbone with tag prompts only, ControlNet + FT / plain1d, multi vs single CFG,
                and 4/8/12/16 sampling steps, next to references (true audio, tokenizer round trip).

Results go to `<out>/results.md` and `<out>/results.json`; `--results PATH` also writes the table
there (benchmarks/SYNTHETIC.md in the repository), and `--install-weights` stores the FT model as the
shipped `specmaskfoley_synthetic` preset weights (fp16, under 20 MB).

Scales: `--scale full` is what produced the committed results; `--scale smoke` runs every stage in
about a minute (used by the tests; its numbers mean nothing).
"""

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["SCALES", "Scale", "run_synthetic", "experiment_main"]


@dataclass(frozen=True)
class Scale:
    n_tok_clips: int  # clips whose mels train the tokenizer
    n_train: int  # clips for backbone / ControlNet training
    n_val: int
    n_test: int  # held-out clips evaluated
    tok_steps: int
    tok_batch: int
    bb_steps: int
    bb_batch: int
    cn_steps: int
    cn_batch: int
    model_overrides: tuple[tuple[str, Any], ...] = ()


SCALES = {
    "full": Scale(1024, 1600, 128, 40, 500, 8, 600, 64, 500, 64),
    "smoke": Scale(
        16, 24, 8, 4, 3, 4, 3, 8, 3, 8,
        (
            ("tokenizer", {"ch": 8, "norm_groups": 8, "z_channels": 16, "embed_dim": 16, "n_embed": 64}),
            ("backbone", {"dim": 32, "depth": 2, "heads": 2, "ffn_dim": 64}),
            ("controlnet", {"n_blocks": 1}),
        ),
    ),
}  # fmt: skip

PRESET = "specmaskfoley_tiny"
BACKBONE_PRESET = "specmaskgit_tiny"
EXTRACTORS = ("synthetic_sync", "synthetic_clip")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _train(recipe: str, preset: str, data: Path, out: Path, steps: int, batch: int, overrides: dict[str, Any], **extra: Any) -> Path:
    from controlfoley.train.config import TrainConfig
    from controlfoley.train.loop import train

    if (out / "done.json").is_file():
        _log(f"{recipe} run in {out} already finished; reusing it")
        return out
    cfg = TrainConfig.for_recipe(
        recipe,
        preset=preset,
        data=str(data / "train"),
        val_data=str(data / "val"),
        out=str(out),
        model_overrides=overrides,
        steps=steps,
        batch_size=batch,
        warmup_steps=max(1, steps // 20),
        val_every=max(1, steps // 4),
        ckpt_every=max(1, steps // 4),
        log_every=max(1, steps // 50),
        keep_last=1,
        num_workers=0,
        **extra,
    )
    resume = (out / "config.json").is_file()
    _log(f"training {recipe} ({preset}) for {steps} steps at batch {batch}{' (resuming)' if resume else ''}")
    metrics = train(cfg, resume=resume)
    (out / "done.json").write_text(json.dumps(metrics, default=str), encoding="utf-8")
    return out


def _extract(out: Path, scale: Scale, overrides: dict[str, Any], tokenizer: Path | None, mel_only: bool) -> Path:
    from controlfoley.data.extract import Extraction, extract_synthetic

    ex = Extraction(
        PRESET,
        extractors=() if mel_only else EXTRACTORS,
        clap=None if mel_only else "synthetic_clap",
        tokenizer=None if tokenizer is None else str(tokenizer),
        mel=mel_only,
        model_overrides=overrides,
    )
    splits = {"train": scale.n_tok_clips if mel_only else scale.n_train, "val": scale.n_val}
    for split, n in splits.items():
        if (out / split / "index.json").is_file():
            continue
        _log(f"extracting {n} {split} clips into {out / split}")
        extract_synthetic(out / split, ex, n_clips=n, split=split, batch_size=16)
    return out


def run_synthetic(out: str | Path, scale_name: str = "full", *, results: str | Path | None = None, install_weights: bool = False) -> dict[str, Any]:
    """Run every stage (each resumes or is skipped when its output exists) and return the results."""
    import warnings

    from controlfoley.evaluation_runs import evaluate_variants, write_results

    warnings.filterwarnings("ignore", message="no tokenizer checkpoint given")
    scale = SCALES[scale_name]
    out = Path(out)
    ov = dict(scale.model_overrides)
    torch.manual_seed(0)
    t0 = time.time()
    mel_data = _extract(out / "data_mel", scale, ov, None, mel_only=True)
    # The recipes' LR rule (base_lr x batch / reference batch) at the small CPU batch of the tokenizer
    # would give 2.5e-5; base_lr is raised so the peak LR is 2e-4 (the VQGAN range) for a short run.
    tok_lr = 2e-4 * 32 / scale.tok_batch
    # Codebook restarts every 10 steps over the first 60% keep the small codebook from collapsing.
    tok_run = _train(
        "tokenizer", PRESET, mel_data, out / "run_tokenizer", scale.tok_steps, scale.tok_batch, ov,
        base_lr=tok_lr, lr_reference_batch=32, codebook_restart_every=10, codebook_restart_until=int(0.6 * scale.tok_steps),
    )  # fmt: skip
    data = _extract(out / "data", scale, ov, tok_run, mel_only=False)
    bb_ov = {k: v for k, v in ov.items() if k in ("tokenizer", "backbone")}
    bb_run = _train("backbone", BACKBONE_PRESET, data, out / "run_backbone", scale.bb_steps, scale.bb_batch, bb_ov, init=str(tok_run))
    cn_runs = {}
    for aligner in ("ft", "plain1d"):
        cn_runs[aligner] = _train(
            "controlnet", PRESET, data, out / f"run_controlnet_{aligner}", scale.cn_steps, scale.cn_batch,
            {**ov, "aligner": aligner}, init=str(bb_run),
        )  # fmt: skip
    train_s = time.time() - t0
    _log(f"training done in {train_s / 60:.1f} min; evaluating on {scale.n_test} held-out clips")
    report = evaluate_variants(out, bb_run, cn_runs, n_test=scale.n_test)
    report["train_minutes"] = round(train_s / 60, 1)
    report["scale"] = scale_name
    write_results(report, out, results)
    if install_weights:
        from controlfoley.evaluation_runs import install_shipped_weights

        path = install_shipped_weights(cn_runs["ft"])
        _log(f"installed the FT model as the shipped weights: {path}")
    return report


def experiment_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="controlfoley experiment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=["synthetic"], help="the experiment to run")
    ap.add_argument("--out", default="runs/synthetic", help="working folder (stages resume from what is there)")
    ap.add_argument("--scale", default="full", choices=sorted(SCALES))
    ap.add_argument("--results", default=None, help="also write the markdown results table here")
    ap.add_argument("--install-weights", action="store_true", help="store the trained FT model as the shipped preset weights")
    args = ap.parse_args(argv)
    report = run_synthetic(args.out, args.scale, results=args.results, install_weights=args.install_weights)
    print(report["table"])
    return 0
