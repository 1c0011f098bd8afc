"""Feature extractors for real video: CLIP through open_clip, and precomputed Synchformer / CLIP features.

No machine of this project reaches a model hub, so every extractor here reads LOCAL files only.

- "clip_openclip" (`OpenClipExtractor`, CLIP role, key "clip", 8 fps): an open_clip image tower
  built by name (default "ViT-H-14-378-quickgelu", 1024-d, the architecture of open_clip's `dfn5b`
  tag) and loaded strictly from a local weights file (`.safetensors`, or a pickle read with
  `weights_only=True` by open_clip). A custom architecture comes from a local open_clip JSON config
  (`model_config=`, registered under the file's stem); an image tower open_clip builds through
  timm (e.g. ConvNeXt) has no `output_dim`, so its width is read off one embedding. Frames are
  resized to the tower's square input (bicubic, antialiased, aspect not kept: the CLIP stream is
  averaged over time in SpecMaskFoley sec. 3.2, so crops matter little), normalised as the
  weights were trained (`tag=` names the weights' open_clip tag, e.g. "webli" for SigLIP: a local
  file names none; without it, the architecture's config, else the mean/std all its tags share,
  else OpenAI's) and encoded in batches; rows are unit-normalised unless `normalize=False`.
  Needs `pip install 'controlfoley[clip]'`.
- "synchformer_precomputed" / "clip_precomputed" (`PrecomputedFeatures`): features computed
  elsewhere, found per video by the video's file stem, in one of these layouts under `root`:
    1. `ROOT/<stem>.safetensors`: the tensor named `key`, or the file's only tensor; [t, d].
    2. `ROOT/<stem>.npy`: one array [t, d] (float16/32/64).
    3. the layout MMAudio's `training/extract_video_training_latents.py` writes: a TensorDict memmap
       folder ROOT (`meta.json`, and `<key>.memmap` per key, raw C-order arrays of the shape and
       dtype that meta.json records for the key) holding `clip_features` [N, t8, 1024],
       `sync_features` [N, t24, 768] and `text_features` [N, 77, 1024] for N clips, and beside it
       `ROOT.tsv` (tab-separated, header `id`, `label`) whose row i names clip i. `MMAudioFeatures`
       reads it with numpy memory maps (the `tensordict` package is not needed).
  A missing file or clip id is a DataError naming what was looked for; a tensor that is not
  [t, dim] with finite values is a ShapeError naming the file.

Interface. Frame extractors follow `controlfoley.data.extractors.VideoExtractor` (`name`,
`output_key`, `fps`, `dim`, `__call__(frames uint8 [t, h, w, 3]) -> [t, d]`) and add `frame_size`,
the square size frames are decoded at. Precomputed extractors have `name`, `output_key`, `fps`,
`dim` and `features_for(video_path) -> [t, d]` (rows at `fps`, row k at time k / fps) instead of
`__call__`; `controlfoley.pipeline.FoleyPipeline` takes both kinds.

References: open_clip (github.com/mlfoundations/open_clip; `create_model`, `add_model_config`);
Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP);
Iashin et al., "Synchformer" (ICASSP 2024); Cheng et al., MMAudio (feature extraction layout);
tensordict `memmap_` folder layout (meta.json + one .memmap file per key).
"""

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import UInt8
from torch import nn

from controlfoley._registry import EXTRACTORS
from controlfoley.errors import CheckpointError, ConfigError, DataError, ShapeError, require
from controlfoley.typing import Float, Tensor

__all__ = [
    "check_unique_stems",
    "OpenClipExtractor",
    "PrecomputedFeatures",
    "MMAudioFeatures",
    "clip_openclip",
    "synchformer_precomputed",
    "clip_precomputed",
    "check_feature_rows",
]

DEFAULT_OPENCLIP_MODEL = "ViT-H-14-378-quickgelu"
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # used when a model declares no preprocessing
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_MEMMAP_DTYPES = {
    "torch.float16": np.float16,
    "torch.bfloat16": None,  # numpy has no bfloat16; read as raw 16-bit words and converted by torch
    "torch.float32": np.float32,
    "torch.float64": np.float64,
}


