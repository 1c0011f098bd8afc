"""The synthetic audio-visual world: rendered clips whose objects flash exactly when their sounds start.

No pretrained video or audio model can be downloaded on this project's machines, so controlfoley
trains and evaluates its small models on a world it renders itself (docs/DESIGN.md, section 3).

The world
- Classes (up to 8; `n_classes` takes the first ones), each an object of its own colour and shape
  and a short percussive sound with a 0.5 ms attack (see `controlfoley.data.sounds`):
  0 thud: red square, 1 snare: green disc, 2 bell: blue triangle, 3 chirp: yellow diamond,
  4 click: magenta plus, 5 knock: cyan ring, 6 ping: orange bar, 7 buzz: white cross.
- A clip lasts `duration_s` (default 512 * 256 / 22050 = 5.944 s, exactly 512 mel frames at hop 256)
  and holds `min_events`..`max_events` events (scaled with the duration for longer clips). Each
  event is (time, class): times lie on the audio sample grid, in [head_s, duration - tail_s];
  two events of one class are at least `min_gap_s` apart, any two at least `min_gap_any_s` (so each
  onset has its own video frame at 24 fps). Classes may repeat and sounds may overlap.
- Video: `fps` frames per second (default 24), floor(duration * fps) frames of `size` x `size` RGB
  on a dark background. An event's object appears at a random place at full brightness on the frame
  whose interval [k/fps, (k+1)/fps) contains the onset, then fades linearly to nothing over `fade_s`
  (drawn over earlier objects). Nothing announces it on earlier frames.
- Audio: round(duration * sample_rate) samples at 22.05 kHz; each event's class sound starts exactly
  at sample round(time * sample_rate), with a random gain in [0.5, 1]; the sum is peak-normalised
  to `peak`, then a Gaussian noise floor (`noise_floor`, about -60 dBFS) is added.
- Determinism: clip i depends only on (seed, i, duration) through its own numpy generator
  (SeedSequence([seed, i])), never on other clips. Splits are disjoint index ranges with fixed
  offsets: train [0, 1e6), val [1e6, 2e6), test [2e6, 3e6); `world.split("test", n)` gives the first n.
- `write_clip_mp4` writes a clip as an MP4 with its audio; `render_long` makes long clips (>= 40 s)
  for the long-video tests; `class_sound` and `CLASS_COLORS` are exported for template-based evaluation.

References: "SpecMaskFoley: Steering Pretrained Spectral Masked Generative Transformer Toward
Synchronized Video-to-audio Synthesis via ControlNet" (shared/reference/specmaskfoley-paper.txt) for
the roles the world stands in for (VGGSound clips; Synchformer, CLIP and CLAP features); docs/DESIGN.md s. 3.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import UInt8

from controlfoley.data.sounds import CLASS_NAMES, class_sound
from controlfoley.typing import Float, Tensor

__all__ = [
    "CLASS_NAMES",
    "CLASS_COLORS",
    "CLASS_SHAPES",
    "DEFAULT_DURATION_S",
    "SPLIT_OFFSETS",
    "Event",
    "SyntheticClip",
    "SyntheticWorld",
    "class_sound",
    "write_clip_mp4",
    "render_long",
]

DEFAULT_DURATION_S = 512 * 256 / 22050  # 512 mel frames at hop 256, 22.05 kHz
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
_SPLIT_SIZE = 1_000_000
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 40, 40),  # red
    (40, 210, 60),  # green
    (60, 90, 255),  # blue
    (240, 230, 40),  # yellow
    (230, 50, 230),  # magenta
    (40, 220, 240),  # cyan
    (255, 140, 0),  # orange
    (245, 245, 245),  # white
)
CLASS_SHAPES: tuple[str, ...] = ("square", "disc", "triangle", "diamond", "plus", "ring", "bar", "cross")
BACKGROUND: tuple[int, int, int] = (16, 16, 20)


@dataclass(frozen=True, order=True)
class Event:
    """One sound event: onset time in seconds (on the audio sample grid) and class id."""

    time_s: float
    class_id: int

    def sample(self, sample_rate: int) -> int:
        """Index of the first audio sample of the event's sound."""
        return round(self.time_s * sample_rate)

    def frame(self, fps: float) -> int:
        """Index of the video frame whose interval [k/fps, (k+1)/fps) contains the onset."""
        return math.floor(self.time_s * fps + 1e-6)  # a microsecond absorbs float error at frame edges


