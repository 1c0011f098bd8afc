"""Evaluation of generated foley on held-out synthetic clips, from the generated waveform alone.

Features
- `evaluate_clip(wav, clip)`: onsets detected in the generated waveform (`detect_onsets`), the class of
  each (`AudioEventClassifier`, templates of the world's class sounds), scored against the clip's
  true events by `onset_metrics`: the DeSync analogue `desync_s` (per true event, the distance to the
  nearest generated onset of its class, capped at 2 s, which is also what a missing class costs),
  `desync_miss_frac`, `desync_hit_s` (the mean distance over the events that were not missed),
  onset precision / recall / F1 within 0.1 s (class-agnostic `_any` and class-aware `_cls`), and
  `class_accuracy` of the matched generated events.
- `evaluate_clips(generated_wavs, clips, sample_rate)`: the same over a list of clips, pooled as
  micro averages (counts summed over clips, then ratios), plus `fd`: the Frechet distance between
  the generated set and the clips' own audio on the fixed `AudioEmbedding` (NaN with fewer than 2 clips),
  and both sets' levels (`generated_dbfs`, `reference_dbfs`, of the pooled energy): the FD and the
  onset detector read levels, so a model that is quiet scores worse on both (a pure gain g adds
  16 (ln g)^2 to the FD: -3 dB costs about 1.9).
  Nothing reads the model's tokens: a tokenizer, sampler or vocoder problem shows up in the scores.
- `evaluate_against_reference(generated_wavs, reference_wavs, sample_rate)`: for audio without known
  events (real videos): the reference's own detected onsets stand for the true events, so the
  scores say how well the generated onsets line up with the original soundtrack's (class-agnostic:
  `desync_s`, `desync_miss_frac`, `precision_any` / `recall_any` / `f1_any`), plus `fd` against the
  reference set and both sides' RMS levels. Both sides are resampled to `EVAL_RATE` (22.05 kHz, the
  rate the detector is tuned for) and each pair is cut to its shorter length. The scores depend on
  level, as FAD does: onsets quieter than -45 dBFS are not detected and the embedding reads log-mel
  levels, so compare levels too. A silent side (below `SILENT_DBFS`, -90 dBFS) is warned about,
  naming its pairs (`silence_warnings`: one line per side, the first five names and a count).
  `controlfoley evaluate` runs it on folders of files.
- `format_table(rows)`: a markdown table of result rows (one dict per system), for RESULTS.md.
- Over many clips every onset score is a micro average, per event: the counts (matches, onsets,
  true events, summed distances) are summed over the clips and the ratios taken of the sums, so
  precision is all matches / all generated onsets and a clip with more events weighs more; the mean
  of the per-clip scores (a macro average) is computed nowhere. A score with nothing to measure is
  NaN, per clip and pooled alike (precision without generated onsets; recall, desync_s and
  desync_miss_frac without true events; f1 without either; class_accuracy without matches): never
  0.0. A clip's NaN does not reach the pooled score (its counts do), which is NaN only when the
  whole set has nothing to measure. `format_table` prints NaN as "n/a".
- Definitions in full: controlfoley.metrics.scores (onset scores), controlfoley.metrics.onsets
  (detector parameters), controlfoley.metrics.classify (templates), controlfoley.metrics.frechet.

References: DeSync (MMAudio, Cheng et al., CVPR 2025; SpecMaskFoley Table 1, measured with Synchformer);
FAD (Kilgour et al., Interspeech 2019); onset P/R/F as in mir_eval (Raffel et al., ISMIR 2014).
"""

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import librosa
import numpy as np

