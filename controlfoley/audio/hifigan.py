"""HiFi-GAN generator (clean-room, from the published architecture) and the "hifigan" vocoder entry.

Features
- `HifiGanGenerator`: conv_pre (k7) -> per stage [LeakyReLU 0.1, ConvTranspose1d (rate u, kernel k,
  padding (k-u)/2), mean of the multi-receptive-field resblocks] -> LeakyReLU 0.01 -> conv_post (k7) -> tanh.
  Resblock type "1" (pairs of dilated + plain convs, config v1/v2) and type "2" (dilated convs only, v3).
  Defaults are config_v1 (22.05 kHz): rates [8,8,2,2], kernels [16,16,4,4], 512 channels, resblock kernels
  [3,7,11] with dilations [1,3,5]; 234 tensors, 13.94M parameters.
- Parameter names follow the official layout (conv_pre, ups.i, resblocks.j.convs1/convs2.k, conv_post,
  each weight-normalised as weight_g/weight_v), so official `g_02500000`-style files ({"generator": sd}) load
  strictly; files saved with torch's parametrised weight norm (parametrizations.weight.original0/1) too.
- `HifiGanVocoder`: normalised mel of the "hifigan" front-end -> denormalize -> ln-mel -> waveform [b, s],
  s = n_frames * hop. Checkpoints load through `load_legacy_checkpoint` (weights only unless trusted).

References: Kong, Kim & Bae, "HiFi-GAN" (NeurIPS 2020), jik876/hifi-gan config_v1.json; facts in
shared/reference/checkpoint-formats.md.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._registry import VOCODERS
from controlfoley.audio._weight_norm import WNConv1d, WNConvTranspose1d, load_strict, read_state_dict
from controlfoley.audio.mel import HifiGanMel, MelFrontEnd
from controlfoley.config import ConfigError
from controlfoley.errors import warn_random_weights
from controlfoley.typing import Float, Tensor

__all__ = ["HifiGanGenerator", "HifiGanVocoder", "hifigan_vocoder", "load_hifigan_generator"]

LRELU_SLOPE = 0.1  # in the stages and resblocks; the final activation uses torch's default 0.01


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Type "1": for each dilation d, x += conv_1(lrelu(conv_d(lrelu(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        k = kernel_size
        self.convs1 = nn.ModuleList(WNConv1d(channels, channels, k, dilation=d, padding=_same_padding(k, d)) for d in dilations)
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, k, padding=_same_padding(k, 1)) for _ in dilations)

    def forward(self, x: Float[Tensor, "b c t"]) -> Float[Tensor, "b c t"]:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Type "2": for each dilation d, x += conv_d(lrelu(x))."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        k = kernel_size
        self.convs = nn.ModuleList(WNConv1d(channels, channels, k, dilation=d, padding=_same_padding(k, d)) for d in dilations)

    def forward(self, x: Float[Tensor, "b c t"]) -> Float[Tensor, "b c t"]:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HifiGanGenerator(nn.Module):
    """ln-mel [b, m, n] -> waveform [b, 1, n * prod(upsample_rates)]."""

    def __init__(
        self,
        *,
        n_mels: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        upsample_initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        _check_arch(upsample_rates, upsample_kernel_sizes, upsample_initial_channel, resblock, resblock_kernel_sizes, resblock_dilation_sizes)
        block = ResBlock1 if resblock == "1" else ResBlock2
        self.num_kernels = len(resblock_kernel_sizes)
        self.hop_length = math.prod(upsample_rates)
        ch = upsample_initial_channel
        self.conv_pre = WNConv1d(n_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(ch >> i, ch >> (i + 1), k, stride=u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes))
        )
        self.resblocks = nn.ModuleList(
            block(ch >> (i + 1), k, d) for i in range(len(self.ups)) for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes)
        )
        self.conv_post = WNConv1d(ch >> len(self.ups), 1, 7, padding=3)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # HiFi-GAN initialises the upsampling and resblock convs from N(0, 0.01)
        for mod in [*self.ups, *self.resblocks.modules()]:
            if isinstance(mod, (WNConv1d, WNConvTranspose1d)):
                mod.weight_v.normal_(0.0, 0.01)
                mod.reset_magnitude()

    def forward(self, log_mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b 1 s"]:
        x = self.conv_pre(log_mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(blk(x) for blk in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def _check_arch(
    rates: Sequence[int],
    kernels: Sequence[int],
    channels: int,
    resblock: str,
    rb_kernels: Sequence[int],
    rb_dilations: Sequence[Sequence[int]],
) -> None:
    if not rates or len(rates) != len(kernels):
        raise ConfigError(f"HiFi-GAN: upsample_rates {list(rates)} and upsample_kernel_sizes {list(kernels)} need the same non-zero length")
    bad = [(u, k) for u, k in zip(rates, kernels) if u <= 0 or k < u or (k - u) % 2]
    if bad:
        raise ConfigError(f"HiFi-GAN: each upsample kernel k needs k >= rate u and k - u even (exact n*u output); bad (u, k): {bad}")
    if channels % (1 << len(rates)):
        raise ConfigError(f"HiFi-GAN: upsample_initial_channel {channels} must halve {len(rates)} times")
    if resblock not in ("1", "2"):
        raise ConfigError(f"HiFi-GAN: resblock must be '1' (v1/v2) or '2' (v3), got {resblock!r}")
    if not rb_kernels or len(rb_kernels) != len(rb_dilations) or any(k % 2 == 0 for k in rb_kernels):
        raise ConfigError(
            f"HiFi-GAN: resblock_kernel_sizes {list(rb_kernels)} must be odd and pair one-to-one with "
            f"resblock_dilation_sizes {[list(d) for d in rb_dilations]}"
        )


def load_hifigan_generator(generator: HifiGanGenerator, path: str, *, trust: bool = False) -> None:
    """Load an official `{"generator": sd}` file (weight_g/v or parametrised names) strictly."""
    sd = read_state_dict(path, trust=trust, what="HiFi-GAN generator")  # load_strict takes either weight-norm naming
    load_strict(generator, sd, what="HiFi-GAN generator", source=str(path), kind="hifigan")


class HifiGanVocoder(nn.Module):
    """Normalised HiFi-GAN mel [b, m, n] -> waveform [b, n * hop]."""

    def __init__(self, mel: MelFrontEnd, generator: HifiGanGenerator) -> None:
        super().__init__()
        self.mel = mel  # its buffers are not persistent, so sharing it adds nothing to state dicts
        self.generator = generator
        self.sample_rate = mel.sample_rate

    def forward(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b s"]:
        return self.generator(self.mel.denormalize(mel))[:, 0]


def check_hifigan_pairing(mel: MelFrontEnd, vocoder: str, hop_length: int | None = None) -> None:
    """HiFi-GAN-family vocoders are trained on the HiFi-GAN mel (and upsample by its hop)."""
    if not isinstance(mel, HifiGanMel):
        raise ConfigError(f"the {vocoder!r} vocoder reads the HiFi-GAN mel; build the 'hifigan' mel front-end, not {type(mel).__name__}")
    if hop_length is not None and mel.hop_length != hop_length:
        raise ConfigError(f"the {vocoder!r} vocoder upsamples by {hop_length} but the mel front-end's hop is {mel.hop_length}")


@VOCODERS.register("hifigan")
def hifigan_vocoder(
    *,
    mel: MelFrontEnd,
    checkpoint: str | None = None,
    trust_checkpoint: bool = False,
    upsample_rates: Sequence[int] = (8, 8, 2, 2),
    upsample_kernel_sizes: Sequence[int] = (16, 16, 4, 4),
    upsample_initial_channel: int = 512,
    resblock: str = "1",
    resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
    resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
) -> HifiGanVocoder:
    """HiFi-GAN (defaults: config_v1); `checkpoint` is an official generator file, loaded strictly."""
    check_hifigan_pairing(mel, "hifigan", math.prod(upsample_rates))
    gen = HifiGanGenerator(
        n_mels=mel.n_mels,
        upsample_rates=upsample_rates,
        upsample_kernel_sizes=upsample_kernel_sizes,
        upsample_initial_channel=upsample_initial_channel,
        resblock=resblock,
        resblock_kernel_sizes=resblock_kernel_sizes,
        resblock_dilation_sizes=resblock_dilation_sizes,
    )
    if checkpoint is not None:
        load_hifigan_generator(gen, checkpoint, trust=trust_checkpoint)
    else:
        warn_random_weights("vocoder", "hifigan", "checkpoint")
    return HifiGanVocoder(mel, gen)


setattr(hifigan_vocoder, "weight_args", ("checkpoint", "trust_checkpoint"))  # a saved model holds these weights (checkpoint.load_model)
