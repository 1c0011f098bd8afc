"""Helpers shared by the metrics: waveform coercion and the one mel every metric reads."""

import functools

import numpy as np
import torch

from controlfoley.audio.mel import HifiGanMel
from controlfoley.errors import ShapeError
from controlfoley.typing import Float, Tensor

__all__ = ["as_numpy_wave", "evaluation_mel"]


def as_numpy_wave(wav: Float[Tensor, "s"] | Float[np.ndarray, "s"]) -> Float[np.ndarray, "s"]:
    """A mono waveform as a contiguous float32 numpy array (tensors are detached and moved to CPU)."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    out = np.ascontiguousarray(wav, dtype=np.float32)
    if out.ndim != 1:
        hint = "; for one clip pass wav[0]" if out.ndim == 2 and out.shape[0] == 1 else "; evaluate one waveform at a time"
        raise ShapeError(f"the evaluation takes one mono waveform [samples], got shape {list(out.shape)}{hint}")
    if not np.isfinite(out).all():
        raise ShapeError("the evaluation got a waveform containing NaN or Inf samples; clean the audio first")
    return out


@functools.lru_cache(maxsize=8)
def evaluation_mel(sample_rate: int) -> HifiGanMel:
    """The HiFi-GAN mel (the model's own front-end) at `sample_rate`, built once per rate."""
    return HifiGanMel(sample_rate=sample_rate)