def check_feature_rows(x: Tensor, dim: int, what: str) -> Float[Tensor, "t d"]:
    """`x` as float32 [t, dim] with t >= 1 and finite values, else a ShapeError naming `what`."""
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise ShapeError(f"{what}: features must be [frames, {dim}], got {list(x.shape)}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ShapeError(f"{what}: features hold NaN or infinite values; re-extract them")
    return x


# -- CLIP through open_clip ----------------------------------------------------------------------


class OpenClipExtractor(nn.Module):
    """Per-frame CLIP image embeddings [t, d] from an open_clip model (see the module docstring)."""

    name = "clip_openclip"
    mean: Tensor  # buffers (registered in __init__)
    std: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        fps: float = 8.0,
        output_key: str = "clip",
        normalize: bool = True,
        batch_size: int = 32,
        mean_std: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        self.model: Any = model.eval().requires_grad_(False)  # an open_clip CLIP (encode_image): untyped to us
        visual: Any = model.visual  # its image tower: image_size, output_dim, preprocess_cfg
        size = visual.image_size
        self.frame_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean, std = mean_std if mean_std is not None else (cfg.get("mean", _OPENAI_MEAN), cfg.get("std", _OPENAI_STD))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # open_clip's own towers (VisionTransformer, ModifiedResNet) record their width as
        # `output_dim`; a tower it builds through timm (TimmModel: ConvNeXt, SigLIP, ...) does not,
        # so its width is read off one embedding
        width = getattr(visual, "output_dim", None)
        self.dim = int(width) if width is not None else self._probe_width()
        self.fps, self.output_key = float(fps), output_key
        self.normalize, self.batch_size = normalize, int(batch_size)

    @torch.no_grad()
    def _probe_width(self) -> int:
        param = next(self.model.parameters())
        s = self.frame_size
        return int(self.model.encode_image(torch.zeros(1, 3, s, s, device=param.device, dtype=param.dtype)).shape[-1])

    @torch.no_grad()
    def forward(self, frames: UInt8[Tensor, "t h w 3"]) -> Float[Tensor, "t d"]:
        rows = [self._encode(frames[i : i + self.batch_size]) for i in range(0, frames.shape[0], self.batch_size)]
        return torch.cat(rows)

    def _encode(self, frames: UInt8[Tensor, "t h w 3"]) -> Float[Tensor, "t d"]:
        x = frames.to(self.mean.device).permute(0, 3, 1, 2).float() / 255.0
        s = self.frame_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
        feats = self.model.encode_image((x - self.mean) / self.std)
        return F.normalize(feats.float(), dim=-1) if self.normalize else feats.float()


def _register_openclip_config(open_clip: Any, model_config: str | None, model_name: str | None) -> str:
    """Name of the architecture to build; a local JSON config is registered under its file stem."""
    if model_config is None:
        return model_name or DEFAULT_OPENCLIP_MODEL
    path = Path(model_config)
    if not path.is_file():
        raise ConfigError(f"clip_openclip: model_config {path} does not exist; give a local open_clip JSON model config")
    if model_name is not None and model_name != path.stem:
        raise ConfigError(f"clip_openclip: model_config {path.name} defines architecture {path.stem!r}, not model_name={model_name!r}")
    open_clip.add_model_config(str(path))
    return path.stem


@EXTRACTORS.register("clip_openclip")
def clip_openclip(
    *,
    weights: str,
    model_name: str | None = None,
    model_config: str | None = None,
    fps: float = 8.0,
    output_key: str = "clip",
    normalize: bool = True,
    batch_size: int = 32,
    device: str = "cpu",
    tag: str | None = None,
) -> OpenClipExtractor:
    """CLIP image features through open_clip from a LOCAL weights file (no download).

    The frames are normalised as the weights were trained: open_clip records that per pretrained
    tag, which a local file does not name, so `tag=` (e.g. "webli" for a SigLIP file) takes the
    tag's mean/std. Without it: the architecture's own config where it sets them, else the one
    normalisation all of open_clip's tags of the architecture share (SigLIP's 0.5), else OpenAI's,
    with a warning where the architecture's tags disagree."""
    open_clip = require("open_clip", extra="clip", purpose="the clip_openclip feature extractor")
    name = _register_openclip_config(open_clip, model_config, model_name)
    if name not in open_clip.list_models():
        raise ConfigError(f"clip_openclip: open_clip knows no architecture {name!r}; see open_clip.list_models() or pass model_config=JSON")
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"clip_openclip: weights file {path} not found; this extractor loads local files only")
    try:
        model = open_clip.create_model(name, pretrained=str(path), device=device)
    except (RuntimeError, KeyError, ValueError, OSError, AssertionError) as e:  # open_clip asserts on some mismatches
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"clip_openclip: {path} does not load into open_clip {name!r} ({first})") from e
    mean_std = _openclip_normalisation(open_clip, name, tag, getattr(model.visual, "preprocess_cfg", None) or {})
    return OpenClipExtractor(model, fps=fps, output_key=output_key, normalize=normalize, batch_size=batch_size, mean_std=mean_std)


