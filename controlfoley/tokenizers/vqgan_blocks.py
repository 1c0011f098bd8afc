"""Convolutional encoder and decoder of a VQGAN, laid out like SpecVQGAN's codebook model.

Notable features:
- Parameter names and shapes follow the public SpecVQGAN / taming-transformers layout
  (`conv_in`, `down.{i}.block.{j}`, `down.{i}.attn.{j}`, `down.{i}.downsample.conv`,
  `mid.{block_1,attn_1,block_2}`, `norm_out`, `conv_out`; the decoder mirrors it with
  `up.{i}.upsample.conv` and `num_res_blocks + 1` blocks a level), so official weights load
  strictly without renaming.
- Optional parts are `nn.Identity()` (no attention at a level, no resampling at the last level):
  they hold no parameters, so the state-dict keys match, and forward has no branches.
- Attention is single-head over all positions of the feature map, 1x1-conv q/k/v/proj_out with
  scale c^-0.5, through `F.scaled_dot_product_attention`; an explicit math path is kept for checks.
- `resolution` and `attn_resolutions` count the time axis (848 frames -> 53 at the deepest level).

References: Esser et al., "Taming Transformers for High-Resolution Image Synthesis" (VQGAN), 2021;
Iashin & Rahtu, "Taming Visually Guided Sound Generation" (SpecVQGAN), 2021; facts in
shared/reference/checkpoint-formats.md.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley.typing import Float, Tensor

__all__ = ["ResnetBlock", "AttnBlock", "Downsample", "Upsample", "Encoder", "Decoder"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # SpecVQGAN uses GroupNorm(32, eps 1e-6); the group count does not change any parameter shape.
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int, *, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Float[Tensor, "b ci h w"]) -> Float[Tensor, "b co h w"]:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, residual."""

    def __init__(self, channels: int, *, groups: int, fused: bool = True) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.fused = fused  # False selects the explicit math path (same result, for checking)

    def forward(self, x: Float[Tensor, "b ch h w"]) -> Float[Tensor, "b ch h w"]:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (b, c, h, w) -> (b, 1, h*w, c): one head whose width is the channel count
        q, k, v = (p(hn).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.q, self.k, self.v))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)  # default scale is c^-0.5
        else:
            weights = torch.softmax((q @ k.transpose(-1, -2)) * c**-0.5, dim=-1)
            out = weights @ v
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve both axes: pad one row/column at the end, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Float[Tensor, "b ch h w"]) -> Float[Tensor, "b ch h2 w2"]:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double both axes: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Float[Tensor, "b ch h w"]) -> Float[Tensor, "b ch h2 w2"]:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _MidBlock(nn.Module):
    """resnet - attention - resnet at the deepest level (keys `mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    def __init__(self, channels: int, *, dropout: float, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout=dropout, groups=groups)
        self.attn_1 = AttnBlock(channels, groups=groups)
        self.block_2 = ResnetBlock(channels, channels, dropout=dropout, groups=groups)

    def forward(self, x: Float[Tensor, "b ch h w"]) -> Float[Tensor, "b ch h w"]:
        return self.block_2(self.attn_1(self.block_1(x)))


def _level_blocks(
    in_ch: int, out_ch: int, n_blocks: int, with_attn: bool, *, dropout: float, groups: int
) -> tuple[nn.ModuleList, nn.ModuleList]:
    blocks, attns = nn.ModuleList(), nn.ModuleList()
    for j in range(n_blocks):
        blocks.append(ResnetBlock(in_ch if j == 0 else out_ch, out_ch, dropout=dropout, groups=groups))
        attns.append(AttnBlock(out_ch, groups=groups) if with_attn else nn.Identity())
    return blocks, attns


class _EncoderLevel(nn.Module):
    def __init__(self, blocks: nn.ModuleList, attns: nn.ModuleList, downsample: nn.Module) -> None:
        super().__init__()
        self.block, self.attn, self.downsample = blocks, attns, downsample

    def forward(self, x: Float[Tensor, "b ci h w"]) -> Float[Tensor, "b co h2 w2"]:
        for block, attn in zip(self.block, self.attn, strict=True):
            x = attn(block(x))
        return self.downsample(x)


class _DecoderLevel(nn.Module):
    def __init__(self, blocks: nn.ModuleList, attns: nn.ModuleList, upsample: nn.Module) -> None:
        super().__init__()
        self.block, self.attn, self.upsample = blocks, attns, upsample

    def forward(self, x: Float[Tensor, "b ci h w"]) -> Float[Tensor, "b co h2 w2"]:
        for block, attn in zip(self.block, self.attn, strict=True):
            x = attn(block(x))
        return self.upsample(x)


class Encoder(nn.Module):
    """Image-like (b, in_channels, m, n) -> latent (b, z_channels[*2], m/2^L, n/2^L), L = len(ch_mult)-1."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        in_channels: int,
        z_channels: int,
        double_z: bool,
        dropout: float,
        groups: int,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = resolution, ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks, attns = _level_blocks(
                block_in, block_out, num_res_blocks, res in attn_resolutions, dropout=dropout, groups=groups
            )
            last = i == len(ch_mult) - 1
            self.down.append(_EncoderLevel(blocks, attns, nn.Identity() if last else Downsample(block_out)))
            block_in = block_out
            res = res if last else res // 2
        self.mid = _MidBlock(block_in, dropout=dropout, groups=groups)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Float[Tensor, "b ci m n"]) -> Float[Tensor, "b z f t"]:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (b, z_channels, f, t) -> (b, out_ch, f*2^L, t*2^L); levels run from deepest to shallowest."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        out_ch: int,
        z_channels: int,
        dropout: float,
        groups: int,
    ) -> None:
        super().__init__()
        n_levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n_levels - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _MidBlock(block_in, dropout=dropout, groups=groups)
        levels: list[nn.Module] = []
        for i in reversed(range(n_levels)):
            block_out = ch * ch_mult[i]
            blocks, attns = _level_blocks(
                block_in, block_out, num_res_blocks + 1, res in attn_resolutions, dropout=dropout, groups=groups
            )
            levels.append(_DecoderLevel(blocks, attns, Upsample(block_out) if i > 0 else nn.Identity()))
            block_in = block_out
            res = res * 2 if i > 0 else res
        # `up[i]` is level i (shallowest first), as in the checkpoint; forward walks it backwards.
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: Float[Tensor, "b z f t"]) -> Float[Tensor, "b co m n"]:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
