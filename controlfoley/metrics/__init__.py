"""Metrics of generated foley, read from the waveform: onsets, event classes, scores, Frechet distance.

Features
- `detect_onsets` / `OnsetParams` (onsets.py): spectral-flux onsets tuned for percussive events.
- `AudioEventClassifier` / `classify_events` (classify.py): fixed template classifier on the model's mel.
- `onset_metrics` / `pool_onset_metrics` (scores.py): DeSync analogue, onset P/R/F1, class accuracy;
  pooled per event (micro averages), NaN where there is nothing to measure (never 0.0).
- `AudioEmbedding` / `frechet_distance` (frechet.py): fixed log-mel statistics and the Frechet distance.
`controlfoley.evaluation` puts them together over clips of the synthetic world.

References: see each module.
"""

from controlfoley.metrics.classify import AudioEventClassifier, classify_events, event_profile
from controlfoley.metrics.frechet import AudioEmbedding, frechet_distance
from controlfoley.metrics.onsets import OnsetParams, detect_onsets
from controlfoley.metrics.scores import count_matches, onset_metrics, pool_onset_metrics

__all__ = [
    "AudioEmbedding",
    "AudioEventClassifier",
    "OnsetParams",
    "classify_events",
    "count_matches",
    "detect_onsets",
    "event_profile",
    "frechet_distance",
    "onset_metrics",
    "pool_onset_metrics",
]
