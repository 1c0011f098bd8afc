"""Feature extractors for the synthetic world, in the roles of the paper's Synchformer, CLIP and CLAP.

The extractor interface (the real-video CLIP and Synchformer extractors follow it too)
- A video extractor is a callable object with attributes `name: str` (its EXTRACTORS name),
  `output_key: str` (the key of its features in a feature dict / shard, e.g. "sync", "clip"),
  `fps: float` (the rate its input frames must have; decode with `video.read_frames(path, fps)` or
  `video.resample_frames`) and `dim: int`, and
  `__call__(frames: UInt8[Tensor, "t h w 3"]) -> Float[Tensor, "t d"]`, one feature row per frame.
- A text extractor (the CLAP role) has the same attributes with `fps = None`, and
  `encode_text(texts: list[str]) -> Float[Tensor, "b c"]`; `__call__` is `encode_text`.
- Builders are registered in `EXTRACTORS` and take flat typed keyword arguments (dim, seed, ...).

The synthetic extractors are fixed functions: no training, deterministic (projections drawn from a
seeded torch.Generator), and they see only frames or text, never the ground-truth events.
- "synthetic_sync" (Synchformer role, 24 fps, key "sync", d=128): per frame, the frame average-pooled
  to an 8x8 grid, its positive difference to the previous frame (what just appeared) on the same grid,
  and a colour histogram of what just appeared (position-free, so the class of a flash is readable
  wherever it happens); a fixed random projection, then tanh. A flash on frame k shows on row k only.
- "synthetic_clip" (CLIP role, 8 fps, key "clip", d=64): per frame, a 4x4x4 RGB histogram (which
  colours, hence which objects, are visible; not when they appeared), square-rooted, projected, tanh.
- "synthetic_clap" (CLAP role, key "clap", c=64): orthonormal fixed vectors, one per class name; a text
  "bell, thud" maps to the unit-normalised mean of its tags' vectors, and `encode_tags(class_ids)`
  gives the same vector from class ids (the audio prompt at training time). Tags are matched
  case-insensitively; an unknown tag is an error listing the known ones (a typo must not silently
  become a different prompt); an empty text gives the zero vector (no tags).
- `synthetic_features(clip, ...)`: all three for a `SyntheticClip` in memory.

References: Synchformer (Iashin et al., 2024), CLIP (Radford et al., 2021), CLAP (Elizalde et al.,
2023; Wu et al., 2023) as used by SpecMaskFoley (shared/reference/specmaskfoley-paper.txt, s. 3).
"""

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from jaxtyping import UInt8
from torch import nn

from controlfoley._protocol import ModuleProtocolMeta
from controlfoley._registry import EXTRACTORS
from controlfoley.config import ConfigError
from controlfoley.data.synthetic import CLASS_NAMES, SyntheticClip
from controlfoley.typing import Float, Tensor

__all__ = [
    "FRAME_SIZE",
    "VideoExtractor",
    "TextExtractor",
    "SyncFeatureExtractor",
    "ClipFeatureExtractor",
    "TagEncoder",
    "synthetic_sync",
    "synthetic_clip",
    "synthetic_clap",
    "synthetic_features",
    "ExtractorSpec",
    "build_extractor",
    "extractors_writing",
]

PATH_ARGS = ("root", "weights", "folder", "checkpoint", "ids_tsv")  # extractor arguments naming files (recorded absolute)

ExtractorSpec = str | tuple[str, Mapping[str, Any]] | Any  # a name, (name, kwargs), or a built extractor


def extractors_writing(key: str) -> list[str]:
    """Registered EXTRACTORS whose features go under `key` by default (the builder's `output_key`
    default, or the `output_key` of the class it returns or is), for hints; a builder that declares
    neither is not built to find out (it may load weights), so it is left out."""
    names = []
    for name in EXTRACTORS.names():
        try:
            sig = EXTRACTORS.signature(name)
        except (TypeError, ValueError):
            continue
        p = sig.parameters.get("output_key")
        builder = EXTRACTORS.get(name)
        made = builder if isinstance(builder, type) else sig.return_annotation
        out = p.default if p is not None and isinstance(p.default, str) else getattr(made, "output_key", None)
        if out == key:
            names.append(name)
    return names


def _expanded(path: Any) -> Any:
    """A path argument with a leading `~` (or `~user`) expanded; anything else as it is."""
    if isinstance(path, str):
        return os.path.expanduser(path)
    return path.expanduser() if isinstance(path, Path) else path


