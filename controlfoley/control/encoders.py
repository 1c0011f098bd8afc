"""Control encoders: named video feature tensors -> one temporal feature sequence [b, t, d].

- `synchformer_clip` (SpecMaskFoley sec. 3.2): Synchformer features (24 fps, 768-d) carry timing;
  CLIP features (8 fps, 1024-d) carry semantics, so they are averaged over time, projected to the
  Synchformer width and added to every Synchformer frame.
- `sync_only`: the Synchformer stream alone (an ablation without the global semantic term).

Every encoder declares `required_features` (the keys it reads) and `out_dim`, and may declare
`feature_dims` (key -> the width it expects): the pipeline and `controlfoley extract` size their
default extractors from it and refuse an extractor of another width before reading any video.
`feature_fps` (key -> frames per second it was trained at) is descriptive: `controlfoley bench`
makes inputs of those lengths (24 fps where an encoder declares none).
"""

from collections.abc import Mapping

import torch
from torch import nn

from controlfoley._registry import CONTROL_ENCODERS, EXTRACTORS
from controlfoley._static import ControlEncoderModule, ModelModule
from controlfoley.errors import ConfigError, ShapeError
from controlfoley.typing import Float, Tensor

__all__ = ["SyncClipEncoder", "SyncOnlyEncoder", "check_feature", "check_widths", "control_encoder_of", "feature_dims", "SYNC_FPS", "CLIP_FPS"]

# the paper's feature rates: sec. 4.2's 240 Synchformer and 80 CLIP frames per 10 s clip (sec. 3.2
# says "25 Hz" for Synchformer; 24 is what the frame counts give, as in MMAudio); `feature_fps` declares them
SYNC_FPS, CLIP_FPS = 24.0, 8.0


def feature_dims(encoder: nn.Module) -> dict[str, int]:
    """Feature key -> width a control encoder expects, from its optional `feature_dims` (empty if it
    declares none: its features are then checked only when it reads them)."""
    return {str(k): int(v) for k, v in dict(getattr(encoder, "feature_dims", None) or {}).items()}


def control_encoder_of(model: ModelModule) -> ControlEncoderModule:
    """`model.control_encoder`, for a model with video control (`has_control`: build_model makes the
    control encoder, aligner and ControlNet together); a ConfigError naming the model if it has none."""
    enc = model.control_encoder
    if enc is None:
        raise ConfigError(
            f"model {model.config.name!r} has no control encoder, so it takes no video features (a backbone alone, "
            "or its control encoder removed after building)"
        )
    return enc


def _dim_hint(name: str, want: int) -> str:
    """How to get width `want` from extractor `name`: " (e.g. NAME,dim=N)" where its builder takes a
    width, else what fixes it (the builder's `width_from`: a real model's weights, precomputed files)."""
    if name not in EXTRACTORS:  # a built object passed directly, not a registered name
        return ""
    fixed = getattr(EXTRACTORS.get(name), "width_from", None)
    takes_dim = "dim" in EXTRACTORS.accepted_args(name)
    if fixed and takes_dim:  # precomputed features: the argument says the width, the files must hold it
        return f" (e.g. {name},dim={want}; {fixed} must hold features of that width)"
    if fixed:
        return f" (its width is fixed by {fixed})"
    return f" (e.g. {name},dim={want})" if takes_dim else ""


