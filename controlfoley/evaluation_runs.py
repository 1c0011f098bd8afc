"""Evaluating trained models on held-out synthetic clips: the rows of the learning-proof table.

Each variant generates audio for the same held-out clips, each clip with its own seed (the same
noise for every variant and at any batch size), from the generated waveform
(tokens -> tokenizer decoder -> mel -> vocoder) the metrics of `controlfoley.evaluation` are computed:
DeSync analogue, onset precision/recall/F1, class accuracy, Frechet distance on a fixed embedding.
Each row's onset scores pool the events of all its clips (micro averages: counts summed over the
clips, then the ratios; not the mean of per-clip scores), "n/a" where nothing was there to measure.
Three reference rows frame the models' rows: the true audio (the best any model can score), other
clips' true audio (what real but unrelated sound scores: chance level for the onset scores, and the
FD floor of two real samples, which the first row's 0 hides), and the true audio's tokens decoded
and vocoded (the tokenizer + vocoder ceiling).
"""

import json
import numbers
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from controlfoley._io import atomic_write_text
from controlfoley._static import ModelModule

__all__ = [
    "score_synthetic", "evaluate_variants", "write_results", "install_shipped_weights", "load_run_model", "clip_inputs", "TABLE_COLUMNS",
    "CLIP_SEED", "EXPERIMENT_LABELS", "MixedTokenizersWarning",
]  # fmt: skip

CLIP_SEED = 1000  # held-out clip k (0, 1, ... in the list scored) is sampled with a generator seeded CLIP_SEED + k

# The rows of `controlfoley experiment`'s two ControlNet runs, by their names in evaluate_variants' cn_runs
EXPERIMENT_LABELS = {"ft": "ControlNet + FT-Aligner, multi-CFG, 12 steps", "plain1d": "ControlNet + plain 1-D aligner, multi-CFG"}


class MixedTokenizersWarning(UserWarning):
    """evaluate_variants was given runs whose tokenizers differ: their rows compare the tokenizers as
    well as the models. `warnings.simplefilter("error", MixedTokenizersWarning)` makes it an error."""

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
        n = len(text[sl])
        # one generator per clip (generate: row j draws from generator j alone, the sample it gives at
        # batch 1), so a clip meets the same noise whatever the batch it falls in
        gens = [torch.Generator(model.device).manual_seed(CLIP_SEED + k) for k in range(i, i + n)]
        codes = model.generate(f, t, batch_size=n, generator=gens, **kw)
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


def _check_counts(**counts: tuple[Any, int]) -> None:
    """Each count an int (not a bool) >= its least value; else a ConfigError naming it."""
    from controlfoley.errors import ConfigError

    for name, (v, low) in counts.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            why = " (the FD compares two sets of clips)" if low == 2 else ""
            raise ConfigError(f"{name} must be an int >= {low}, got {v!r}{why}")


def score_synthetic(model: ModelModule, n_clips: int = 40, *, batch: int = 16, world_seed: int = 0, **generate_kwargs: Any) -> dict[str, Any]:
    """Score `model` on `n_clips` held-out clips of the synthetic world (the test split the shipped
    model and `controlfoley experiment` use, at the model's window): generate, decode, vocode, then
    the metrics of `controlfoley.evaluation.evaluate_clips` (desync, onset precision / recall / F1,
    class scores, pooled per event over the clips; FD). `generate_kwargs` go to `model.generate`:
    guidance=, steps=, cfg_scale=, control_scale=... Returns those scores plus `sec_per_clip`;
    `format_table([row, ...])` prints several.

    Seeding: clip k of the n_clips (k = 0, 1, ...) is sampled with its own generator, seeded
    CLIP_SEED + k (1000 + k), so every variant meets the same noise on the same clip, and `batch`
    (how many clips are generated at once) changes only the speed: the tokens are those of the clip
    sampled alone (up to the rounding of batched matrix products). The first k clips are the same
    at any n_clips.

    >>> from controlfoley import from_pretrained
    >>> m = from_pretrained("specmaskfoley_synthetic")
    >>> rows = [{"variant": g, **score_synthetic(m, 16, guidance=g)} for g in ("multi", "cfg_video")]
    """
    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.errors import ConfigError

    _check_counts(n_clips=(n_clips, 2), batch=(batch, 1))
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