from controlfoley.audio.io import _checked_rate
from controlfoley.data.synthetic import Event, SyntheticClip, class_sound
from controlfoley.errors import ShapeError, user_stacklevel
from controlfoley.metrics.classify import AudioEventClassifier, classify_events
from controlfoley.metrics._common import as_numpy_wave
from controlfoley.metrics.frechet import AudioEmbedding, frechet_distance
from controlfoley.metrics.onsets import OnsetParams, detect_onsets
from controlfoley.metrics.scores import COUNT_KEYS, MAX_OFFSET_S, SUM_KEYS, TOLERANCE_S, onset_metrics, pool_onset_metrics
from controlfoley.typing import Float, Tensor

__all__ = [
    "AudioEmbedding",
    "AudioEventClassifier",
    "OnsetParams",
    "classify_events",
    "detect_onsets",
    "evaluate_against_reference",
    "evaluate_clip",
    "evaluate_clips",
    "reference_fd",
    "reference_pair_metrics",
    "level_dbfs",
    "EVAL_RATE",
    "format_table",
    "frechet_distance",
    "onset_metrics",
    "pool_onset_metrics",
    "pool_reference_metrics",
    "silence_warnings",
    "SILENT_DBFS",
    "world_classifier",
    "INTEGER_COLUMNS",
]

Wave = Float[Tensor, "_"] | Float[np.ndarray, "_"]


@functools.lru_cache(maxsize=8)
def world_classifier(n_classes: int, sample_rate: int) -> AudioEventClassifier:
    """The template classifier of the synthetic world's first `n_classes` sounds (built once, cached)."""
    return AudioEventClassifier.from_class_sound(class_sound, n_classes, sample_rate)


def evaluate_clip(
    wav: Wave,
    clip: SyntheticClip,
    classifier: AudioEventClassifier | None = None,
    tolerance: float = TOLERANCE_S,
    max_offset_s: float = MAX_OFFSET_S,
) -> dict[str, float]:
    """Onset scores of one generated waveform (at the clip's sample rate) against the clip's events."""
    clf = classifier or world_classifier(len(clip.class_names), clip.sample_rate)
    if clf.sample_rate != clip.sample_rate:
        raise ShapeError(f"the classifier works at {clf.sample_rate} Hz but the clip is at {clip.sample_rate} Hz")
    onsets = detect_onsets(wav, clip.sample_rate)
    classes = clf(wav, onsets)
    return onset_metrics(list(clip.events), onsets, classes, tolerance=tolerance, max_offset_s=max_offset_s)


def evaluate_clips(
    generated_wavs: Sequence[Wave],
    clips: Sequence[SyntheticClip],
    sample_rate: int,
    *,
    classifier: AudioEventClassifier | None = None,
    embedding: AudioEmbedding | None = None,
    tolerance: float = TOLERANCE_S,
    max_offset_s: float = MAX_OFFSET_S,
) -> dict[str, float | int]:
    """All metrics over paired (generated waveform, clip) lists, pooled over clips (see module docstring)."""
    if len(generated_wavs) != len(clips):
        raise ShapeError(f"got {len(generated_wavs)} generated waveforms for {len(clips)} clips; pair them one to one")
    if not clips:
        raise ShapeError("evaluate_clips needs at least one clip")
    sample_rate = _checked_rate(sample_rate, "evaluate_clips")
    rates = {c.sample_rate for c in clips}
    if rates != {sample_rate}:
        raise ShapeError(f"generated audio is at {sample_rate} Hz but the clips are at {sorted(rates)} Hz; resample first")
    per_clip = [
        evaluate_clip(w, c, classifier, tolerance=tolerance, max_offset_s=max_offset_s)
        for w, c in zip(generated_wavs, clips, strict=True)
    ]
    pooled = pool_onset_metrics(per_clip)
    if len(clips) >= 2:
        emb = embedding or AudioEmbedding(sample_rate)
        fd = frechet_distance(emb(list(generated_wavs)), emb([c.audio for c in clips]))
    else:
        fd = math.nan  # a covariance needs two clips per set
    scores = {k: v for k, v in pooled.items() if k not in COUNT_KEYS}
    counts = {k: pooled[k] if k in SUM_KEYS else int(pooled[k]) for k in COUNT_KEYS}  # counts as ints, sums of seconds as floats
    levels = {
        "generated_dbfs": _pooled_level([level_dbfs(w) for w in generated_wavs]),
        "reference_dbfs": _pooled_level([level_dbfs(c.audio) for c in clips]),
    }
    return {"n_clips": len(clips), **scores, "fd": fd, **levels, **counts}


