"""Evaluating trained models on held-out synthetic clips: the rows of the learning-proof table.

Each variant generates audio for the same held-out clips (same seeds), from the generated waveform
(tokens -> tokenizer decoder -> mel -> vocoder) the metrics of `controlfoley.evaluation` are computed:
DeSync analogue, onset precision/recall/F1, class accuracy, Frechet distance on a fixed embedding.
Three reference rows frame the models' rows: the true audio (the best any model can score), other
clips' true audio (what real but unrelated sound scores: chance level for the onset scores, and the
FD floor of two real samples, which the first row's 0 hides), and the true audio's tokens decoded
and vocoded (the tokenizer + vocoder ceiling).
"""

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from controlfoley._io import atomic_write_text
from controlfoley._static import ModelModule

__all__ = ["score_synthetic", "evaluate_variants", "write_results", "install_shipped_weights", "load_run_model", "clip_inputs", "TABLE_COLUMNS"]

TABLE_COLUMNS = (
    "variant", "desync_s", "desync_miss_frac", "desync_hit_s", "recall_any", "precision_any", "f1_cls", "class_accuracy", "fd",
    "generated_dbfs", "sec_per_clip",
)  # fmt: skip


def load_run_model(run: str | Path, **overrides: Any) -> ModelModule:
    from controlfoley.model import from_pretrained
    from controlfoley.train.checkpoints import resolve_model_file

    return from_pretrained(resolve_model_file(run), **overrides).eval()