def build_extractor(spec: ExtractorSpec) -> Any:
    """An extractor from an EXTRACTORS name, a (name, builder kwargs) pair, or a built object (as is).
    An `output_key` among the kwargs (the feature the extractor is to write: `--extractor KEY=NAME`)
    goes to a builder that takes it; for one that does not, it is set on the built extractor, as
    `generate` files any extractor under the key it is given. An extractor whose `output_key`
    cannot be set is a ConfigError. The file arguments (PATH_ARGS: root=~/feats) get `~` expanded,
    as a shell would (it does not inside `--extractor sync=NAME,root=~/feats`)."""
    if isinstance(spec, str):
        return EXTRACTORS.build(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        name, kwargs = spec[0], {k: _expanded(v) if k in PATH_ARGS else v for k, v in dict(spec[1]).items()}
        key = kwargs.get("output_key")
        if key is None or EXTRACTORS.takes(name, "output_key"):
            ext = EXTRACTORS.build(name, **kwargs)
        else:
            del kwargs["output_key"]
            ext = EXTRACTORS.build(name, **kwargs)
        if key is not None and getattr(ext, "output_key", None) != key:
            try:
                ext.output_key = key
            except AttributeError as e:  # a read-only property, __slots__ without it
                why = f" ({e})"
            else:
                why = "" if getattr(ext, "output_key", None) == key else f" (it reads {getattr(ext, 'output_key', None)!r} after being set)"
            if why:
                writers = extractors_writing(str(key))
                raise ConfigError(
                    f"extractor {name} writes its own feature {getattr(ext, 'output_key', None)!r} and its output_key cannot be set to "
                    f"{key!r}{why}; use an extractor writing {key!r}{' (' + ', '.join(writers) + ')' if writers else ''}, or give "
                    "this one's builder an output_key argument"
                )
        return ext
    return spec


FRAME_SIZE = 64  # the side of the square frames decoded for a frame extractor without a frame_size of its own (extract and generate alike)

@runtime_checkable
class VideoExtractor(Protocol, metaclass=ModuleProtocolMeta):
    name: str
    output_key: str
    fps: float
    dim: int

    def __call__(self, frames: UInt8[Tensor, "t h w 3"]) -> Float[Tensor, "t d"]: ...


@runtime_checkable
class TextExtractor(Protocol, metaclass=ModuleProtocolMeta):
    name: str
    output_key: str
    dim: int

    def encode_text(self, texts: list[str]) -> Float[Tensor, "b c"]: ...


def _projection(n_in: int, n_out: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_in, n_out, generator=g) / math.sqrt(n_in)


def _colour_histogram(rgb: Float[Tensor, "t 3 h w"], weight: Float[Tensor, "t h w"], levels: int) -> Float[Tensor, "t k"]:
    """Weighted joint RGB histogram with `levels` bins per channel (colours in [0, 1])."""
    q = (rgb * levels).long().clamp_(0, levels - 1)
    bins = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]  # t h w
    hist = torch.zeros(rgb.shape[0], levels**3, dtype=rgb.dtype, device=rgb.device)
    return hist.scatter_add_(1, bins.flatten(1), weight.flatten(1))


class SyncFeatureExtractor(nn.Module):
    """Temporally precise per-frame features (Synchformer role); see the module docstring."""

    name = "synthetic_sync"
    output_key = "sync"
    proj: Tensor  # buffer (registered in __init__)

    def __init__(self, dim: int = 128, seed: int = 0, grid: int = 8, fps: float = 24.0, gain: float = 2.0) -> None:
        super().__init__()
        self.dim, self.grid, self.fps, self.gain = dim, grid, fps, gain
        self.levels = 4
        n_in = 2 * 3 * grid * grid + self.levels**3
        self.register_buffer("proj", _projection(n_in, dim, seed), persistent=False)

    def forward(self, frames: UInt8[Tensor, "t h w 3"]) -> Float[Tensor, "t d"]:
        x = frames.to(self.proj.device, torch.float32).permute(0, 3, 1, 2) / 255  # t 3 h w
        prev = torch.cat([x[:1], x[:-1]])  # the first frame has nothing before it: no onset
        appeared = (x - prev).clamp_min(0)  # t 3 h w
        pooled = F.adaptive_avg_pool2d(torch.cat([x, appeared], 1), self.grid).flatten(1)  # t 6*g*g
        # colours of pixels that just brightened, weighted by how much: position-free class evidence
        weight = appeared.amax(1)
        hist = _colour_histogram(x, weight, self.levels) * (64 / (x.shape[2] * x.shape[3]))  # O(1) for one object of the world
        return torch.tanh(self.gain * torch.cat([pooled, hist], 1) @ self.proj)


