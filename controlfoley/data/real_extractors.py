"""Feature extractors for real video: CLIP through open_clip, and precomputed Synchformer / CLIP features.

No machine of this project reaches a model hub, so every extractor here reads LOCAL files only.

- "clip_openclip" (`OpenClipExtractor`, CLIP role, key "clip", 8 fps): an open_clip image tower
  built by name (default "ViT-H-14-378-quickgelu", 1024-d, the architecture of open_clip's `dfn5b`
  tag) and loaded strictly from a local weights file (`.safetensors`, a pickled state dict, or an
  open_clip training checkpoint, read with `weights_only=True` by controlfoley's checked reader, then
  converted as open_clip's `load_checkpoint` converts it; `.npz` / `.npy` by open_clip itself); a
  file that does not fit is named with its missing, extra or wrong-shape tensors. A custom architecture comes from a local open_clip JSON config
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
import logging
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

from controlfoley._ckpt_kind import identify, identify_container, strip_prefix
from controlfoley._legacy import _refusal, load_legacy_checkpoint
from controlfoley._registry import EXTRACTORS
from controlfoley.errors import CheckpointError, ConfigError, DataError, ShapeError, leading_line, require
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


def _some(items: list[str], n: int = 3) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class _NoRandomInitNote(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" note: the model is
    built bare here, and its weights are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _read_openclip_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict in an open_clip weights file, read as open_clip reads one (a plain state dict
    or one under "state_dict", as its training saves; a DDP `module.` prefix dropped) but through
    `load_legacy_checkpoint`: safetensors by content, pickles with `weights_only=True`, Lightning
    checkpoints with inert stand-ins; a file that is none of these, or holds another kind of
    weights, is a CheckpointError naming it."""
    try:
        obj = load_legacy_checkpoint(path, trust=False)
    except CheckpointError as e:
        cause = e.__cause__
        if isinstance(cause, Exception) and "Unsupported global" in _refusal(cause):
            raise CheckpointError(
                f"clip_openclip: {path} holds Python objects besides tensors (torch.load(weights_only=True) refused: {_refusal(cause)}); "
                "this extractor reads plain weights, as open_clip does: save the model's state dict alone where the file loads "
                "(torch.save(model.state_dict(), 'clip.pt'), or safetensors.torch.save_file) and give that file"
            ) from e
        raise CheckpointError(f"clip_openclip: {e}") from e
    sd = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        known = identify_container(obj)
        if known is not None:
            raise CheckpointError(f"clip_openclip: {path} is {known.label}, not open_clip CLIP weights: {known.advice(path)}")
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"clip_openclip: {path} is not an open_clip weights file: expected a dict of tensors (or one under 'state_dict'), "
            f"found {found}; give the CLIP model's state dict (.safetensors, or a torch.save'd state dict)"
        )
    return strip_prefix(sd)


def _build_openclip(open_clip: Any, name: str, device: str) -> nn.Module:
    """open_clip architecture `name` on `device`, without weights (none downloaded: an HF text tower
    is built from its config, as when open_clip loads a full CLIP file into it)."""
    root, quiet = logging.getLogger(), _NoRandomInitNote()
    root.addFilter(quiet)
    try:
        model: nn.Module = open_clip.create_model(name, device=device, pretrained_hf=False)
    except (RuntimeError, KeyError, ValueError, OSError, AssertionError) as e:  # open_clip asserts on some configs
        raise CheckpointError(f"clip_openclip: open_clip cannot build {name!r} ({leading_line(e)}); check the architecture's config") from e
    finally:
        root.removeFilter(quiet)
    return model