def clip_inputs(clips: Sequence[Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Video features (sync, clip) and text-prompt embeddings (the clips' tags as text) of held-out clips."""
    from controlfoley.data.extractors import synthetic_clap, synthetic_features

    feats = [synthetic_features(c) for c in clips]
    n_sync = min(f["sync"].shape[0] for f in feats)
    n_clip = min(f["clip"].shape[0] for f in feats)
    features = {
        "sync": torch.stack([f["sync"][:n_sync] for f in feats]),
        "clip": torch.stack([f["clip"][:n_clip] for f in feats]),
    }
    text = synthetic_clap().encode_text([c.prompt for c in clips])
    return features, text


def _generate_rows(model: ModelModule, clips: Sequence[Any], batch: int, **kw: Any) -> list[torch.Tensor]:
    features, text = clip_inputs(clips)
    rule = model.resolve_guidance(kw.get("guidance"))  # only the inputs it reads (generate says so of the others)
    wavs: list[torch.Tensor] = []
    for i in range(0, len(clips), batch):
        sl = slice(i, i + batch)
        f = {k: v[sl] for k, v in features.items()} if (model.has_control and rule.needs_video) else None
        t = text[sl] if rule.needs_text else None
        codes = model.generate(f, t, batch_size=len(text[sl]), generator=torch.Generator(model.device).manual_seed(1000 + i), **kw)
        wavs.extend(model.vocode(model.decode(codes)).float())
    return wavs


def _reconstruct(model: ModelModule, clips: Sequence[Any]) -> list[torch.Tensor]:
    wav = torch.stack([c.audio[: model.n_samples] for c in clips])
    with torch.no_grad():
        return list(model.vocode(model.decode(model.encode_audio(wav))).float())


def _scored(make: Callable[[], list[torch.Tensor]], clips: Sequence[Any]) -> dict[str, Any]:
    """The metrics of the waveforms `make()` returns for `clips` (cut to the shortest), and the
    seconds per clip it took."""
    from controlfoley.evaluation import evaluate_clips

    t0 = time.time()
    wavs = make()
    dt = (time.time() - t0) / len(clips)
    n = min(w.shape[0] for w in wavs)
    bad = [i for i, w in enumerate(wavs) if not bool(torch.isfinite(w[:n]).all())]
    if bad:  # a row of NaN, not an error that would lose the rows after it (and the runs' minutes)
        print(f"  warning: {len(bad)} of {len(clips)} generated waveforms hold NaN or Inf samples (clips {bad[:5]}); their row is n/a", flush=True)
        return {"n_clips": len(clips), "n_nonfinite": len(bad), "sec_per_clip": dt}
    return {**evaluate_clips([w[:n].cpu() for w in wavs], clips, clips[0].sample_rate), "sec_per_clip": dt}


def _row(name: str, make: Callable[[], list[torch.Tensor]], clips: Sequence[Any]) -> dict[str, Any]:
    scores = _scored(make, clips)
    if "n_nonfinite" in scores:
        return {"variant": f"{name} (not scored: {scores['n_nonfinite']} clips NaN/Inf)", **scores}
    print(f"  {name:<44} desync {scores['desync_s']:.3f} s  f1_cls {scores['f1_cls']:.3f}  fd {scores['fd']:.2f}", flush=True)
    return {"variant": name, **scores}


def score_synthetic(model: ModelModule, n_clips: int = 40, *, batch: int = 16, world_seed: int = 0, **generate_kwargs: Any) -> dict[str, Any]:
    """Score `model` on `n_clips` held-out clips of the synthetic world (the test split the shipped
    model and `controlfoley experiment` use, at the model's window): generate (each batch seeded
    1000 + its first index, so variants meet the same noise), decode, vocode, then the metrics of
    `controlfoley.evaluation.evaluate_clips` (desync, onset precision / recall / F1, class scores,
    FD). `generate_kwargs` go to `model.generate`: guidance=, steps=, cfg_scale=, control_scale=...
    Returns those scores plus `sec_per_clip`; `format_table([row, ...])` prints several.

    >>> from controlfoley import from_pretrained
    >>> m = from_pretrained("specmaskfoley_synthetic")
    >>> rows = [{"variant": g, **score_synthetic(m, 16, guidance=g)} for g in ("multi", "cfg_video")]
    """
    import numbers

    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.errors import ConfigError

    for name, v, low in (("n_clips", n_clips, 2), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {v!r}" + (" (the FD compares two sets of clips)" if name == "n_clips" else ""))
    if not getattr(model, "has_control", False):
        raise ConfigError("score_synthetic scores a model that follows video (with a ControlNet); this one is a backbone alone")
    taken = sorted({"generator", "batch_size", "features", "text"} & set(generate_kwargs))
    if taken:
        raise ConfigError(f"score_synthetic sets {', '.join(taken)} itself (the held-out clips, their seeds); leave them out")
    world = SyntheticWorld(seed=world_seed, duration_s=model.n_samples / model.sample_rate, sample_rate=model.sample_rate)
    clips = [world.clip(i) for i in world.split("test", int(n_clips))]
    was_training = model.training
    try:
        return _scored(lambda: _generate_rows(model.eval(), clips, int(batch), **generate_kwargs), clips)
    finally:
        model.train(was_training)  # scored mid-training: dropout and the rest as they were


def evaluate_variants(out: Path, bb_run: Path, cn_runs: dict[str, Path], *, n_test: int, batch: int = 16) -> dict[str, Any]:
    """Every row of the table; the FT model also gives the CFG and steps ablations."""
    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.evaluation import format_table

    ft = load_run_model(cn_runs["ft"])
    world = SyntheticWorld(seed=0, duration_s=ft.n_samples / ft.sample_rate, sample_rate=ft.sample_rate)
    clips = [world.clip(i) for i in world.split("test", n_test)]
    plain = load_run_model(cn_runs["plain1d"])
    backbone = load_run_model(bb_run)
    others = [world.clip(i) for i in world.split("val", n_test)]
    rows = [
        _row("reference: true audio", lambda: [c.audio for c in clips], clips),
        # chance: real audio of other clips, so the onset scores of unrelated sounds and the FD floor of two real samples
        _row("reference: other clips' true audio (chance)", lambda: [c.audio for c in others], clips),
        _row("reference: true tokens -> decoder -> vocoder", lambda: _reconstruct(ft, clips), clips),
        _row("backbone + tag prompt, no video (CFG text)", lambda: _generate_rows(backbone, clips, batch), clips),
        _row("ControlNet + FT-Aligner, multi-CFG, 12 steps", lambda: _generate_rows(ft, clips, batch), clips),
        _row("ControlNet + plain 1-D aligner, multi-CFG", lambda: _generate_rows(plain, clips, batch), clips),
    ]
    from controlfoley import GUIDANCE

    # defs, not lambdas with a default argument (which a type checker cannot match to a zero-argument callable)
    for label, rule in (("CFG video only (w/o l_tv)", "cfg_video"), ("CFG text&video only (w/o l_v)", "cfg_text_video"), ("no guidance (l_tv)", "none")):

        def with_rule(r: str = rule) -> list[torch.Tensor]:
            return _generate_rows(ft, clips, batch, guidance=GUIDANCE.build(r))

        rows.append(_row(f"FT, {label}", with_rule, clips))
    for steps in (4, 8, 16):

        def with_steps(s: int = steps) -> list[torch.Tensor]:
            return _generate_rows(ft, clips, batch, steps=s)

        rows.append(_row(f"FT, multi-CFG, {steps} steps", with_steps, clips))
    table = format_table(rows, TABLE_COLUMNS)
    return {"rows": rows, "table": table, "n_test": n_test, "world_seed": 0, "batch": batch}


def write_results(report: dict[str, Any], out: Path, results: str | Path | None) -> None:
    header = (
        f"Synthetic world (seed 0), {report['n_test']} held-out test clips, scale `{report.get('scale')}`, "
        f"training {report.get('train_minutes')} min on this machine. Produced by "
        f"`controlfoley experiment synthetic --scale {report.get('scale')}`. desync_hit_s: the mean offset over the "
        f"events not missed (desync_s = 2 x desync_miss_frac + (1 - desync_miss_frac) x desync_hit_s); generated_dbfs: "
        f"the generated audio's level (the true audio's is in the first row; FD and onset detection depend on it); "
        f"sec_per_clip: wall time per clip at batch {report.get('batch', '?')} on this machine's CPU, features -> tokens -> "
        f"mel -> waveform (the true-audio row generates nothing).\n\n"
    )
    text = header + report["table"] + "\n"
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "results.json", json.dumps(report["rows"], indent=2, default=float))
    if results is not None:
        atomic_write_text(results, text)


def install_shipped_weights(ft_run: Path) -> Path:
    """Store the FT model (fp16, with its config) as the `specmaskfoley_synthetic` preset weights."""
    from controlfoley.checkpoint import TRAINED_KEY, save_state_dict
    from controlfoley.presets import ASSETS, PRETRAINED

    model = load_run_model(ft_run)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = ASSETS / PRETRAINED["specmaskfoley_synthetic"]
    meta = {"controlfoley_config": model.config.override(name="specmaskfoley_synthetic").to_json(), "dtype": "float16"}
    # the run's record of what was trained (the FT run: its ControlNet over the backbone and tokenizer
    # runs it was built from), so generate's untrained-part check reads it as for any checkpoint
    trained = getattr(model, "trained_parts", None)
    if trained is not None:
        meta[TRAINED_KEY] = json.dumps(sorted(trained))
    return save_state_dict(path, state, meta)
