"""Event-level scores of generated audio against a clip's true events: DeSync analogue, P/R/F1, accuracy.

Definitions (T = true events (t_i, c_i); G = generated onsets (g_j, k_j) with their classified class)
- Class-aware distance of a true event: d_i = min(max_offset_s, min over j with k_j = c_i of |t_i - g_j|),
  and d_i = max_offset_s when no generated onset has class c_i: a wrong-class onset does not count.
  `desync_s` = mean of d_i over true events (NaN when there are none). max_offset_s defaults to
  2.0 s, the largest offset Synchformer's offset classifier can report (the DeSync of MMAudio and
  SpecMaskFoley averages those predictions), so the metric lives on the same [0, 2] s scale and one
  missing event cannot dominate. `desync_miss_frac` = fraction of true events with d_i = max_offset_s
  (no onset of their class within max_offset_s; NaN when there are no true events), reported so that
  a capped mean is never read without knowing how much of it was capped. `desync_hit_s` = mean of d_i
  over the true events that were not missed: the timing error where the right class was found at
  all (NaN when every event was missed). A missed event costs max_offset_s exactly, so
  desync_s = miss_frac x max_offset_s + (1 - miss_frac) x desync_hit_s: a large desync_s with a large
  miss fraction says "wrong or missing sounds", not "late sounds".
- Matching: one-to-one between true events and generated onsets with |t_i - g_j| <= tolerance
  (inclusive, default 0.1 s), of maximum size. Class-agnostic uses all pairs; class-aware only pairs
  with k_j = c_i. On a line with one shared tolerance the greedy sweep over both sorted lists finds a
  maximum matching (each candidate set is an interval whose ends grow with t_i).
- precision = matches / |G|, recall = matches / |T|, f1 = 2 matches / (|G| + |T|) (= 2 tp / (2 tp + fp + fn),
  equal to 2 P R / (P + R) wherever that is defined). Suffix `_any` = class-agnostic, `_cls` = class-aware.
- `class_accuracy` = class-aware matches / class-agnostic matches: the share of onset matches that
  survive requiring the right class (a class-aware matching is also an agnostic one, so it is in [0, 1]).
- Undefined is NaN, never 0.0, in every score: a ratio whose denominator is 0 has nothing to measure.
  No generated onsets: precision NaN (recall and f1 are 0.0 when there were true events: all missed).
  No true events: recall, desync_s and desync_miss_frac NaN (precision and f1 are 0.0 when something
  was generated: all false alarms). Neither: f1 NaN too. Nothing matched: class_accuracy NaN; every
  event missed: desync_hit_s NaN. This is scikit-learn's `zero_division=np.nan` (with its f1 =
  2 tp / (2 tp + fp + fn), undefined only when all three are 0); mir_eval.onset.f_measure instead
  returns 0.0 for all three when either list is empty. Tables print NaN as "n/a", JSON as null.
- Averaging is per event (a micro average), never per clip: `pool_onset_metrics` sums the counts of
  many clips (matches, onsets, true events, summed distances) and recomputes every ratio from the
  sums, so a clip with more events weighs more, and a clip's undefined (NaN) score adds its counts
  (zeros, where it had nothing) instead of a NaN or a 0.0 to the pooled value: precision over clips
  is all matches / all generated onsets. A pooled score is NaN only when the whole set has nothing to
  measure (no generated onset in any clip, for precision). The mean of the per-clip scores (a macro
  average) is not computed anywhere.

References: DeSync as in MMAudio (Cheng et al., CVPR 2025) and SpecMaskFoley (Table 1), computed there
with Synchformer (Iashin et al., ICASSP 2024); onset P/R/F with a tolerance window as in mir_eval.onset
(Raffel et al., ISMIR 2014) and the MIREX onset task.
"""

import math
from collections.abc import Mapping, Sequence

from controlfoley.data.synthetic import Event
from controlfoley.errors import ShapeError

__all__ = ["MAX_OFFSET_S", "TOLERANCE_S", "count_matches", "onset_metrics", "pool_onset_metrics", "COUNT_KEYS", "SUM_KEYS"]

MAX_OFFSET_S = 2.0  # Synchformer's offset range is [-2, 2] s
TOLERANCE_S = 0.1  # an onset within 100 ms of a true one counts as hitting it
_EPS = 1e-9  # the tolerance is inclusive despite float error in t - g
COUNT_KEYS = ("n_true", "n_pred", "matched_any", "matched_cls", "desync_sum_s", "n_desync_miss", "desync_hit_sum_s")
SUM_KEYS = frozenset({"desync_sum_s", "desync_hit_sum_s"})  # the counts that are sums of seconds, not integers


def _check_times(times: Sequence[float], what: str) -> None:
    """Every onset a finite number of seconds (a NaN compares False with everything and would match)."""
    for i, t in enumerate(times):
        try:
            finite = math.isfinite(t)
        except TypeError:
            raise ShapeError(f"{what} {i} is {type(t).__name__} {t!r}, not a time in seconds; give onset times as floats") from None
        if not finite:
            raise ShapeError(f"{what} {i} is {t}: onset times must be finite seconds; drop the NaN/Inf onsets or fix what produced them")