def _as_open_clip_loads(open_clip: Any, model: nn.Module, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """`sd` as open_clip's `load_checkpoint` (open_clip/factory.py) hands it to `load_state_dict`:
    third-party layouts converted, an old text-tower naming renamed, `logit_scale` / `logit_bias`
    reshaped or added, the position embeddings resized to the model's grid and context."""
    factory, own = open_clip.factory, model
    sd = dict(sd)
    convert = getattr(factory, "convert_state_dict", None)
    if convert is not None:
        sd = convert(own, sd)
    if "positional_embedding" in sd and not hasattr(own, "positional_embedding"):
        sd = factory.convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(own, key, None)
        if key in sd and param is not None and param.ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(param.shape)
    if "logit_bias" not in sd and getattr(own, "logit_bias", None) is not None:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    sd.pop("text.transformer.embeddings.position_ids", None)  # rebuilt by newer transformers text towers
    factory.resize_pos_embed(sd, own)
    resize_text = getattr(factory, "resize_text_pos_embed", None)
    if resize_text is not None:
        resize_text(sd, own)
    return sd


def _check_openclip_keys(expected: dict[str, Tensor], got: dict[str, Tensor], path: Path, name: str) -> None:
    """A CheckpointError naming the missing, unexpected and wrong-shape tensors of `got` (the file's
    state dict, as open_clip would load it) against `expected` (the model's), or what file it is."""
    # BatchNorm's num_batches_tracked: torch fills it in where a state dict lacks it (open_clip's RN and
    # other BatchNorm towers loaded such files before; a rebuilt dict carries no version metadata)
    missing = sorted(k for k in set(expected) - set(got) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(got))
        # torch loads a 1-d tensor into a 0-d parameter (its first value), as it did before 0.4
        if tuple(got[k].shape) != tuple(expected[k].shape) and not (expected[k].ndim == 0 and got[k].ndim == 1)
    ]
    if not (missing or unexpected or mismatched):
        return
    what = f"clip_openclip: {path} does not load into open_clip {name!r}"
    fix = "the architecture the weights were trained as (model_name=NAME, or model_config=JSON where open_clip lacks it)"
    if (missing or unexpected) and (kind := identify(got)) is not None:
        raise CheckpointError(f"clip_openclip: {path} is {kind.label}, not open_clip CLIP weights: {kind.advice(path)}")
    if unexpected and not missing and not mismatched:
        raise CheckpointError(
            f"{what}: it holds every tensor of the model and {len(unexpected)} more ({_some(unexpected)}): build the extractor with "
            f"{fix}, or, if they are state saved beside the weights, drop those keys and save the file again"
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_some(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_some(mismatched)}")
    raise CheckpointError(f"{what}: " + "; ".join(problems) + f". Build the extractor with {fix}")


def _load_openclip(open_clip: Any, name: str, path: Path, device: str) -> nn.Module:
    """open_clip architecture `name` with the weights of `path`, loaded as open_clip's
    `create_model(name, pretrained=path)` loads them, after checking that they fit (see
    `_read_openclip_state_dict`, `_check_openclip_keys`)."""
    raw = _read_openclip_state_dict(path)
    model = _build_openclip(open_clip, name, device)
    try:
        sd: dict[str, Tensor] | None = _as_open_clip_loads(open_clip, model, raw)
        failure = ""
    except (RuntimeError, KeyError, ValueError, AssertionError, IndexError, AttributeError, TypeError) as e:
        sd, failure = None, leading_line(e)
    _check_openclip_keys(model.state_dict(), raw if sd is None else sd, path, name)  # names what a failed conversion lacked
    if sd is None:
        raise CheckpointError(f"clip_openclip: open_clip cannot convert {path} for {name!r} ({failure}); give a state dict of that architecture")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"clip_openclip: {path} does not load into open_clip {name!r} ({leading_line(e)})") from e
    return model


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
    if path.suffix in (".npz", ".npy"):  # big_vision (SigLIP) numpy weights: open_clip's own converter reads them
        try:
            model = open_clip.create_model(name, pretrained=str(path), device=device)
        except (RuntimeError, KeyError, ValueError, OSError, AssertionError) as e:  # open_clip asserts on some mismatches
            raise CheckpointError(f"clip_openclip: {path} does not load into open_clip {name!r} ({leading_line(e)})") from e
    else:
        model = _load_openclip(open_clip, name, path, device)
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
