"""Register your own backbone: a masked-token transformer built on torch's nn.TransformerEncoderLayer.

A backbone keeps the `Backbone` protocol (controlfoley/backbones/base.py), with no base class to
inherit: `vocab_size`, `dim`, `cond_dim`, three stages (`embed`, `forward_blocks` adding the
ControlNet's residual after block i, `logits` at given positions) and, for models with video,
`blocks` (an nn.ModuleList) and `new_block()`, which the ControlNet copies. `build_model` checks
the contract and names what a backbone lacks.

This script registers "encoder_layers", builds the tiny SpecMaskFoley on it (ControlNet included),
fits a batch of token maps for a few steps, samples, and shows the error a broken backbone gets.

Run:  python examples/custom_backbone.py
"""

import torch
from torch import nn

from controlfoley import BACKBONES, ConfigError, build_model


class EncoderLayerBackbone(nn.Module):
    def __init__(self, *, vocab_size: int, grid: list, dim: int = 128, depth: int = 4, heads: int = 4, cond_dim: int = 64) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.cond_dim, self.heads = vocab_size, dim, cond_dim, heads
        self.tok = nn.Embedding(vocab_size + 1, dim)  # id vocab_size is the mask token
        self.pos = nn.Parameter(0.02 * torch.randn(1, grid[0] * grid[1], dim))
        self.text = nn.Linear(cond_dim, dim)  # the CLAP-role condition, added on the rows that have it
        self.blocks = nn.ModuleList(self.new_block() for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab_size)

    def new_block(self) -> nn.Module:
        return nn.TransformerEncoderLayer(self.dim, self.heads, 4 * self.dim, dropout=0.0, batch_first=True, norm_first=True)

    def embed(self, codes, mask, cond=None, cond_on=None):
        x = self.tok(codes.masked_fill(mask, self.vocab_size)) + self.pos
        if cond is not None:
            on = torch.ones(codes.shape[0], dtype=torch.bool, device=codes.device) if cond_on is None else cond_on
            x = x + torch.where(on[:, None, None], self.text(cond)[:, None, :].to(x.dtype), 0.0)
        return x

    def forward_blocks(self, x, residuals=None):
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if residuals is not None and i < len(residuals) and residuals[i] is not None:
                x = x + residuals[i]
        return x

    def logits(self, h, index=None):
        if index is not None:
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
        return self.head(self.norm(h))


BACKBONES.register("encoder_layers")(EncoderLayerBackbone)  # a class is a builder: vocab_size and grid are wired in


class NoLogits(EncoderLayerBackbone):
    logits = None


BACKBONES.register("no_logits")(NoLogits)


def main() -> None:
    torch.manual_seed(0)
    # switching the backbone by name keeps the preset's settings this builder also accepts (dim, depth, heads, cond_dim)
    model = build_model("specmaskfoley_tiny", backbone="encoder_layers")
    print("backbone:", type(model.backbone).__name__, dict(model.config.backbone.kwargs), "| controlnet copies", len(model.controlnet.blocks), "blocks")
    enc = model.control_encoder
    g = torch.Generator().manual_seed(0)
    feats = {"sync": torch.randn(4, 142, enc.sync_dim, generator=g), "clip": torch.randn(4, 47, enc.clip_dim, generator=g)}
    codes = torch.randint(0, model.backbone.vocab_size, (4, *model.grid), generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(20):  # fit one batch: the loss must fall if gradients reach the user's blocks
        loss, _ = model.loss(codes, features=feats, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"masked-token loss on one batch: {losses[0]:.3f} -> {losses[-1]:.3f} in 20 steps")
    assert losses[-1] < losses[0], "the loss did not fall"
    model.eval()
    out = model.generate({k: v[:1] for k, v in feats.items()}, guidance="cfg_video", steps=6, generator=torch.Generator().manual_seed(0))
    print("sampled token map:", tuple(out.shape))
    try:
        build_model("specmaskfoley_tiny", backbone="no_logits")
    except ConfigError as e:
        print("a broken backbone is named at build time:", str(e).split(";")[0])


if __name__ == "__main__":
    main()