@dataclass(frozen=True)
class SyntheticClip:
    index: int
    frames: UInt8[Tensor, "n h w 3"]
    fps: float
    audio: Float[Tensor, "s"]
    sample_rate: int
    events: tuple[Event, ...]  # sorted by time
    class_names: tuple[str, ...]  # of the world, indexed by class id

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    @property
    def class_ids(self) -> tuple[int, ...]:
        """Classes that sound in the clip, ascending."""
        return tuple(sorted({e.class_id for e in self.events}))

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.class_names[c] for c in self.class_ids)

    @property
    def prompt(self) -> str:
        """The clip's tags as a text prompt, e.g. "thud, bell"."""
        return ", ".join(self.tags)


def _shape_mask(shape: str, size: int, radius: float, cy: float, cx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (xx - cx) / radius, (yy - cy) / radius
    du, dv, r = np.abs(u), np.abs(v), np.hypot(u, v)
    masks = {
        "square": np.maximum(du, dv) <= 0.8,
        "disc": r <= 1.0,
        "triangle": (v <= 0.8) & (v >= -1.0) & (du <= (v + 1.0) * 0.55),
        "diamond": du + dv <= 1.0,
        "plus": ((du <= 0.3) & (dv <= 1.0)) | ((dv <= 0.3) & (du <= 1.0)),
        "ring": (r >= 0.55) & (r <= 1.0),
        "bar": (du <= 1.0) & (dv <= 0.35),
        "cross": (np.abs(du - dv) <= 0.3) & (np.maximum(du, dv) <= 1.0),
    }
    return masks[shape]


@dataclass(frozen=True)
class SyntheticWorld:
    """A seeded generator of synthetic clips; see the module docstring for what a clip holds."""

    seed: int = 0
    n_classes: int = 8
    duration_s: float = DEFAULT_DURATION_S
    fps: float = 24.0
    size: int = 64
    sample_rate: int = 22050
    min_events: int = 2
    max_events: int = 5
    min_gap_s: float = 0.3  # between two events of one class
    min_gap_any_s: float = 0.08  # between any two events: at least one frame apart at 24 fps
    head_s: float = 0.1  # no onset in the first frames (no previous frame to differ from)
    tail_s: float = 0.3  # no onset in the last 0.3 s, so every sound has room to start and be seen
    fade_s: float = 0.25  # how long a flashed object takes to fade out
    object_scale: float = 0.12  # object radius as a fraction of the frame size
    noise_floor: float = 1e-3  # std of the audio noise floor (about -60 dBFS)
    peak: float = 0.8  # audio peak after normalisation (before the noise floor)

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(CLASS_NAMES):
            raise ValueError(f"n_classes must be in [1, {len(CLASS_NAMES)}], got {self.n_classes}")
        if not 0 <= self.min_events <= self.max_events:
            raise ValueError(f"need 0 <= min_events <= max_events, got {self.min_events}, {self.max_events}")
        if self.duration_s <= self.head_s + self.tail_s:
            raise ValueError(f"duration_s must exceed head_s + tail_s = {self.head_s + self.tail_s}, got {self.duration_s}")
        if self.fps <= 0 or self.size < 16 or self.sample_rate < 16000:
            raise ValueError(f"need fps > 0, size >= 16, sample_rate >= 16000; got {self.fps}, {self.size}, {self.sample_rate}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.n_classes]

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        return CLASS_COLORS[: self.n_classes]

    def split(self, name: str, n: int) -> range:
        """Indices of the first `n` clips of split `name` ("train", "val" or "test"); splits never overlap."""
        if name not in SPLIT_OFFSETS:
            raise ValueError(f"unknown split {name!r}; splits are {', '.join(SPLIT_OFFSETS)}")
        if not 0 <= n <= _SPLIT_SIZE:
            raise ValueError(f"a split holds at most {_SPLIT_SIZE} clips, asked for {n}")
        return range(SPLIT_OFFSETS[name], SPLIT_OFFSETS[name] + n)

    def _duration(self, duration_s: float | None) -> float:
        d = self.duration_s if duration_s is None else duration_s
        if d <= self.head_s + self.tail_s:
            raise ValueError(f"duration_s must exceed head_s + tail_s = {self.head_s + self.tail_s}, got {d}")
        return d

    def _generators(self, index: int) -> list[np.random.Generator]:
        """Independent streams for events, placement and noise: changing how one is drawn keeps the others."""
        if index < 0:
            raise ValueError(f"clip index must be >= 0, got {index}")
        return [np.random.default_rng(s) for s in np.random.SeedSequence([self.seed, index]).spawn(3)]

    def _draw_events(self, rng: np.random.Generator, duration: float) -> tuple[Event, ...]:
        scale = max(1.0, duration / self.duration_s)  # long clips keep the same event density
        n = round(int(rng.integers(self.min_events, self.max_events + 1)) * scale)
        lo, hi = self.head_s, duration - self.tail_s
        events: list[Event] = []
        for _ in range(50 * n):  # rejection sampling; bounded in case the constraints are too tight
            if len(events) == n:
                break
            t = round(rng.uniform(lo, hi) * self.sample_rate) / self.sample_rate
            c = int(rng.integers(self.n_classes))
            if all(abs(t - e.time_s) >= (self.min_gap_s if e.class_id == c else self.min_gap_any_s) for e in events):
                events.append(Event(t, c))
        return tuple(sorted(events))

    def events(self, index: int, *, duration_s: float | None = None) -> tuple[Event, ...]:
        """The ground-truth events of clip `index` without rendering it."""
        return self._draw_events(self._generators(index)[0], self._duration(duration_s))

    def _render_frames(self, events: tuple[Event, ...], rng: np.random.Generator, n_frames: int) -> np.ndarray:
        frames = np.empty((n_frames, self.size, self.size, 3), np.float32)
        frames[:] = BACKGROUND
        radius = self.object_scale * self.size
        fade = max(1, round(self.fade_s * self.fps))
        for ev in events:
            cy, cx = rng.uniform(radius + 1, self.size - radius - 1, size=2)
            mask = _shape_mask(CLASS_SHAPES[ev.class_id], self.size, radius, cy, cx)
            colour = np.asarray(CLASS_COLORS[ev.class_id], np.float32)
            k0 = ev.frame(self.fps)
            for k in range(k0, min(n_frames, k0 + fade)):
                alpha = 1.0 - (k - k0) / fade  # full brightness on the onset frame, then a linear fade
                frames[k][mask] = frames[k][mask] * (1 - alpha) + colour * alpha
        return np.rint(frames).astype(np.uint8)

    def _render_audio(self, events: tuple[Event, ...], rng: np.random.Generator, n_samples: int) -> np.ndarray:
        audio = np.zeros(n_samples, np.float64)
        for ev in events:
            sound = class_sound(ev.class_id, self.sample_rate).numpy()
            s0 = ev.sample(self.sample_rate)
            end = min(n_samples, s0 + len(sound))
            audio[s0:end] += rng.uniform(0.5, 1.0) * sound[: end - s0]
        peak = np.abs(audio).max()
        if peak > 0:
            audio *= self.peak / peak
        audio += self.noise_floor * rng.standard_normal(n_samples)
        return audio.astype(np.float32)

    def clip(self, index: int, *, duration_s: float | None = None) -> SyntheticClip:
        """Render clip `index` (deterministic in (seed, index, duration)); `duration_s` overrides the length."""
        duration = self._duration(duration_s)
        ev_rng, place_rng, noise_rng = self._generators(index)
        events = self._draw_events(ev_rng, duration)
        n_frames = max(1, math.floor(duration * self.fps))
        frames = self._render_frames(events, place_rng, n_frames)
        audio = self._render_audio(events, noise_rng, round(duration * self.sample_rate))
        return SyntheticClip(
            index=index,
            frames=torch.from_numpy(frames),
            fps=self.fps,
            audio=torch.from_numpy(audio),
            sample_rate=self.sample_rate,
            events=events,
            class_names=self.class_names,
        )


def write_clip_mp4(clip: SyntheticClip, path: str | os.PathLike[str]) -> Path:
    """Write a clip as an MP4 (H.264 video, AAC audio) through `controlfoley.video.write_video`."""
    from controlfoley.video import write_video  # PyAV loads only when a clip is written

    return write_video(path, clip.frames, clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)


def render_long(world: SyntheticWorld, index: int, duration_s: float = 40.0) -> SyntheticClip:
    """A long clip (default 40 s) with the world's event density, for tests of windowed generation."""
    if duration_s < world.duration_s:
        raise ValueError(f"render_long is for clips longer than the world's {world.duration_s:.3f} s, got {duration_s}")
    return world.clip(index, duration_s=duration_s)