def check_widths(
    model: ModelModule,
    video: Mapping[str, tuple[str, int]],
    text: tuple[str, int] | None,
    *,
    taker: str,
    error: type[Exception],
) -> None:
    """Extractors whose widths `model` cannot take fail here, once, before any video is read.
    `video`: feature key -> (extractor name, width); `text`: (text extractor name, width);
    `taker` names the model in the message ("preset 'x'"), `error` is the caller's error class."""
    dims = feature_dims(control_encoder_of(model)) if getattr(model, "has_control", False) else {}
    for key, (name, got) in video.items():
        want = dims.get(key)
        if want is not None and int(got) != want:
            raise error(
                f"extractor {name} gives {got}-wide {key!r} features but {taker} takes {want}; "
                f"use an extractor of width {want}{_dim_hint(name, want)}"
            )
    want = int(model.backbone.cond_dim)
    if text is not None and int(text[1]) != want:
        raise error(
            f"text extractor {text[0]} gives {text[1]}-wide embeddings but {taker} takes {want}; "
            f"use one of width {want}{_dim_hint(text[0], want)}"
        )


def check_feature(features: dict[str, Tensor], key: str, dim: int) -> Float[Tensor, "b t d"]:
    """Fetch `features[key]` as [b, t, dim], finite; otherwise a ShapeError naming the problem."""
    if key not in features:
        raise ShapeError(f"video feature {key!r} is missing; got keys {sorted(features)}. Extract it first (controlfoley extract).")
    x = features[key]
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ShapeError(f"video feature {key!r} must be [batch, frames, {dim}], got {list(x.shape)}")
    if x.shape[1] < 1:
        raise ShapeError(f"video feature {key!r} has zero frames")
    if not torch.isfinite(x).all():
        raise ShapeError(f"video feature {key!r} contains NaN or inf values; re-extract the features of that clip")
    return x


class SyncClipEncoder(nn.Module):
    """sync [b, t, ds] + proj(mean_t clip [b, t8, dc]) -> [b, t, ds]."""

    def __init__(self, sync_dim: int, clip_dim: int, sync_key: str = "sync", clip_key: str = "clip") -> None:
        super().__init__()
        self.sync_dim, self.clip_dim, self.out_dim = sync_dim, clip_dim, sync_dim
        self.sync_key, self.clip_key = sync_key, clip_key
        self.required_features = (sync_key, clip_key)
        self.feature_dims = {sync_key: sync_dim, clip_key: clip_dim}
        self.feature_fps = {sync_key: SYNC_FPS, clip_key: CLIP_FPS}
        self.clip_proj = nn.Linear(clip_dim, sync_dim)

    def forward(self, features: dict[str, Tensor]) -> Float[Tensor, "b t d"]:
        sync = check_feature(features, self.sync_key, self.sync_dim)
        clip = check_feature(features, self.clip_key, self.clip_dim)
        if clip.shape[0] != sync.shape[0]:
            raise ShapeError(f"batch sizes of {self.sync_key!r} ({sync.shape[0]}) and {self.clip_key!r} ({clip.shape[0]}) differ")
        return sync + self.clip_proj(clip.mean(dim=1))[:, None, :].to(sync.dtype)


class SyncOnlyEncoder(nn.Module):
    def __init__(self, sync_dim: int, sync_key: str = "sync") -> None:
        super().__init__()
        self.sync_dim = self.out_dim = sync_dim
        self.sync_key = sync_key
        self.required_features = (sync_key,)
        self.feature_dims = {sync_key: sync_dim}
        self.feature_fps = {sync_key: SYNC_FPS}

    def forward(self, features: dict[str, Tensor]) -> Float[Tensor, "b t d"]:
        return check_feature(features, self.sync_key, self.sync_dim)


@CONTROL_ENCODERS.register("synchformer_clip")
def synchformer_clip(*, sync_dim: int = 768, clip_dim: int = 1024, sync_key: str = "sync", clip_key: str = "clip") -> SyncClipEncoder:
    """Synchformer + time-averaged CLIP (paper sec. 3.2)."""
    return SyncClipEncoder(sync_dim, clip_dim, sync_key, clip_key)


@CONTROL_ENCODERS.register("sync_only")
def sync_only(*, sync_dim: int = 768, sync_key: str = "sync") -> SyncOnlyEncoder:
    """Synchformer features alone (ablation)."""
    return SyncOnlyEncoder(sync_dim, sync_key)