# Scores that need classes; a reference comparison has none (every onset is "class 0"), so
# `evaluate_against_reference` leaves them out rather than repeat the class-agnostic ones.
_CLASS_KEYS = ("precision_cls", "recall_cls", "f1_cls", "class_accuracy", "matched_cls")
# The rate a reference comparison runs at: the onset detector's windows are counted in samples
# (n_fft 512 = 23 ms, hop 64 = 2.9 ms at this rate) and the embedding's mel is the model's.
EVAL_RATE = 22050


def _at_eval_rate(wav: Wave, sample_rate: int) -> np.ndarray:
    """`wav` resampled to `EVAL_RATE` from `sample_rate` (an int its caller checked, `_checked_rates`)."""
    y = as_numpy_wave(wav)
    if sample_rate == EVAL_RATE:
        return y
    return librosa.resample(y, orig_sr=sample_rate, target_sr=EVAL_RATE, res_type="soxr_hq").astype(np.float32)


def _checked_rates(sample_rate: object, reference_sample_rate: object, caller: str) -> tuple[int, int]:
    """(generated, reference) rates as ints, checked by the library's rule (`controlfoley.audio.io`:
    a positive whole number of Hz); the reference's is `sample_rate` where it is None."""
    rate = _checked_rate(sample_rate, caller)
    return rate, rate if reference_sample_rate is None else _checked_rate(reference_sample_rate, f"{caller} (reference_sample_rate)")


def _common_length(generated: Wave, reference: Wave, sample_rate: int, reference_rate: int) -> tuple[np.ndarray, np.ndarray]:
    g, r = _at_eval_rate(generated, sample_rate), _at_eval_rate(reference, reference_rate)
    n = min(g.size, r.size)
    return g[:n], r[:n]


