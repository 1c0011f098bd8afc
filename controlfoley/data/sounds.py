"""The class sounds of the synthetic audio-visual world: short, percussive, each with a sharp onset.

Features
- Eight fixed sounds, one per class, each 0.10-0.40 s long with a 0.5 ms attack, chosen to sit in
  different places of an 80-band mel spectrogram at 22.05 kHz (fmax 8 kHz):
  thud (pitch-dropping 120 -> 55 Hz sine), snare (1.5-6 kHz noise burst over a 190 Hz body),
  bell (inharmonic partials on 660 Hz, long decay), chirp (500 -> 3000 Hz exponential sweep),
  click (4-8 kHz noise tick with a 3.5 kHz ring), knock (damped 420/980/1750 Hz woodblock modes),
  ping (high metallic partials 2.4-5.1 kHz), buzz (110 Hz band-limited sawtooth).
- `class_sound(class_id, sample_rate)`: the template, peak 1.0, identical on every call (noise
  parts come from a fixed per-class seed), so evaluation can match templates against audio.

References: additive and subtractive percussion synthesis (exponentially decaying modes, filtered
noise bursts), e.g. J. O. Smith, "Physical Audio Signal Processing" (modal synthesis).
"""

import functools
from collections.abc import Callable

import numpy as np
import torch

from controlfoley.typing import Float, Tensor

__all__ = ["CLASS_NAMES", "SOUND_LENGTHS_S", "class_sound"]

CLASS_NAMES: tuple[str, ...] = ("thud", "snare", "bell", "chirp", "click", "knock", "ping", "buzz")
SOUND_LENGTHS_S: tuple[float, ...] = (0.25, 0.18, 0.40, 0.22, 0.10, 0.15, 0.35, 0.30)
_ATTACK_S = 0.0005  # onset ramp: the energy rises within the first millisecond
_RELEASE_S = 0.005  # fade at the end so no sound stops with a click


def _decay(t: np.ndarray, tau: float) -> np.ndarray:
    return np.exp(-t / tau)


def _band_noise(n: int, sr: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """White noise limited to [lo, hi] Hz by zeroing FFT bins (a brick-wall band-pass)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-12)


def _modes(t: np.ndarray, freqs: list[float], amps: list[float], taus: list[float]) -> np.ndarray:
    """Sum of exponentially decaying sinusoids (modal synthesis), cosine phase for a hard start."""
    return sum(a * np.cos(2 * np.pi * f * t) * _decay(t, tau) for f, a, tau in zip(freqs, amps, taus, strict=True))


def _thud(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    freq = 55 + 65 * _decay(t, 0.03)  # pitch drop of a struck membrane
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.cos(phase) * _decay(t, 0.07)


def _snare(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    noise = _band_noise(len(t), sr, 1500.0, 6000.0, rng) * _decay(t, 0.04)
    return noise + 0.4 * np.cos(2 * np.pi * 190 * t) * _decay(t, 0.03)


def _bell(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    ratios = [1.0, 2.0, 2.76, 4.07, 5.4]
    return _modes(t, [660 * r for r in ratios], [1.0, 0.6, 0.5, 0.3, 0.2], [0.15 / (1 + 0.3 * i) for i in range(5)])


def _chirp(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    f0, f1, dur = 500.0, 3000.0, t[-1]
    k = np.log(f1 / f0) / dur
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k  # exponential sweep f0 -> f1
    return np.cos(phase) * _decay(t, 0.12)


def _click(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    tick = _band_noise(len(t), sr, 4000.0, 8000.0, rng) * _decay(t, 0.008)
    return tick + 0.5 * np.cos(2 * np.pi * 3500 * t) * _decay(t, 0.02)


def _knock(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    body = _modes(t, [420.0, 980.0, 1750.0], [1.0, 0.6, 0.35], [0.035, 0.025, 0.02])
    return body + 0.3 * _band_noise(len(t), sr, 300.0, 3000.0, rng) * _decay(t, 0.006)


def _ping(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    return _modes(t, [2400.0, 3570.0, 5130.0], [1.0, 0.7, 0.5], [0.12, 0.10, 0.08])


def _buzz(t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    # band-limited sawtooth: harmonics of 110 Hz up to 4 kHz, amplitude 1/k
    saw = sum(np.sin(2 * np.pi * 110 * k * t) / k for k in range(1, int(4000 // 110) + 1))
    return saw * _decay(t, 0.1)


_SYNTHS: tuple[Callable[[np.ndarray, int, np.random.Generator], np.ndarray], ...] = (
    _thud, _snare, _bell, _chirp, _click, _knock, _ping, _buzz,
)


@functools.lru_cache(maxsize=64)
def _template(class_id: int, sample_rate: int) -> np.ndarray:
    n = round(SOUND_LENGTHS_S[class_id] * sample_rate)
    t = np.arange(n) / sample_rate
    x = _SYNTHS[class_id](t, sample_rate, np.random.default_rng(1000 + class_id))
    env = np.minimum(1.0, (np.arange(n) + 1) / max(1, round(_ATTACK_S * sample_rate)))
    release = max(1, round(_RELEASE_S * sample_rate))
    env[-release:] *= np.linspace(1.0, 0.0, release)
    x = x * env
    x = (x / np.abs(x).max()).astype(np.float32)
    x.setflags(write=False)  # cached: shared between calls
    return x


def class_sound(class_id: int, sample_rate: int = 22050) -> Float[Tensor, "s"]:
    """The fixed sound of class `class_id` at `sample_rate` (float32, peak 1.0, starts at sample 0)."""
    if not 0 <= class_id < len(_SYNTHS):
        raise ValueError(f"class_id must be in [0, {len(_SYNTHS)}), got {class_id} (classes: {', '.join(CLASS_NAMES)})")
    if sample_rate < 16000:
        raise ValueError(f"sample_rate must be at least 16000 Hz so the 8 kHz sounds fit, got {sample_rate}")
    return torch.from_numpy(_template(class_id, sample_rate).copy())