def count_matches(true_times: Sequence[float], pred_times: Sequence[float], tolerance: float) -> int:
    """Size of a maximum one-to-one matching with |t - g| <= tolerance (greedy sweep, both sorted)."""
    if not (math.isfinite(tolerance) and tolerance >= 0):  # NaN compares False
        raise ShapeError(f"count_matches needs a finite tolerance >= 0 (seconds), got {tolerance}")
    _check_times(true_times, "true onset")
    _check_times(pred_times, "generated onset")
    t, g = sorted(true_times), sorted(pred_times)
    i = j = matched = 0
    while i < len(t) and j < len(g):
        if g[j] < t[i] - tolerance - _EPS:
            j += 1  # too early for this true event, hence for every later one
        elif g[j] > t[i] + tolerance + _EPS:
            i += 1  # this true event has no onset left in reach
        else:
            matched += 1
            i += 1
            j += 1
    return matched


def _class_distance(event: Event, pred_onsets: Sequence[float], pred_classes: Sequence[int], max_offset_s: float) -> float:
    same = [abs(event.time_s - g) for g, k in zip(pred_onsets, pred_classes, strict=True) if k == event.class_id]
    return min([max_offset_s, *same])


def _ratio(num: float, den: float) -> float:
    """num / den; NaN when den is 0: nothing to measure is undefined, not a score of 0."""
    return num / den if den > 0 else math.nan


def _ratios(counts: Mapping[str, float]) -> dict[str, float]:
    """Every score from the counts (one clip's, or the sums of many): the same rules either way."""
    n_true, n_pred = counts["n_true"], counts["n_pred"]
    out = {
        "desync_s": _ratio(counts["desync_sum_s"], n_true),
        "desync_miss_frac": _ratio(counts["n_desync_miss"], n_true),
        "desync_hit_s": _ratio(counts["desync_hit_sum_s"], n_true - counts["n_desync_miss"]),
    }
    for tag in ("any", "cls"):
        m = counts[f"matched_{tag}"]
        out[f"precision_{tag}"] = _ratio(m, n_pred)
        out[f"recall_{tag}"] = _ratio(m, n_true)
        out[f"f1_{tag}"] = _ratio(2 * m, n_pred + n_true)
    out["class_accuracy"] = _ratio(counts["matched_cls"], counts["matched_any"])
    return out


def onset_metrics(
    true_events: Sequence[Event],
    pred_onsets: Sequence[float],
    pred_classes: Sequence[int],
    tolerance: float = TOLERANCE_S,
    max_offset_s: float = MAX_OFFSET_S,
) -> dict[str, float]:
    """Scores of one clip (see the module docstring; NaN where undefined: precision without generated
    onsets, recall and desync without true events), plus the counts `pool_onset_metrics` sums."""
    if len(pred_onsets) != len(pred_classes):
        raise ShapeError(f"{len(pred_onsets)} generated onsets but {len(pred_classes)} classes; give one class per onset")
    if not (math.isfinite(tolerance) and tolerance >= 0 and math.isfinite(max_offset_s) and max_offset_s > 0):  # NaN compares False
        raise ShapeError(f"need a finite tolerance >= 0 and a finite max_offset_s > 0, got {tolerance} and {max_offset_s}")
    for i, e in enumerate(true_events):
        if not isinstance(e, Event):
            raise ShapeError(
                f"onset_metrics takes the true events as Event(time_s, class_id) objects, got {type(e).__name__} {e!r} at position {i}; "
                "make them with controlfoley.data.synthetic.Event, e.g. [Event(t, 0) for t in times] (one class: class-agnostic)"
            )
    _check_times([e.time_s for e in true_events], "true event")
    _check_times(pred_onsets, "generated onset")
    distances = [_class_distance(e, pred_onsets, pred_classes, max_offset_s) for e in true_events]
    classes = sorted({e.class_id for e in true_events} | set(pred_classes))
    matched_cls = sum(
        count_matches(
            [e.time_s for e in true_events if e.class_id == c],
            [g for g, k in zip(pred_onsets, pred_classes, strict=True) if k == c],
            tolerance,
        )
        for c in classes
    )
    counts: dict[str, float] = {
        "n_true": float(len(true_events)),
        "n_pred": float(len(pred_onsets)),
        "matched_any": float(count_matches([e.time_s for e in true_events], pred_onsets, tolerance)),
        "matched_cls": float(matched_cls),
        "desync_sum_s": float(sum(distances)),
        "n_desync_miss": float(sum(d >= max_offset_s for d in distances)),
        "desync_hit_sum_s": float(sum(d for d in distances if d < max_offset_s)),
    }
    return {**_ratios(counts), **counts}


def pool_onset_metrics(per_clip: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Micro average over clips (per event, not per clip): sum the counts of `onset_metrics` results,
    recompute the ratios from the sums (NaN only where the sums leave nothing to measure)."""
    for i, m in enumerate(per_clip):
        missing = [key for key in COUNT_KEYS if key not in m] if isinstance(m, Mapping) else list(COUNT_KEYS)
        if missing:
            raise ShapeError(
                f"pool_onset_metrics sums the counts of onset_metrics results, but clip {i} lacks {', '.join(missing)}; "
                "pass the dicts onset_metrics returns, whole (not only their ratios)"
            )
    totals = {key: float(sum(m[key] for m in per_clip)) for key in COUNT_KEYS}
    return {**_ratios(totals), **totals}
