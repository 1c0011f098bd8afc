"""Which class sounds at each onset: template matching of band-energy profiles on the model's mel.

Features
- `event_profile(log_mel, start)`: the spectral shape of the sound starting at mel frame `start`.
  Mean mel magnitude over the `window_s` (0.2 s) after the onset, minus the background: the per-band
  minimum over the 4 frames (46 ms) before it, which removes a stationary floor and most of the tail of
  an earlier, decaying sound. Then dB relative to the profile's own peak, floored at -`floor_db`
  (60 dB) and shifted to be non-negative: level-invariant, and the silent bands weigh nothing.
- `classify_events(wav, sample_rate, onsets, templates)`: for each onset the class whose template
  profile has the highest cosine similarity with the onset's profile. No learning: the templates are
  the class sounds themselves passed through the same mel and the same profile. Onsets are seconds
  inside the waveform, [0, duration); a NaN one, or one outside, is a ShapeError naming it (and the
  duration), as the onset scores refuse NaN onsets, rather than the nearest frame's class.
- `AudioEventClassifier`: templates built once from one clean sound per class (`from_sounds`,
  `from_class_sound(fn, n_classes, sample_rate)`, or `from_world(SyntheticWorld)`), then `clf(wav, onsets)`.
- The mel is the model's own: the HiFi-GAN mel of controlfoley.audio.mel (n_fft 1024, hop 256,
  80 slaney bands to 8 kHz), so the evaluation sees what the tokenizer and vocoder see.

References: template matching / nearest-centroid classification with cosine similarity on spectral
envelopes (e.g. Herrera-Boyer, Peeters & Dubnov, "Automatic Classification of Musical Instrument
Sounds", J. New Music Research 2003); HiFi-GAN mel (Kong et al., 2020).
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from controlfoley.data.synthetic import SyntheticWorld, class_sound
from controlfoley.errors import ShapeError
from controlfoley.metrics._common import as_numpy_wave, evaluation_mel
from controlfoley.typing import Float, Tensor

__all__ = ["AudioEventClassifier", "classify_events", "event_profile", "WINDOW_S", "FLOOR_DB"]

WINDOW_S = 0.2  # the part of a sound that identifies it: all of the world's attacks and most decays
FLOOR_DB = 60.0  # dynamic range of a profile; quieter bands count as silent
_BACKGROUND_FRAMES = 4  # 46 ms before the onset, at hop 256
_LEAD_S = 0.1  # silence placed before a template sound so that its background estimate is zero


def event_profile(
    log_mel: Float[Tensor, "m n"], start: int, window_frames: int, floor_db: float = FLOOR_DB
) -> Float[Tensor, "m"]:
    """Non-negative band profile (dB above peak - floor_db) of the sound starting at frame `start`."""
    n = log_mel.shape[-1]
    start = min(max(start, 0), n - 1)
    mag = log_mel.double().exp()  # back to linear magnitude: background subtraction is additive there
    after = mag[:, start : min(n, start + window_frames)].mean(dim=-1)
    if start > 0:
        background = mag[:, max(0, start - _BACKGROUND_FRAMES) : start].min(dim=-1).values
        after = (after - background).clamp_min(0.0)
    db = 20.0 * torch.log10(after + 1e-12)
    return (db - db.max() + floor_db).clamp_min(0.0).float()


def _profiles(log_mel: Tensor, onsets: Sequence[float], hop: int, sample_rate: int, window_frames: int) -> Tensor:
    # onset t falls in frame floor(t * sr / hop): that frame is the first one centred after the attack
    rows = [event_profile(log_mel, int(t * sample_rate / hop), window_frames) for t in onsets]
    return torch.stack(rows) if rows else log_mel.new_zeros(0, log_mel.shape[0])


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


_SHOWN = 5  # out-of-range onsets named in an error; the rest are counted


def _check_inside(onsets: Sequence[float], n_samples: int, sample_rate: int) -> None:
    """Every onset within the waveform: [0, duration). One outside has no sound to classify (it was
    classified as whatever the first or last frames held)."""
    duration = n_samples / sample_rate
    outside = [(i, t) for i, t in enumerate(onsets) if not 0.0 <= t < duration]
    if not outside:
        return
    shown = ", ".join(f"{i} ({t:g} s)" for i, t in outside[:_SHOWN])
    more = f" and {len(outside) - _SHOWN} more" if len(outside) > _SHOWN else ""
    raise ShapeError(
        f"{len(outside)} of {len(onsets)} onsets lie outside the audio, which lasts {duration:.3f} s ({n_samples} samples at "
        f"{sample_rate} Hz): onset{'s' if len(outside) > 1 else ''} {shown}{more}; onsets are seconds from the waveform's start, "
        f"in [0, {duration:.3f}): drop those outside it, or check sample_rate and that the onsets are in seconds (not samples or frames)"
    )


def classify_events(
    wav: Float[Tensor, "s"] | Float[np.ndarray, "s"],
    sample_rate: int,
    onsets: Sequence[float],
    templates: Float[Tensor, "k m"] | Float[np.ndarray, "k m"],
    window_s: float = WINDOW_S,
) -> list[int]:
    """Class index (row of `templates`) of the sound starting at each onset, by cosine similarity.
    Onsets are seconds in [0, duration of `wav`); one outside it is a ShapeError naming it."""
    mel = evaluation_mel(sample_rate)
    if isinstance(templates, np.ndarray):
        templates = torch.from_numpy(np.asarray(templates, dtype=np.float32))
    if not isinstance(templates, torch.Tensor) or templates.ndim != 2:
        got = f"shape {list(templates.shape)}" if isinstance(templates, torch.Tensor) else type(templates).__name__
        raise ShapeError(
            f"templates are one band profile per class [classes, {mel.n_mels}], got {got}; "
            "build them with AudioEventClassifier.from_sounds (its .templates), or pass one profile as profile[None]"
        )
    if templates.shape[-1] != mel.n_mels:
        raise ShapeError(f"templates have {templates.shape[-1]} bands but the mel has {mel.n_mels}; build them with the same mel")
    if len(onsets) == 0:
        return []
    for i, t in enumerate(onsets):
        if not math.isfinite(t):
            raise ShapeError(f"onset {i} is {t}: onset times must be finite seconds; drop the NaN/Inf onsets or fix what produced them")
    y = torch.from_numpy(as_numpy_wave(wav))
    if y.numel() < mel.min_samples:
        raise ShapeError(f"classify_events needs at least {mel.min_samples} samples, got {y.numel()}")
    _check_inside(onsets, y.numel(), sample_rate)
    log_mel = mel.log_mel(y)
    window = max(1, round(window_s * sample_rate / mel.hop_length))
    profiles = _profiles(log_mel, onsets, mel.hop_length, sample_rate, window)
    return [int(i) for i in _cosine(profiles, templates.float()).argmax(dim=-1)]


class AudioEventClassifier:
    """Fixed template classifier of the synthetic world's event sounds (no training on any data)."""

    def __init__(self, templates: Float[Tensor, "k m"], sample_rate: int, window_s: float = WINDOW_S) -> None:
        self.templates = templates
        self.sample_rate = sample_rate
        self.window_s = window_s

    @property
    def n_classes(self) -> int:
        return int(self.templates.shape[0])

    @classmethod
    def from_sounds(
        cls, sounds: Sequence[Float[Tensor, "_"] | Float[np.ndarray, "_"]], sample_rate: int, window_s: float = WINDOW_S
    ) -> "AudioEventClassifier":
        """Templates from one clean sound per class (index = class id), through the evaluation's mel path."""
        if len(sounds) == 0:
            raise ShapeError("AudioEventClassifier needs at least one class sound")
        mel = evaluation_mel(sample_rate)
        lead = round(_LEAD_S * sample_rate)
        window = max(1, round(window_s * sample_rate / mel.hop_length))
        rows = []
        for sound in sounds:
            sound = torch.from_numpy(as_numpy_wave(sound))  # one mono waveform, tensor or array
            # silence before and after, so the template goes through exactly the path an event in a clip does
            padded = torch.cat([sound.new_zeros(lead), sound, sound.new_zeros(2 * lead + mel.n_fft)])
            rows.append(_profiles(mel.log_mel(padded), [lead / sample_rate], mel.hop_length, sample_rate, window)[0])
        return cls(torch.stack(rows), sample_rate, window_s)

    @classmethod
    def from_class_sound(
        cls, sound_of: Callable[[int, int], Tensor], n_classes: int, sample_rate: int, window_s: float = WINDOW_S
    ) -> "AudioEventClassifier":
        """Templates from a `sound_of(class_id, sample_rate) -> [s]` function, such as the world's `class_sound`."""
        return cls.from_sounds([sound_of(c, sample_rate) for c in range(n_classes)], sample_rate, window_s)

    @classmethod
    def from_world(cls, world: SyntheticWorld, window_s: float = WINDOW_S) -> "AudioEventClassifier":
        """Templates of the world's class sounds at the world's sample rate."""
        return cls.from_class_sound(class_sound, world.n_classes, world.sample_rate, window_s)

    def __call__(self, wav: Float[Tensor, "s"] | Float[np.ndarray, "s"], onsets: Sequence[float]) -> list[int]:
        return classify_events(wav, self.sample_rate, onsets, self.templates, self.window_s)