def _tokenizer_fingerprint(model: ModelModule) -> str:
    """A hash of the tokenizer's weights (floats compared as float32, so an fp16 copy of a tokenizer,
    as the shipped weights are, matches the run it came from)."""
    from controlfoley.guidance import tensor_digest

    state = model.tokenizer.state_dict()
    return tensor_digest(state[k].float() if state[k].is_floating_point() else state[k] for k in sorted(state))


def _is_experiment_run(name: str, model: ModelModule) -> bool:
    """Whether run `name` is one of the experiment's: named "ft" / "plain1d" and built so (that
    aligner, multi-CFG, 12 steps), so that its row may carry the experiment's label."""
    cfg = model.config
    aligner = getattr(cfg.aligner, "name", None)
    return name in EXPERIMENT_LABELS and aligner == name and cfg.guidance.name == "multi" and cfg.sampler.steps == 12


def _run_label(name: str, model: ModelModule) -> str:
    """A ControlNet run's row label: the experiment's for its own runs, else the run's name and how it
    samples (aligner, guidance, steps), read from its model, not guessed from its name."""
    if _is_experiment_run(name, model):
        return EXPERIMENT_LABELS[name]
    cfg = model.config
    return f"ControlNet {name} ({getattr(cfg.aligner, 'name', None)} aligner), {cfg.guidance.name}, {cfg.sampler.steps} steps"


def _checked_runs(bb_run: Any, cn_runs: Any, ablate: Any) -> dict[str, Path]:
    """cn_runs as {name: Path}, in its order; a TypeError / ConfigError that says what is expected."""
    from controlfoley.errors import ConfigError

    expected = 'a dict of named ControlNet run folders, e.g. {"ft": Path("runs/cn_ft"), "plain1d": Path("runs/cn_plain1d")}'
    if not isinstance(bb_run, (str, os.PathLike)):
        raise TypeError(f"bb_run must be the backbone run's folder (a str or Path), got {type(bb_run).__name__}")
    if not isinstance(cn_runs, Mapping):
        raise TypeError(f"cn_runs must be {expected}; got {type(cn_runs).__name__}")
    bad = [repr(k) for k, v in cn_runs.items() if not isinstance(k, str) or not isinstance(v, (str, os.PathLike))]
    if bad:
        raise TypeError(f"cn_runs must be {expected}: names (str) to folders (str or Path); not so for {', '.join(bad)}")
    if not cn_runs:
        raise ConfigError(f"cn_runs is empty: give at least one ControlNet run, as {expected}")
    if ablate is not None and ablate not in cn_runs:
        raise ConfigError(
            f"cn_runs has no run named {ablate!r} (ablate={ablate!r}: the run that also gets the guidance and steps rows); it has "
            f"{', '.join(repr(k) for k in cn_runs)}. Name one of them with ablate=, add a {ablate!r} run, or pass ablate=None for no such rows"
        )
    return {k: Path(v) for k, v in cn_runs.items()}


