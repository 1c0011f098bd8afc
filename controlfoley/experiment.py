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
about a minute (used by the tests; its numbers mean nothing). A folder holds one scale: a finished
stage is reused only when it was made with the settings this run would use (otherwise the command
stops and says so: use another --out, or delete the folder), and `--install-weights` needs `--scale full`.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from controlfoley._io import atomic_write_text, check_writable_folder
from controlfoley.errors import ConfigError, ControlFoleyError, RegistryError, one_line

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
MARKER = "experiment.json"  # <out>/experiment.json: the scale of the experiment in that folder (written when it finishes)
# Train-config fields that do not decide what a run makes: operational ones (as on --resume) and the
# folders, so that a moved --out folder is still recognised (the stages in it are checked one by one).
_PLACE_FIELDS = ("out", "init")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _differences(made: Any, want: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, recorded value, value now) for every leaf value that differs."""
    if isinstance(made, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(made) | set(want), key=str):
            out += _differences(made.get(k), want.get(k), f"{key}.{k}" if key else str(k))
        return out
    return [] if made == want else [(key, made, want)]


def _short(value: Any, width: int = 40) -> str:
    text = "(none)" if value is None else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _refuse(folder: Path, what: str, made_with: str, diffs: list[tuple[str, Any, Any]], root: Path, scale_name: str) -> ConfigError:
    shown = ", ".join(f"{k} {_short(a)} (now {_short(b)})" for k, a, b in diffs[:4])
    more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
    why = f": {shown}{more}" if diffs else ""
    return ConfigError(
        f"{folder} holds {what} made with {made_with}, not with the settings of --scale {scale_name}{why}; it cannot be "
        f"reused. Use another --out, or delete {root} to run every stage again at --scale {scale_name}"
    )


def _check_same(folder: Path, what: str, made: dict[str, Any] | None, want: dict[str, Any], *, recorded_scale: str | None, root: Path, scale_name: str) -> None:
    """Refuse a stage made with other settings. Only the fields both sides know are compared (a field
    added to the code later is not a difference); `made` None means nothing readable was recorded."""
    if made is None:
        raise _refuse(folder, what, "settings it does not record", [], root, scale_name)
    common = [k for k in made if k in want]
    diffs = _differences({k: made[k] for k in common}, {k: want[k] for k in common})
    if diffs or (recorded_scale is not None and recorded_scale != scale_name):
        made_with = f"--scale {recorded_scale}" if recorded_scale is not None else "other settings"
        raise _refuse(folder, what, made_with, diffs, root, scale_name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _run_settings(cfg_json: str) -> dict[str, Any]:
    """What decides a training run's model (shapes included) and its training: every TrainConfig field
    but the operational ones and the folders."""
    from controlfoley.train.config import RESUME_MUTABLE

    return {k: v for k, v in json.loads(cfg_json).items() if k not in RESUME_MUTABLE and k not in _PLACE_FIELDS}


def _check_run(out: Path, recipe: str, want: dict[str, Any], root: Path, scale_name: str) -> bool:
    """True when `out` holds this run finished; False when it is to be (re)started or resumed; a
    ConfigError when it holds a run made with other settings."""
    from controlfoley.train.config import TrainConfig

    done, config = out / "done.json", out / "config.json"
    if not done.is_file() and not config.is_file():
        return False
    marker = _read_json(done) if done.is_file() else None
    if isinstance(marker, dict) and isinstance(marker.get("settings"), dict):
        made, scale = marker["settings"], marker.get("scale")
    else:
        # An unfinished run, or one finished before done.json recorded its settings: its config.json
        # (written when the run starts) holds every field that decides it, so it is compared as exactly
        # as a new marker; only without a readable config.json are its settings unknown (refused).
        made, scale = None, None
        if config.is_file():
            try:
                made = _run_settings(TrainConfig.from_json(config.read_text(encoding="utf-8")).to_json())
            except (OSError, ValueError):  # ConfigError is a ValueError
                made = None
    what = f"a {recipe} run" if done.is_file() else f"an unfinished {recipe} run"
    _check_same(out, what, made, want, recorded_scale=scale, root=root, scale_name=scale_name)
    return done.is_file()


def _train(
    recipe: str, preset: str, data: Path, out: Path, steps: int, batch: int, overrides: dict[str, Any], *, scale_name: str, **extra: Any
) -> Path:
    from controlfoley.train.config import TrainConfig
    from controlfoley.train.loop import train

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
    settings = _run_settings(cfg.to_json())
    if _check_run(out, recipe, settings, out.parent, scale_name):
        _log(f"{recipe} run in {out} already finished (same settings); reusing it")
        return out
    resume = (out / "config.json").is_file()
    _log(f"training {recipe} ({preset}) into {out} for {steps} steps at batch {batch}{' (resuming)' if resume else ''}")
    metrics = train(cfg, resume=resume)
    # what made the run, so that a later command reuses it only with the same settings
    atomic_write_text(out / "done.json", json.dumps({"scale": scale_name, "settings": settings, "metrics": metrics}, default=str))
    return out


# index.json fields that do not decide the data: where the tokenizer was (its run is checked itself)
# and the source line (its clip count is compared as n_clips)
_DATA_PLACE_FIELDS = ("tokenizer", "source")


def _check_data(folder: Path, ex: Any, n: int, root: Path, scale_name: str) -> None:
    """Refuse a finished extraction made with other settings. index.json records the model config (the
    token grid and codebook included), the features and the clip count, whenever it was written."""
    index = _read_json(folder / "index.json")
    made = None
    if isinstance(index, dict) and isinstance(index.get("info"), dict):
        made = {k: v for k, v in index["info"].items() if k not in _DATA_PLACE_FIELDS} | {"n_clips": index.get("n_clips")}
    want = json.loads(json.dumps({k: v for k, v in ex.info("").items() if k not in _DATA_PLACE_FIELDS}, default=str)) | {"n_clips": n}
    _check_same(folder, "a dataset", made, want, recorded_scale=None, root=root, scale_name=scale_name)


def _check_interrupted(folder: Path, ex: Any, source: str, root: Path, scale_name: str) -> None:
    """Refuse to resume an interrupted extraction made with other settings (e.g. at another scale),
    naming the folder, before the shard writer refuses it with advice for `controlfoley extract`."""
    from controlfoley.data.shards import PROGRESS_FILE

    progress = _read_json(folder / PROGRESS_FILE)
    made = progress.get("info") if isinstance(progress, dict) and isinstance(progress.get("info"), dict) else None
    want = json.loads(json.dumps(ex.info(source), default=str))
    _check_same(folder, "an interrupted extraction", made, want, recorded_scale=None, root=root, scale_name=scale_name)


def _extract(out: Path, scale: Scale, overrides: dict[str, Any], tokenizer: Path | None, mel_only: bool, *, scale_name: str) -> Path:
    from controlfoley.data.extract import Extraction, extract_synthetic, synthetic_source
    from controlfoley.data.shards import INDEX_FILE, PROGRESS_FILE

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
        if (out / split / INDEX_FILE).is_file():
            _check_data(out / split, ex, n, out.parent, scale_name)
            continue
        resume = (out / split / PROGRESS_FILE).is_file()  # an interrupted extraction continues from its last shard
        if resume:
            _check_interrupted(out / split, ex, synthetic_source(0, split, n), out.parent, scale_name)
        _log(f"extracting {n} {split} clips into {out / split}{' (resuming)' if resume else ''}")
        extract_synthetic(out / split, ex, n_clips=n, split=split, batch_size=16, resume=resume)
    return out


def _check_folder(out: Path, scale_name: str) -> None:
    """Before any stage: --out can be written, and holds no experiment finished at another scale."""
    check_writable_folder(out, "--out")
    marker = _read_json(out / MARKER) if (out / MARKER).is_file() else None
    made = marker.get("scale") if isinstance(marker, dict) else None
    if made is not None and made != scale_name:
        raise ConfigError(
            f"{out} holds the synthetic experiment at --scale {made}; its stages have other model shapes and sizes than "
            f"--scale {scale_name} needs and cannot be reused. Use another --out, or delete {out} to start again at --scale {scale_name}"
        )


def _check_results_target(results: str | Path | None, scale_name: str) -> None:
    """Before any stage: `--results` may not replace a table of another scale (the committed
    benchmarks/SYNTHETIC.md is `full`; a smoke run's numbers mean nothing)."""
    if results is None or not Path(results).is_file():
        return
    try:
        first = Path(results).read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return  # not one of ours: written over as asked
    for other in SCALES:
        if other != scale_name and f"scale `{other}`" in first:
            raise ConfigError(
                f"--results {results} holds the --scale {other} results; this --scale {scale_name} run would replace them. "
                f"Write them elsewhere (--results another.md), or delete {results} first"
            )


def run_synthetic(out: str | Path, scale_name: str = "full", *, results: str | Path | None = None, install_weights: bool = False) -> dict[str, Any]:
    """Run every stage (each resumes or is skipped when its output exists) and return the results.

    A stage found in `out` is reused only if it was made with the settings of this scale; one made
    with others is a ConfigError naming the folder (use another `out`, or delete it)."""
    from controlfoley.evaluation_runs import evaluate_variants, write_results

    if scale_name not in SCALES:
        raise ConfigError(f"unknown scale {scale_name!r}; choose one of {', '.join(sorted(SCALES))}")
    if install_weights and scale_name != "full":
        from controlfoley.presets import ASSETS, PRETRAINED

        raise ConfigError(
            f"--install-weights replaces the shipped specmaskfoley_synthetic weights ({ASSETS / PRETRAINED['specmaskfoley_synthetic']}), "
            f"which the demo and from_pretrained load, with the FT model this run trains; a --scale {scale_name} model is too "
            "small and short-trained to replace them. Drop --install-weights, or use --scale full"
        )
    scale = SCALES[scale_name]
    out = Path(out)
    _check_results_target(results, scale_name)
    _check_folder(out, scale_name)
    ov = dict(scale.model_overrides)
    torch.manual_seed(0)
    t0 = time.time()
    mel_data = _extract(out / "data_mel", scale, ov, None, mel_only=True, scale_name=scale_name)
    # The recipes' LR rule (base_lr x batch / reference batch) at the small CPU batch of the tokenizer
    # would give 2.5e-5; base_lr is raised so the peak LR is 2e-4 (the VQGAN range) for a short run.
    tok_lr = 2e-4 * 32 / scale.tok_batch
    # Codebook restarts every 10 steps over the first 60% keep the small codebook from collapsing.
    tok_run = _train(
        "tokenizer", PRESET, mel_data, out / "run_tokenizer", scale.tok_steps, scale.tok_batch, ov,
        base_lr=tok_lr, lr_reference_batch=32, codebook_restart_every=10, codebook_restart_until=int(0.6 * scale.tok_steps),
        scale_name=scale_name,
    )  # fmt: skip
    data = _extract(out / "data", scale, ov, tok_run, mel_only=False, scale_name=scale_name)
    bb_ov = {k: v for k, v in ov.items() if k in ("tokenizer", "backbone")}
    bb_run = _train("backbone", BACKBONE_PRESET, data, out / "run_backbone", scale.bb_steps, scale.bb_batch, bb_ov, init=str(tok_run), scale_name=scale_name)
    cn_runs = {}
    for aligner in ("ft", "plain1d"):
        cn_runs[aligner] = _train(
            "controlnet", PRESET, data, out / f"run_controlnet_{aligner}", scale.cn_steps, scale.cn_batch,
            {**ov, "aligner": aligner}, init=str(bb_run), scale_name=scale_name,
        )  # fmt: skip
    train_s = time.time() - t0
    _log(f"training done in {train_s / 60:.1f} min; evaluating on {scale.n_test} held-out clips")
    report = evaluate_variants(bb_run, cn_runs, n_test=scale.n_test)
    report["train_minutes"] = round(train_s / 60, 1)
    report["scale"] = scale_name
    write_results(report, out, results)
    atomic_write_text(out / MARKER, json.dumps({"experiment": "synthetic", "scale": scale_name}))
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
    try:
        report = run_synthetic(args.out, args.scale, results=args.results, install_weights=args.install_weights)
    except (ControlFoleyError, ConfigError, RegistryError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(report["table"])
    return 0