def _openclip_normalisation(open_clip: Any, name: str, tag: str | None, own: dict[str, Any]) -> tuple[Sequence[float], Sequence[float]] | None:
    """The image mean/std for open_clip architecture `name` loaded from a local file (see
    `clip_openclip`), or None to keep what open_clip set on the model."""
    tags = list(open_clip.list_pretrained_tags_by_model(name))

    def of(t: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        c = open_clip.get_pretrained_cfg(name, t) or {}
        return tuple(c.get("mean", _OPENAI_MEAN)), tuple(c.get("std", _OPENAI_STD))

    if tag is not None:
        if tag not in tags:
            raise ConfigError(
                f"clip_openclip: open_clip knows no pretrained tag {tag!r} for {name!r} (its tags: {', '.join(tags) or 'none'}); "
                "tag= names the weights' tag, for the image normalisation they were trained with"
            )
        return of(tag)
    if (tuple(own.get("mean", _OPENAI_MEAN)), tuple(own.get("std", _OPENAI_STD))) != (_OPENAI_MEAN, _OPENAI_STD):
        return None  # the architecture's own config sets them
    known = {of(t) for t in tags}
    if len(known) == 1:
        return known.pop()
    if len(known) > 1:
        import warnings

        from controlfoley.errors import user_stacklevel

        warnings.warn(
            f"clip_openclip: open_clip's tags of {name!r} normalise images differently ({', '.join(tags)}); using OpenAI's mean/std. "
            "Give the weights' tag (tag=NAME) to normalise as they were trained",
            stacklevel=user_stacklevel(),
        )
    return None


setattr(clip_openclip, "width_from", "its weights: use another CLIP checkpoint")  # named by width errors (control.encoders.check_widths)


# -- precomputed features ------------------------------------------------------------------------


class MMAudioFeatures:
    """Read-only view of an MMAudio-style TensorDict memmap folder plus its `<folder>.tsv` of ids."""

    def __init__(self, folder: str | os.PathLike[str], ids_tsv: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_path}: not a readable TensorDict memmap index ({e})") from e
        self.entries = {k: v for k, v in meta.items() if isinstance(v, dict) and "shape" in v and "dtype" in v}
        tsv = Path(ids_tsv) if ids_tsv is not None else self.folder.with_name(self.folder.name + ".tsv")
        self.ids = _read_ids(tsv)
        self._rows = {clip_id: i for i, clip_id in enumerate(self.ids)}

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def row(self, clip_id: str) -> int:
        if clip_id not in self._rows:
            raise DataError(f"{self.folder}: no clip with id {clip_id!r} in its id list ({len(self.ids)} clips)")
        return self._rows[clip_id]

    def get(self, clip_id: str, key: str) -> Tensor:
        """Features of one clip under `key` (e.g. "sync_features"), as stored (no copy of other clips)."""
        if key not in self.entries:
            raise DataError(f"{self.folder}: no feature {key!r}; it holds {', '.join(self.keys()) or 'nothing'}")
        entry, i = self.entries[key], self.row(clip_id)
        shape = tuple(int(s) for s in entry["shape"])
        if shape[0] != len(self.ids):
            raise DataError(f"{self.folder}: {key} holds {shape[0]} clips but the id list names {len(self.ids)}")
        if entry["dtype"] not in _MEMMAP_DTYPES:
            raise DataError(f"{self.folder}: {key} has dtype {entry['dtype']}; readable: {', '.join(_MEMMAP_DTYPES)}")
        np_dtype = _MEMMAP_DTYPES[entry["dtype"]] or np.int16
        path = self.folder / f"{key}.memmap"
        expected = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        if not path.is_file() or path.stat().st_size < expected:
            raise DataError(f"{path}: missing or shorter than the {expected} bytes that meta.json announces (shape {list(shape)})")
        rows = np.memmap(path, dtype=np_dtype, mode="r", shape=shape)
        out = torch.from_numpy(np.array(rows[i]))
        return out.view(torch.bfloat16) if entry["dtype"] == "torch.bfloat16" else out


def _read_ids(tsv: Path) -> list[str]:
    try:
        with tsv.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise DataError(f"{tsv}: the id list of the MMAudio feature folder is missing ({e.strerror or e})") from e
    if not rows or "id" not in rows[0]:
        raise DataError(f"{tsv}: expected a tab-separated table with an 'id' column")
    return [str(r["id"]) for r in rows]


def check_unique_stems(extractors: Sequence[Any], videos: Sequence[str | os.PathLike[str]]) -> None:
    """Precomputed features are found by the video's file name without its suffix: two inputs with
    one stem (a/clip.mp4 and b/clip.mp4, clip.mp4 and clip.mov) would silently get the same
    features. A ConfigError names them, before any file is read."""
    keyed = [e for e in extractors if isinstance(e, PrecomputedFeatures)]
    if not keyed:
        return
    seen: dict[str, str] = {}
    clashes = []
    for v in videos:
        stem = Path(v).stem
        if stem in seen:
            clashes.append(f"{seen[stem]} and {v}")
        seen.setdefault(stem, str(v))
    if clashes:
        names = ", ".join(sorted({e.name for e in keyed}))
        raise ConfigError(
            f"{names} find each video's features by its file name without suffix (in {keyed[0].root}), and {len(clashes)} pair(s) of inputs "
            f"share one: {'; '.join(clashes[:3])}{' ...' if len(clashes) > 3 else ''}. They would get the same features: rename one "
            "(and its feature file), or run them separately with their own feature folders"
        )


class PrecomputedFeatures:
    """Features computed elsewhere, one [t, dim] tensor per video (layouts in the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str,
        key: str,
        output_key: str,
        fps: float,
        dim: int,
        ids_tsv: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{name}: feature folder {self.root} does not exist")
        self.name, self.key, self.output_key = name, key, output_key
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise ConfigError(f"{name}: fps must be a positive number (feature rows per second of video), got {fps!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"{name}: dim must be a positive int (the features' width), got {dim!r}")
        self.fps, self.dim = float(fps), int(dim)
        self.store = MMAudioFeatures(self.root, ids_tsv) if (self.root / "meta.json").is_file() else None

    def features_for(self, video_path: str | os.PathLike[str]) -> Float[Tensor, "t d"]:
        """The [t, dim] features of `video_path` (looked up by its file stem)."""
        stem = Path(video_path).stem
        if self.store is not None:
            return check_feature_rows(self.store.get(stem, self.key), self.dim, f"{self.root} [{stem}] {self.key}")
        for suffix, read in ((".safetensors", self._read_safetensors), (".npy", _read_npy)):
            path = self.root / f"{stem}{suffix}"
            if path.is_file():
                return check_feature_rows(read(path), self.dim, str(path))
        raise DataError(
            f"{self.name}: no features for video {Path(video_path).name}: looked for {self.root / stem}.safetensors and .npy"
        )

    def _read_safetensors(self, path: Path) -> Tensor:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                if self.key not in keys and len(keys) != 1:
                    raise DataError(f"{path}: holds {keys}, not {self.key!r}; name the tensor {self.key!r} or keep one tensor per file")
                return f.get_tensor(self.key if self.key in keys else keys[0])
        except (SafetensorError, OSError) as e:
            raise DataError(f"{path}: not a readable safetensors file ({e})") from e

    def __repr__(self) -> str:
        layout = "mmaudio memmap" if self.store is not None else "per-clip files"
        return f"PrecomputedFeatures({self.name!r}, root={str(self.root)!r}, {layout}, key={self.key!r}, fps={self.fps}, dim={self.dim})"


def _read_npy(path: Path) -> Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from e
    if arr.dtype.kind != "f":
        raise ShapeError(f"{path}: features must be floating point, got {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


@EXTRACTORS.register("synchformer_precomputed")
def synchformer_precomputed(
    *,
    root: str,
    key: str = "sync_features",
    output_key: str = "sync",
    fps: float = 24.0,
    dim: int = 768,
    ids_tsv: str | None = None,
) -> PrecomputedFeatures:
    """Precomputed Synchformer features (24 per second, 768-d) per video file."""
    return PrecomputedFeatures(root, name="synchformer_precomputed", key=key, output_key=output_key, fps=fps, dim=dim, ids_tsv=ids_tsv)


setattr(synchformer_precomputed, "width_from", "its feature files")  # named by width errors (control.encoders.check_widths)
setattr(synchformer_precomputed, "precomputed", True)  # features of given files only: never a default for new videos (pipeline_parts)


@EXTRACTORS.register("clip_precomputed")
def clip_precomputed(
    *,
    root: str,
    key: str = "clip_features",
    output_key: str = "clip",
    fps: float = 8.0,
    dim: int = 1024,
    ids_tsv: str | None = None,
) -> PrecomputedFeatures:
    """Precomputed CLIP image features (8 per second, 1024-d) per video file."""
    return PrecomputedFeatures(root, name="clip_precomputed", key=key, output_key=output_key, fps=fps, dim=dim, ids_tsv=ids_tsv)


setattr(clip_precomputed, "width_from", "its feature files")  # named by width errors (control.encoders.check_widths)
setattr(clip_precomputed, "precomputed", True)
