"""Weight-normalised convolutions and strict loading of public GAN-vocoder generator checkpoints.

Features
- `WNConv1d`, `WNConvTranspose1d`: weight norm (Salimans & Kingma, 2016) over dim 0, stored as the
  parameters `weight_g` (magnitude, [dim0, 1, 1]) and `weight_v` (direction), the names that
  `torch.nn.utils.weight_norm` gives and that official HiFi-GAN / MelGAN checkpoints carry. The effective
  weight g * v / ||v|| is recomputed in forward, so a state dict always keeps the public layout.
- `read_state_dict`: safetensors files, or legacy pickles through `load_legacy_checkpoint` (tensors only
  unless the caller trusts the file), unwrapping `{"generator": sd}`; a DDP `module.` prefix is dropped.
- `load_strict`: takes the naming variants of the module's own layout (`_ckpt_kind.adapt_names`: a
  `module.` prefix, either weight-norm naming, weight norm removed into a plain `weight`), compares keys
  and shapes and raises CheckpointError naming the missing, unexpected and mis-shaped tensors (or, for
  another kind of weights file, what it is and where it loads), then loads with `strict=True`.

References: HiFi-GAN (jik876/hifi-gan), MelGAN (descriptinc/melgan-neurips), torch.nn.utils.weight_norm.
"""

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._ckpt_kind import adapt_names, identify_container, layers_beyond, mismatch_advice, strip_prefix
from controlfoley._legacy import load_legacy_checkpoint
from controlfoley.errors import CheckpointError
from controlfoley.typing import Float, Tensor

__all__ = ["WNConv1d", "WNConvTranspose1d", "read_state_dict", "load_strict"]


class _WeightNormConv(nn.Module):
    """Shared parameters of the two weight-normalised convolutions: weight_g, weight_v, bias."""

    def __init__(self, v_shape: tuple[int, int, int], n_bias: int | None, fan_in: int) -> None:
        super().__init__()
        v = torch.empty(v_shape)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # torch's own conv default
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.empty(v_shape[0], 1, 1))
        self.bias = None if n_bias is None else nn.Parameter(torch.empty(n_bias).uniform_(-(fan_in**-0.5), fan_in**-0.5))
        self.reset_magnitude()

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """Set g = ||v|| so the effective weight equals v (what weight_norm does when applied)."""
        self.weight_g.copy_(self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1))

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1))


class WNConv1d(_WeightNormConv):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, dilation: int = 1, padding: int = 0, bias: bool = True
    ) -> None:
        fan_in = in_channels * kernel_size
        super().__init__((out_channels, in_channels, kernel_size), out_channels if bias else None, fan_in)
        self.dilation, self.padding = dilation, padding

    def forward(self, x: Float[Tensor, "b ci t"]) -> Float[Tensor, "b co u"]:
        return F.conv1d(x, self.weight, self.bias, 1, self.padding, self.dilation)


class WNConvTranspose1d(_WeightNormConv):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int = 0, output_padding: int = 0
    ) -> None:
        # a transposed conv's weight is [in, out, k]: weight norm over dim 0 normalises per *input* channel
        super().__init__((in_channels, out_channels, kernel_size), out_channels, out_channels * kernel_size)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding

    def forward(self, x: Float[Tensor, "b ci t"]) -> Float[Tensor, "b co u"]:
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)


def read_state_dict(path: str | os.PathLike[str], *, trust: bool, what: str) -> dict[str, Tensor]:
    """Tensors of a generator checkpoint: plain state dict, `{"generator": sd}`, or a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    obj: Any = load_legacy_checkpoint(path, trust=trust)  # a safetensors file too, found by its content (a cut one is named)
    whole = obj
    if isinstance(obj, Mapping) and "generator" in obj:
        obj = obj["generator"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        known = identify_container(whole)
        fix = f": it is {known.label}; {known.advice(path)}" if known else ""
        raise CheckpointError(
            f"{path} is not a {what} state dict: expected tensors (plain or under 'generator'), found {kind}{fix}"
        )
    return strip_prefix({str(k): v for k, v in obj.items()})  # saved from a DistributedDataParallel wrapper


def load_strict(
    module: nn.Module, sd: Mapping[str, Tensor], *, what: str, source: str, kind: str | None = None, built_from: str = "its kwargs",
    fix: str = "Build the vocoder with the architecture the checkpoint was trained with (its config.json).",
) -> None:
    """Load `sd` (in any naming `adapt_names` maps) into `module` exactly; a disagreement raises
    CheckpointError naming the tensors, or, when the keys are another kind of weights file than
    `kind` (a `_ckpt_kind.Kind` key: "hifigan", "melgan", "bigvgan"), what the file is."""
    own = module.state_dict()
    sd = adapt_names(sd, own)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if (missing or unexpected) and kind is not None and (advice := mismatch_advice(sd, kind, source)):
        raise CheckpointError(advice)
    if unexpected and not missing and not shapes:
        layers = layers_beyond(unexpected, own)
        more = f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""
        if layers:  # tensors of modules this one has, e.g. a third dilation: the file's network is bigger, not padded
            others = len(unexpected) - len(layers)
            more = (f" (+{len(layers) - 8} more)" if len(layers) > 8 else "") + (f" and {others} other key(s)" if others else "")
            raise CheckpointError(
                f"{source} holds every tensor of the {what} and {len(unexpected)} more, inside its modules: {layers[:8]}{more}: "
                f"the file's network has layers this one was built without. {fix}"
            )
        raise CheckpointError(
            f"{source} holds every tensor of the {what} and {len(unexpected)} more: {unexpected[:8]}{more}; drop those keys "
            "from the state dict (state saved beside the weights) and load it again"
        )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} {items[:8]}{more}")
        raise CheckpointError(f"{source} does not match the {what} built from {built_from}: {'; '.join(parts)}. {fix}")
    module.load_state_dict(dict(sd), strict=True)