class ClipFeatureExtractor(nn.Module):
    """Semantic per-frame features (CLIP role): which objects are visible, not when they appeared."""

    name = "synthetic_clip"
    output_key = "clip"
    proj: Tensor  # buffer (registered in __init__)

    def __init__(self, dim: int = 64, seed: int = 1, levels: int = 4, fps: float = 8.0) -> None:
        super().__init__()
        self.dim, self.levels, self.fps = dim, levels, fps
        self.register_buffer("proj", _projection(levels**3, dim, seed), persistent=False)

    def forward(self, frames: UInt8[Tensor, "t h w 3"]) -> Float[Tensor, "t d"]:
        x = frames.to(self.proj.device, torch.float32).permute(0, 3, 1, 2) / 255
        ones = torch.ones_like(x[:, 0])
        hist = _colour_histogram(x, ones, self.levels) / ones[0].numel()  # fractions of the frame
        return torch.tanh(4.0 * hist.sqrt() @ self.proj)


class TagEncoder(nn.Module):
    """Tag embeddings (CLAP role): text "a, b" or class ids -> unit mean of fixed per-tag vectors."""

    name = "synthetic_clap"
    output_key = "clap"
    fps = None
    vectors: Tensor  # buffer (registered in __init__): n_tags c

    def __init__(self, dim: int = 64, seed: int = 2, tags: Sequence[str] = CLASS_NAMES) -> None:
        super().__init__()
        self.dim, self.tags = dim, tuple(t.lower() for t in tags)
        if len(set(self.tags)) != len(self.tags):
            raise ConfigError(f"tags must be unique, got {list(tags)}")
        g = torch.Generator().manual_seed(seed)
        vectors = torch.randn(dim, len(self.tags), generator=g)
        if len(self.tags) <= dim:
            vectors = torch.linalg.qr(vectors).Q  # orthonormal: tag sets are as far apart as they can be
        self.register_buffer("vectors", F.normalize(vectors.T, dim=1), persistent=False)  # n_tags c

    def _tag_ids(self, text: str) -> list[int]:
        words = [w.strip().lower() for w in text.split(",")]
        unknown = [w for w in words if w and w not in self.tags]
        if unknown:
            raise ConfigError(f"unknown tag(s) {unknown} in prompt {text!r}; known tags: {', '.join(self.tags)}")
        return [self.tags.index(w) for w in words if w]

    def _embed(self, ids: Sequence[int]) -> Float[Tensor, "c"]:
        if not ids:
            return torch.zeros(self.dim, device=self.vectors.device)
        return F.normalize(self.vectors[torch.tensor(sorted(set(ids)), device=self.vectors.device)].mean(0), dim=0)

    def encode_text(self, texts: list[str]) -> Float[Tensor, "b c"]:
        """Comma-separated tag lists, e.g. ["bell, thud", "click"] -> [2, c]; a repeated tag counts once."""
        return torch.stack([self._embed(self._tag_ids(t)) for t in texts])

    def encode_tags(self, class_ids: Sequence[int]) -> Float[Tensor, "c"]:
        """The embedding of the classes that sound in a clip (the audio prompt at training time)."""
        bad = [c for c in class_ids if not 0 <= c < len(self.tags)]
        if bad:
            raise ConfigError(f"class ids {bad} out of range: there are {len(self.tags)} tags ({', '.join(self.tags)})")
        return self._embed(class_ids)

    def forward(self, texts: list[str]) -> Float[Tensor, "b c"]:
        return self.encode_text(texts)


@EXTRACTORS.register("synthetic_sync")
def synthetic_sync(*, dim: int = 128, seed: int = 0, grid: int = 8) -> SyncFeatureExtractor:
    """Synchformer-role features of the synthetic world at 24 fps."""
    return SyncFeatureExtractor(dim=dim, seed=seed, grid=grid)


@EXTRACTORS.register("synthetic_clip")
def synthetic_clip(*, dim: int = 64, seed: int = 1, levels: int = 4) -> ClipFeatureExtractor:
    """CLIP-role features of the synthetic world at 8 fps."""
    return ClipFeatureExtractor(dim=dim, seed=seed, levels=levels)


@EXTRACTORS.register("synthetic_clap")
def synthetic_clap(*, dim: int = 64, seed: int = 2) -> TagEncoder:
    """CLAP-role tag embeddings over the world's class names."""
    return TagEncoder(dim=dim, seed=seed)


@torch.no_grad()
def synthetic_features(
    clip: SyntheticClip,
    sync: SyncFeatureExtractor | None = None,
    semantic: ClipFeatureExtractor | None = None,
    tags: TagEncoder | None = None,
) -> dict[str, Tensor]:
    """{"sync": [t24, d], "clip": [t8, d], "clap": [c]} for a clip in memory (frames resampled as on decode)."""
    from controlfoley.video import resample_frames

    sync = sync or synthetic_sync()
    semantic = semantic or synthetic_clip()
    tags = tags or synthetic_clap()
    return {
        sync.output_key: sync(resample_frames(clip.frames, clip.fps, sync.fps)),
        semantic.output_key: semantic(resample_frames(clip.frames, clip.fps, semantic.fps)),
        tags.output_key: tags.encode_tags(list(clip.class_ids)),
    }