def level_dbfs(wav: Wave) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS; silence about -240)."""
    y = as_numpy_wave(wav).astype(np.float64)
    return float(20.0 * np.log10(np.sqrt(np.mean(y * y)) + 1e-12)) if y.size else math.nan


def reference_pair_metrics(
    generated: Wave,
    reference: Wave,
    sample_rate: int,
    tolerance: float = TOLERANCE_S,
    max_offset_s: float = MAX_OFFSET_S,
    *,
    reference_sample_rate: int | None = None,
) -> dict[str, float]:
    """Onset scores of one generated waveform against a reference waveform (both at `sample_rate`,
    or the reference at `reference_sample_rate` where given: a 44.1 kHz original beside 22.05 kHz output).

    Both are resampled to `EVAL_RATE` and cut to the shorter length; the reference's detected onsets
    play the true events. A score with nothing to measure is NaN (desync and recall without
    reference onsets, precision without generated ones, f1 without either), as everywhere in
    `controlfoley.metrics.scores`; the counts are kept for pooling (`pool_reference_metrics`).
    `generated_dbfs` / `reference_dbfs`: their RMS levels (the scores depend on level: onsets
    quieter than -45 dBFS are not detected, see `OnsetParams`). The rates are positive whole
    numbers of Hz; another is a SampleRateError (a ShapeError and a ConfigError).
    """
    rate, reference_rate = _checked_rates(sample_rate, reference_sample_rate, "reference_pair_metrics")
    return _pair_scores(*_common_length(generated, reference, rate, reference_rate), tolerance, max_offset_s)


def _pair_scores(g: np.ndarray, r: np.ndarray, tolerance: float, max_offset_s: float) -> dict[str, float]:
    """`reference_pair_metrics` of a pair already at `EVAL_RATE`, cut to one length."""
    true = [Event(t, 0) for t in detect_onsets(r, EVAL_RATE)]
    pred = detect_onsets(g, EVAL_RATE)
    scores = onset_metrics(true, pred, [0] * len(pred), tolerance=tolerance, max_offset_s=max_offset_s)
    out = {k: v for k, v in scores.items() if k not in _CLASS_KEYS}
    return {**out, "generated_dbfs": level_dbfs(g), "reference_dbfs": level_dbfs(r)}


def evaluate_against_reference(
    generated_wavs: Sequence[Wave],
    reference_wavs: Sequence[Wave],
    sample_rate: int,
    *,
    embedding: AudioEmbedding | None = None,
    tolerance: float = TOLERANCE_S,
    max_offset_s: float = MAX_OFFSET_S,
    reference_sample_rate: int | None = None,
) -> dict[str, float | int]:
    """`reference_pair_metrics` pooled over paired lists (micro averages: per onset, not per pair; see
    `pool_reference_metrics`), plus `fd` between the sets. The references are at `sample_rate` too
    unless `reference_sample_rate` says otherwise.

    `n_true` counts the reference onsets, `n_pred` the generated ones. `fd` is NaN with fewer than
    two pairs (a covariance needs two clips per set); pairs shorter than the embedding's mel window
    are left out of it. `embedding` must work at `EVAL_RATE`.
    """
    if len(generated_wavs) != len(reference_wavs):
        raise ShapeError(f"got {len(generated_wavs)} generated waveforms for {len(reference_wavs)} references; pair them one to one")
    if not generated_wavs:
        raise ShapeError("evaluate_against_reference needs at least one pair")
    emb = embedding or AudioEmbedding(EVAL_RATE)
    if emb.sample_rate != EVAL_RATE:
        raise ShapeError(f"the embedding works at {emb.sample_rate} Hz but the comparison runs at {EVAL_RATE} Hz; build AudioEmbedding({EVAL_RATE})")
    rate, reference_rate = _checked_rates(sample_rate, reference_sample_rate, "evaluate_against_reference")
    pairs = [_common_length(g, r, rate, reference_rate) for g, r in zip(generated_wavs, reference_wavs, strict=True)]
    per_pair = [_pair_scores(g, r, tolerance, max_offset_s) for g, r in pairs]
    for message in silence_warnings(per_pair, [f"pair {i}" for i in range(len(per_pair))]):
        warnings.warn(message, stacklevel=user_stacklevel())
    return {**pool_reference_metrics(per_pair), "fd": reference_fd(pairs, emb)}


# A side quieter than this (RMS) is silent: no onset can be detected in it (the detector's gate is
# -45 dBFS), and a level gap against it means nothing.
SILENT_DBFS = -90.0
_NAMED = 5  # silent pairs named in a warning; the rest are counted


def silence_warnings(per_pair: Sequence[Mapping[str, float]], names: Sequence[str]) -> list[str]:
    """The warnings for silent references and silent generated audio among `reference_pair_metrics`
    results (`names[i]` names pair i: a file name, or "pair i"): at most one per side, naming each
    silent pair (the first five, then a count); [] when none is silent. When every pair's side is
    silent the line says so of the whole set."""
    n, out = len(per_pair), []
    for key, whole, some in (
        (
            "reference_dbfs",
            "the reference audio is silent (below {db} dBFS): it has no onsets to score against, so desync and recall are n/a; "
            "check that the references hold the original soundtracks",
            "{k} of {n} references {is_} silent (below {db} dBFS): {names}; {they} no onsets to score against, so {its} desync and "
            "recall are n/a and the generated onsets beside {them} count against precision_any; check that {these}",
        ),
        (
            "generated_dbfs",
            "the generated audio is silent (below {db} dBFS): no onsets can be detected in it; check the model and vocoder that made it",
            "{k} of {n} generated clips {is_} silent (below {db} dBFS): {names}; no onsets can be detected in {them}, so the reference "
            "onsets beside {them} count as missed (recall, desync); check the model and vocoder that made {them}",
        ),
    ):
        silent = [name for name, m in zip(names, per_pair, strict=True) if m.get(key, math.nan) < SILENT_DBFS]  # NaN compares False
        if not silent:
            continue
        k = len(silent)
        listed = ", ".join(silent[:_NAMED]) + (f" and {k - _NAMED} more" if k > _NAMED else "")
        one = k == 1
        out.append((whole if k == n else some).format(
            db=f"{SILENT_DBFS:.0f}", k=k, n=n, names=listed, is_="is" if one else "are", they="it has" if one else "they have",
            its="its" if one else "their", them="it" if one else "them",
            these="it holds the original soundtrack" if one else "they hold the original soundtracks",
        ))  # fmt: skip
    return out


def reference_fd(pairs: Sequence[tuple[np.ndarray, np.ndarray]], embedding: AudioEmbedding) -> float:
    """FD between the generated and the reference sides of (generated, reference) pairs at the
    embedding's rate; pairs shorter than its mel window are left out; NaN with fewer than two left."""
    usable = [(g, r) for g, r in pairs if min(len(g), len(r)) >= embedding.mel.min_samples]
    if len(usable) < 2:
        return math.nan
    return frechet_distance(embedding([g for g, _ in usable]), embedding([r for _, r in usable]))


