"""The optional adversarial term of the tokenizer recipe (off by default: `adv_weight = 0`).

- `PatchDiscriminator`: a PatchGAN (Isola et al. 2017, as in VQGAN / SpecVQGAN) over the mel as a
  one-channel image: strided 4x4 convolutions, GroupNorm (per clip, so a batch split over ranks
  gives the same result), LeakyReLU, one logit per patch.
- Hinge losses (VQGAN): discriminator relu(1 - D(x)) + relu(1 + D(x_hat)); generator -D(x_hat).
- Both players update from the same state in one backward pass: the generator term sees the
  discriminator through detached weights (`torch.func.functional_call`), and the discriminator
  term sees a detached reconstruction, so each gradient reaches only its own player. The weight is
  fixed (`adv_weight`, from `adv_start_step` on); VQGAN's adaptive weight is not used.
Losses are returned per clip, so the recipe can sum them like its other terms.

References: Esser et al., "Taming Transformers for High-Resolution Image Synthesis", 2021;
Iashin & Rahtu, "Taming Visually Guided Sound Generation" (SpecVQGAN), 2021.
"""

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley.typing import Float, Tensor

__all__ = ["PatchDiscriminator", "hinge_losses"]


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 64, n_layers: int = 3, groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for _ in range(1, n_layers):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.GroupNorm(min(groups, ch * 2), ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b p"]:
        """Patch logits, flattened per clip."""
        return self.net(mel.unsqueeze(1)).flatten(1)


def hinge_losses(disc: PatchDiscriminator, real: Float[Tensor, "b m n"], fake: Float[Tensor, "b m n"]) -> tuple[Float[Tensor, " b"], Float[Tensor, " b"]]:
    """(generator loss, discriminator loss) per clip; see the module docstring for the gradient flow."""
    d = F.relu(1.0 - disc(real)).mean(1) + F.relu(1.0 + disc(fake.detach())).mean(1)
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    g = -torch.func.functional_call(disc, frozen, (fake,)).mean(1)
    return g, d
