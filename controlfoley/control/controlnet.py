"""Transformer ControlNet (PixArt-delta / DiT ControlNet style), as used by SpecMaskFoley sec. 3.3.

- The branch is a trainable copy of the first `n_blocks` backbone blocks, copied block by block
  with strict loading (a mismatch cannot pass silently).
- Its input is the backbone's input embedding (tokens, conditional or unconditional mask,
  positions) plus the aligned video features through a zero-initialised linear.
- After copied block i a zero-initialised linear produces a residual; `injection_map` decides
  after which backbone block it is added. At initialisation every residual is exactly zero, so the
  composite model's logits equal the backbone's.
"""

import math

import torch
from torch import nn

from controlfoley._static import BackboneModule
from controlfoley.errors import ConfigError
from controlfoley.typing import Float, Tensor

__all__ = ["ControlNet", "injection_map", "zero_linear", "INJECTION_RULES"]

INJECTION_RULES = ("aligned", "interval")


def injection_map(n_control: int, n_backbone: int, rule: str = "aligned") -> list[int | None]:
    """For each backbone block j, the index of the control residual added after it (or None).

    - "aligned" (SpecMaskFoley, PixArt-delta): residual i after backbone block i, i < n_control.
    - "interval" (SD3 ControlNet in diffusers): control residuals spread over all backbone blocks,
      block j receives residual j // ceil(n_backbone / n_control).
    """
    if not 1 <= n_control <= n_backbone:
        raise ConfigError(
            f"controlnet.n_blocks must be in [1, {n_backbone}] (the backbone depth), got {n_control}; set it with "
            f"build_model(..., controlnet={{'n_blocks': {max(1, min(n_control, n_backbone))}}}) (command line: --model controlnet='{{\"n_blocks\": {max(1, min(n_control, n_backbone))}}}')"
        )
    if rule == "aligned":
        return [j if j < n_control else None for j in range(n_backbone)]
    if rule == "interval":
        step = math.ceil(n_backbone / n_control)
        return [min(j // step, n_control - 1) for j in range(n_backbone)]
    raise ConfigError(f"unknown controlnet injection rule {rule!r}; choose one of {INJECTION_RULES}")


def zero_linear(dim_in: int, dim_out: int) -> nn.Linear:
    lin = nn.Linear(dim_in, dim_out)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class ControlNet(nn.Module):
    """Trainable copy of the first blocks of a backbone, connected through zero-initialised linears."""

    def __init__(self, blocks: nn.ModuleList, dim: int, n_backbone_blocks: int, injection: str = "aligned") -> None:
        super().__init__()
        self.blocks = blocks
        self.injection = injection
        self.map = injection_map(len(blocks), n_backbone_blocks, injection)
        self.cond_in = zero_linear(dim, dim)  # aligned video features -> added to the embedding
        self.outs = nn.ModuleList(zero_linear(dim, dim) for _ in blocks)

    @classmethod
    def from_backbone(cls, backbone: BackboneModule, n_blocks: int, injection: str = "aligned") -> "ControlNet":
        n_backbone = len(backbone.blocks)
        injection_map(n_blocks, n_backbone, injection)  # validate before copying
        blocks = nn.ModuleList(backbone.new_block() for _ in range(n_blocks))
        net = cls(blocks, backbone.dim, n_backbone, injection)
        net.copy_from(backbone)
        return net

    @torch.no_grad()
    def untrained(self) -> bool:
        """Whether every zero-initialised linear is still zero: the branch adds nothing yet (False
        where that cannot be read: a linear replaced by another kind of module)."""
        params = [getattr(lin, name, None) for lin in (self.cond_in, *self.outs) for name in ("weight", "bias")]
        return all(isinstance(p, Tensor) and not p.any() for p in params)

    @torch.no_grad()
    def differs_from(self, backbone: BackboneModule) -> bool:
        """Whether a copied block's tensors are no longer equal to those of the backbone block it
        was copied from (entries that are not tensors, such as a quantised block's extra state, or
        that one side lacks, are not compared)."""
        for i, blk in enumerate(self.blocks):
            theirs = backbone.blocks[i].state_dict()
            for k, v in blk.state_dict().items():
                other = theirs.get(k)
                if isinstance(v, Tensor) and isinstance(other, Tensor) and (v.shape != other.shape or not torch.equal(v, other.to(v.device))):
                    return True
        return False

    @torch.no_grad()
    def copy_from(self, backbone: BackboneModule) -> None:
        """(Re)initialise the copied blocks from the backbone's first blocks, strictly."""
        for i, blk in enumerate(self.blocks):
            blk.load_state_dict(backbone.blocks[i].state_dict(), strict=True)

    def forward(self, x: Float[Tensor, "b l d"], control: Float[Tensor, "b l d"], scale: float = 1.0) -> list[Tensor | None]:
        """Residuals per backbone block (None where nothing is injected), each times `scale`
        (`generate(control_scale=...)`, diffusers' controlnet_conditioning_scale; 1: as trained)."""
        h = x + self.cond_in(control)
        outs: list[Tensor] = []
        for blk, out in zip(self.blocks, self.outs):
            h = blk(h)
            outs.append(out(h) if scale == 1.0 else out(h) * scale)
        return [None if i is None else outs[i] for i in self.map]