def pool_reference_metrics(per_pair: Sequence[Mapping[str, float]]) -> dict[str, float | int]:
    """Micro averages of `reference_pair_metrics` results (their counts summed, ratios recomputed:
    `desync_s` is the mean over all reference onsets, not over files, and `precision_any` all
    matches / all generated onsets, not the mean of the files' precisions; a file's NaN adds its
    counts, not a NaN; NaN only where the whole set had nothing to measure), the levels of the
    pooled energy, with `n_clips` first; `evaluate_against_reference` adds `fd`."""
    pooled = pool_onset_metrics([{**m, "matched_cls": 0.0} for m in per_pair])
    scores = {k: v for k, v in pooled.items() if k not in COUNT_KEYS and k not in _CLASS_KEYS}
    counts = {k: pooled[k] for k in COUNT_KEYS if k not in _CLASS_KEYS}
    levels = {k: _pooled_level([m[k] for m in per_pair]) for k in ("generated_dbfs", "reference_dbfs") if per_pair and all(k in m for m in per_pair)}
    return {"n_clips": len(per_pair), **scores, **levels, **{k: v if k in SUM_KEYS else int(v) for k, v in counts.items()}}


def _pooled_level(levels_db: Sequence[float]) -> float:
    """The level of the pooled energy (mean of the mean squares): a silent file adds no energy
    instead of pulling a mean of dB values towards -240."""
    power = [10.0 ** (x / 10.0) for x in levels_db if not math.isnan(x)]
    return float(10.0 * np.log10(np.mean(power) + 1e-24)) if power else math.nan


# Metric-dict entries that count things: floats in the dicts, printed as integers in tables.
INTEGER_COLUMNS = frozenset({"n_clips", "n_true", "n_pred", "matched_any", "matched_cls", "n_desync_miss"})


def _cell(value: Any, digits: int, integer: bool) -> str:
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        return str(round(value)) if integer else f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")  # a pipe would split the markdown cell


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Markdown table, one row per dict; columns default to every key, in order of first appearance.

    Floats print with `digits` decimals, except in the count columns of the metric dicts
    (`INTEGER_COLUMNS`), which print as integers; NaN prints "n/a", a missing key or None "-".
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        raise ShapeError("format_table needs at least one column (the rows are empty)")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), digits, c in INTEGER_COLUMNS) for c in columns) + " |")
    return "\n".join(lines)
