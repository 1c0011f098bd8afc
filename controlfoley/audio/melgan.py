"""MelGAN generator as SpecVQGAN ships it (clean-room, from the published architecture); "melgan" vocoder.

Features
- `MelGANGenerator`: one `nn.Sequential` named `model`, so parameters are `model.N.*` as in the public
  checkpoints: reflect pad 3 + conv k7 to 16*ngf channels; per ratio r: LeakyReLU 0.2, ConvTranspose1d
  (kernel 2r, stride r, padding r//2 + r%2, output_padding r%2) halving the channels, then
  `n_residual_layers` residual stacks with dilations 3**j (LeakyReLU 0.2, reflect pad d, conv k3 dilated,
  LeakyReLU 0.2, conv k1; plus a k1 conv shortcut); finally LeakyReLU 0.2, reflect pad 3, conv k7 -> 1, tanh.
  Every conv is weight-normalised (weight_g / weight_v). SpecVQGAN's config: ngf 32, 3 residual layers,
  ratios [8, 8, 2, 2]: 126 tensors, 4.27M parameters.
- `MelGANVocoder`: its input is SpecVQGAN's [0, 1] spectrogram, so it pairs with the "specvqgan" mel
  front-end and maps that front-end's [-1, 1] output back with (x + 1) / 2. Output: [b, n * hop].
- Plain state dicts (SpecVQGAN's vocoder file) or `{"generator": sd}` load strictly and safely.

References: Kumar et al., "MelGAN" (NeurIPS 2019), descriptinc/melgan-neurips; Iashin & Rahtu,
"Taming Visually Guided Sound Generation" (SpecVQGAN, BMVC 2021), v-iashin/SpecVQGAN vocoder.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

from controlfoley._registry import VOCODERS
from controlfoley.audio._weight_norm import WNConv1d, WNConvTranspose1d, load_strict, read_state_dict
from controlfoley.audio.mel import MelFrontEnd, SpecVQGANMel
from controlfoley.config import ConfigError
from controlfoley.errors import warn_random_weights
from controlfoley.typing import Float, Tensor

__all__ = ["MelGANGenerator", "MelGANVocoder", "melgan_vocoder", "load_melgan_generator"]

SLOPE = 0.2


class MelGANResStack(nn.Module):
    """x -> shortcut(x) + block(x); `block` keeps MelGAN's indices (convs at block.2 and block.4)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.LeakyReLU(SLOPE),
            nn.ReflectionPad1d(dilation),
            WNConv1d(channels, channels, 3, dilation=dilation),
            nn.LeakyReLU(SLOPE),
            WNConv1d(channels, channels, 1),
        )
        self.shortcut = WNConv1d(channels, channels, 1)

    def forward(self, x: Float[Tensor, "b c t"]) -> Float[Tensor, "b c t"]:
        return self.shortcut(x) + self.block(x)


class MelGANGenerator(nn.Module):
    """[0, 1] spectrogram [b, m, n] -> waveform [b, 1, n * prod(ratios)]."""

    def __init__(self, *, n_mels: int, ngf: int, n_residual_layers: int, ratios: Sequence[int]) -> None:
        super().__init__()
        if not ratios or any(r <= 0 for r in ratios) or ngf <= 0 or n_residual_layers < 0:
            raise ConfigError(
                f"MelGAN: need positive ratios, ngf > 0 and n_residual_layers >= 0, got ratios={list(ratios)}, "
                f"ngf={ngf}, n_residual_layers={n_residual_layers}"
            )
        self.hop_length = math.prod(ratios)
        ch = ngf * 2 ** len(ratios)
        layers: list[nn.Module] = [nn.ReflectionPad1d(3), WNConv1d(n_mels, ch, 7)]
        for r in ratios:
            layers += [
                nn.LeakyReLU(SLOPE),
                WNConvTranspose1d(ch, ch // 2, 2 * r, stride=r, padding=r // 2 + r % 2, output_padding=r % 2),
            ]
            layers += [MelGANResStack(ch // 2, 3**j) for j in range(n_residual_layers)]
            ch //= 2
        layers += [nn.LeakyReLU(SLOPE), nn.ReflectionPad1d(3), WNConv1d(ch, 1, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # MelGAN draws conv weights from N(0, 0.02)
        for mod in self.modules():
            if isinstance(mod, (WNConv1d, WNConvTranspose1d)):
                mod.weight_v.normal_(0.0, 0.02)
                mod.reset_magnitude()

    def forward(self, spec: Float[Tensor, "b m n"]) -> Float[Tensor, "b 1 s"]:
        return self.model(spec)


def load_melgan_generator(generator: MelGANGenerator, path: str, *, trust: bool = False) -> None:
    """Load a MelGAN generator state dict (`model.N.{weight_g,weight_v,bias}`) strictly."""
    sd = read_state_dict(path, trust=trust, what="MelGAN generator")  # load_strict takes either weight-norm naming
    load_strict(generator, sd, what="MelGAN generator", source=str(path), kind="melgan")


class MelGANVocoder(nn.Module):
    """Normalised SpecVQGAN mel [b, m, n] in [-1, 1] -> waveform [b, n * hop]."""

    def __init__(self, mel: SpecVQGANMel, generator: MelGANGenerator) -> None:
        super().__init__()
        self.mel = mel
        self.generator = generator
        self.sample_rate = mel.sample_rate

    def forward(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b s"]:
        return self.generator(self.mel.to_unit(mel))[:, 0]


@VOCODERS.register("melgan")
def melgan_vocoder(
    *,
    mel: MelFrontEnd,
    checkpoint: str | None = None,
    trust_checkpoint: bool = False,
    ngf: int = 32,
    n_residual_layers: int = 3,
    ratios: Sequence[int] = (8, 8, 2, 2),
) -> MelGANVocoder:
    """SpecVQGAN's MelGAN; `checkpoint` is its generator state dict, loaded strictly."""
    if not isinstance(mel, SpecVQGANMel):
        raise ConfigError(f"the 'melgan' vocoder reads SpecVQGAN's spectrogram; build the 'specvqgan' mel front-end, not {type(mel).__name__}")
    if math.prod(ratios) != mel.hop_length:
        raise ConfigError(f"the 'melgan' vocoder upsamples by {math.prod(ratios)} (ratios {list(ratios)}) but the mel hop is {mel.hop_length}")
    gen = MelGANGenerator(n_mels=mel.n_mels, ngf=ngf, n_residual_layers=n_residual_layers, ratios=ratios)
    if checkpoint is not None:
        load_melgan_generator(gen, checkpoint, trust=trust_checkpoint)
    else:
        warn_random_weights("vocoder", "melgan", "checkpoint")
    return MelGANVocoder(mel, gen)


setattr(melgan_vocoder, "weight_args", ("checkpoint", "trust_checkpoint"))  # a saved model holds these weights (checkpoint.load_model)