def evaluate_variants(
    bb_run: str | Path, cn_runs: Mapping[str, str | Path], *, n_test: int, batch: int = 16, ablate: str | None = "ft"
) -> dict[str, Any]:
    """Score trained runs side by side on the same held-out clips: the rows of `controlfoley
    experiment`'s table, for any ControlNet runs you name.

    - `bb_run`: the backbone run folder (`controlfoley train --recipe backbone`); its row generates
      from the clips' tag prompts alone, without video.
    - `cn_runs`: ControlNet runs by name, {name: run folder} (any number, at least one); each gets a
      row with its model's own sampling settings. The experiment's names keep its labels
      (`EXPERIMENT_LABELS`: "ft" -> "ControlNet + FT-Aligner, multi-CFG, 12 steps", "plain1d" ->
      "ControlNet + plain 1-D aligner, multi-CFG") where the run is built so (that aligner,
      multi-CFG, 12 steps); any other run gives "ControlNet NAME (ALIGNER aligner), GUIDANCE, N steps",
      read from its model.
      A run folder may also be a checkpoint folder or file (as `load_run_model` takes it).
    - `n_test`: held-out clips scored (the synthetic world's test split, seed 0, at the window of
      the first ControlNet run; all runs must share that window and sample rate), at least 2.
    - `batch`: clips generated at once; a speed setting only (see `score_synthetic`'s seeding).
    - `ablate`: the run (a name in `cn_runs`, default "ft") that also gets the guidance rows
      (video-only CFG, text&video-only CFG, no guidance) and the steps rows (4, 8, 16 MaskGIT
      steps), labelled "FT, ..." for the experiment's "ft" run and "NAME, ..." otherwise; None for
      none. A name that is not in `cn_runs` is a ConfigError listing the names there.

    Rows, in this order: three references (the true audio; other clips' true audio, i.e. chance
    and the FD floor of two real samples; the true audio's tokens through the first ControlNet
    run's tokenizer decoder and vocoder, the ceiling), the backbone, each ControlNet run in
    `cn_runs`' order, then `ablate`'s guidance and steps rows. Every row scores the same clips, and
    every generating row gives clip k the same noise (a generator seeded 1000 + k, as
    `score_synthetic`), so rows differ only by model and settings.

    When the runs' tokenizers differ (compared by their weights), a MixedTokenizersWarning names
    them: each row still decodes with its own model's tokenizer, but the rows then compare the
    tokenizers too, and the ceiling row is the first ControlNet run's tokenizer only.

    Returns {"rows": [dict of TABLE_COLUMNS per row], "table": the markdown table, "n_test",
    "world_seed": 0, "batch", "runs": {"backbone": folder, "controlnet": {NAME: folder, ...}}};
    nothing is written (`write_results(report, out, results)` writes results.md / results.json).

    >>> report = evaluate_variants("runs/bb", {"ft": "runs/cn_ft", "mine": "runs/cn_mine"}, n_test=40)
    >>> print(report["table"])
    """
    from controlfoley import GUIDANCE
    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.errors import ConfigError, user_stacklevel
    from controlfoley.evaluation import format_table

    runs = _checked_runs(bb_run, cn_runs, ablate)
    _check_counts(n_test=(n_test, 2), batch=(batch, 1))
    n_test, batch = int(n_test), int(batch)
    models = {name: load_run_model(path) for name, path in runs.items()}
    backbone = load_run_model(bb_run)
    no_control = [f"{name!r} ({runs[name]})" for name, m in models.items() if not getattr(m, "has_control", False)]
    if no_control:
        raise ConfigError(f"cn_runs holds runs without a ControlNet: {', '.join(no_control)}; a backbone run goes in bb_run")
    trained = getattr(backbone, "trained_parts", None)
    if getattr(backbone, "has_control", False) and (trained is None or "controlnet" in trained):
        raise ConfigError(
            f"bb_run {bb_run} has a trained ControlNet, but its row is the backbone without video: give the backbone run "
            "it was trained from, and this run in cn_runs"
        )
    # a backbone run of a preset with a ControlNet (train backbone with a specmaskfoley preset) holds that ControlNet
    # untrained: its row samples text-only CFG at the model's scale, which reads no video and runs no ControlNet
    bb_kw: dict[str, Any] = {}
    if getattr(backbone, "has_control", False):
        own = backbone.guidance
        bb_kw["guidance"] = GUIDANCE.build("cfg_text", scale=own.scale, schedule=own.schedule if own.schedule in ("linear", "constant") else "linear")
    first = next(iter(models.values()))
    where = {"backbone": Path(bb_run), **{f"{name!r}": path for name, path in runs.items()}}
    everyone = {"backbone": backbone, **{f"{name!r}": m for name, m in models.items()}}
    windows = {(m.n_samples, m.sample_rate) for m in everyone.values()}
    if len(windows) > 1:
        shown = "; ".join(f"{who} ({where[who]}): {m.n_samples} samples at {m.sample_rate} Hz" for who, m in everyone.items())
        raise ConfigError(f"the runs generate audio of different lengths or sample rates, so they cannot score the same clips: {shown}")
    by_tokenizer: dict[str, list[str]] = {}
    for who, m in everyone.items():
        by_tokenizer.setdefault(_tokenizer_fingerprint(m), []).append(who)
    if len(by_tokenizer) > 1:
        groups = " | ".join(", ".join(f"{who} ({where[who]})" for who in group) for group in by_tokenizer.values())
        warnings.warn(
            f"the runs decode with {len(by_tokenizer)} different tokenizers (runs sharing one are grouped: {groups}); their rows "
            "compare the tokenizers as well as the models, and the 'true tokens' row is the first ControlNet run's tokenizer. "
            "Train the runs from one tokenizer (--init the backbone run) for rows that differ only by model",
            MixedTokenizersWarning,
            stacklevel=user_stacklevel(),
        )

    world = SyntheticWorld(seed=0, duration_s=first.n_samples / first.sample_rate, sample_rate=first.sample_rate)
    clips = [world.clip(i) for i in world.split("test", n_test)]
    others = [world.clip(i) for i in world.split("val", n_test)]
    rows = [
        _row("reference: true audio", lambda: [c.audio for c in clips], clips),
        # chance: real audio of other clips, so the onset scores of unrelated sounds and the FD floor of two real samples
        _row("reference: other clips' true audio (chance)", lambda: [c.audio for c in others], clips),
        _row("reference: true tokens -> decoder -> vocoder", lambda: _reconstruct(first, clips), clips),
        _row("backbone + tag prompt, no video (CFG text)", lambda: _generate_rows(backbone, clips, batch, **bb_kw), clips),
    ]
    # defs, not lambdas with a default argument (which a type checker cannot match to a zero-argument callable)
    for name, model in models.items():
        label = _run_label(name, model)

        def as_trained(m: ModelModule = model) -> list[torch.Tensor]:
            return _generate_rows(m, clips, batch)

        rows.append(_row(label, as_trained, clips))
    if ablate is not None:
        target = models[ablate]
        # the experiment's labels for its "ft" run (when it is the experiment's model); another run's own name and guidance
        prefix, rule_name = ("FT", "multi-CFG") if _is_experiment_run(ablate, target) else (ablate, target.config.guidance.name)
        for label, rule in (("CFG video only (w/o l_tv)", "cfg_video"), ("CFG text&video only (w/o l_v)", "cfg_text_video"), ("no guidance (l_tv)", "none")):

            def with_rule(r: str = rule) -> list[torch.Tensor]:
                return _generate_rows(target, clips, batch, guidance=GUIDANCE.build(r))

            rows.append(_row(f"{prefix}, {label}", with_rule, clips))
        for steps in (4, 8, 16):

            def with_steps(s: int = steps) -> list[torch.Tensor]:
                return _generate_rows(target, clips, batch, steps=s)

            rows.append(_row(f"{prefix}, {rule_name}, {steps} steps", with_steps, clips))
    table = format_table(rows, TABLE_COLUMNS)
    runs_made = {"backbone": str(bb_run), "controlnet": {name: str(path) for name, path in runs.items()}}
    return {"rows": rows, "table": table, "n_test": n_test, "world_seed": 0, "batch": batch, "runs": runs_made}


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
