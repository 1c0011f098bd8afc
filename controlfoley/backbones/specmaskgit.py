"""SpecMaskGIT backbone: a pre-norm ViT over a 2-D grid of spectrogram tokens.

Notable features
- Masked token modelling (MaskGIT, Chang et al. 2022; SpecMaskGIT, Comunità et al. 2024): masked
  positions are embedded by a *mask vector* instead of a token embedding.
- Conditional mask (SpecMaskFoley Fig. 2): the mask vector is either a learned "unconditional
  mask" or a projection of a CLAP embedding, chosen per row, so text/audio prompting needs no
  cross-attention.
- Owns its block loop and exposes injection points: `forward_blocks(x, residuals)` adds
  `residuals[i]` to the hidden state after block i (ControlNet, PixArt-delta style).
- Attention through `F.scaled_dot_product_attention` (Flash / memory-efficient kernels on CUDA),
  with an explicit math path selected by a flag read once at construction (timm's `fused_attn`).
- `logits(h, index=...)` evaluates the vocabulary head only on the positions asked for.

Paper numbers (SpecMaskFoley sec. 4.2): 24 blocks, D=768, 8 heads, FFN 3072, ~170M parameters.
"""

from collections.abc import Sequence
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._registry import BACKBONES
from controlfoley.config import ConfigError
from controlfoley.errors import ShapeError
from controlfoley.fast import fused_mlp, gelu_linear
from controlfoley.typing import Bool, Float, Int, Tensor

__all__ = ["Attention", "Block", "SpecMaskGIT", "specmaskgit"]


class Attention(nn.Module):
    """Multi-head self-attention; `fused` picks SDPA, otherwise the explicit math path."""

    fused: Final[bool]

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True, fused: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "b l d"]) -> Float[Tensor, "b l d"]:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, b, h, l, hd)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, l, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.gelu_epilogue = False  # set by controlfoley.fast.fuse_gelu_epilogue (experimental, inference)

    def forward(self, x: Float[Tensor, "b l d"]) -> Float[Tensor, "b l d"]:
        # eager CPU sampling: GELU fused into fc1 by oneDNN. Not looked up under torch.compile: it reads
        # a ContextVar, where dynamo may break the graph (and it never applies to compiled code)
        fused = None if torch.compiler.is_compiling() else fused_mlp(self.fc1, self.act, self.fc2, x)
        if fused is not None:
            return fused
        if self.gelu_epilogue:
            h = gelu_linear(self.fc1, self.act, x)
            if h is not None:
                return self.fc2(h)
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: two residual lines."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, *, fused_attn: bool = True, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, fused=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, ffn_dim)

    def forward(self, x: Float[Tensor, "b l d"]) -> Float[Tensor, "b l d"]:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SpecMaskGIT(nn.Module):
    """Masked-token ViT over `grid = (F, T)` tokens in row-major order (index f*T + t)."""

    def __init__(
        self,
        *,
        vocab_size: int,
        grid: tuple[int, int],
        dim: int,
        depth: int,
        heads: int,
        ffn_dim: int,
        cond_dim: int,
        fused_attn: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.grid = (int(grid[0]), int(grid[1]))
        self.n_tokens = self.grid[0] * self.grid[1]
        self.dim, self.depth, self.heads, self.ffn_dim, self.cond_dim = dim, depth, heads, ffn_dim, cond_dim
        self._block_kwargs: dict[str, Any] = dict(dim=dim, heads=heads, ffn_dim=ffn_dim, fused_attn=fused_attn, norm_eps=norm_eps)
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.n_tokens, dim))
        self.mask_emb = nn.Parameter(torch.zeros(dim))  # the learned "unconditional mask"
        self.cond_proj = nn.Linear(cond_dim, dim)  # CLAP embedding -> "conditional mask"
        self.blocks = nn.ModuleList(self.new_block() for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, vocab_size)
        self.reset_parameters()

    def new_block(self) -> Block:
        """A fresh block with this backbone's hyper-parameters (the ControlNet copies into these)."""
        return Block(**self._block_kwargs)

    def set_fused_attn(self, fused: bool) -> None:
        for m in self.modules():
            if isinstance(m, Attention):
                setattr(m, "fused", fused)  # Final to TorchScript (a constant once scripted), which this sets before

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        nn.init.trunc_normal_(self.mask_emb, std=0.02)
        nn.init.trunc_normal_(self.tok_emb.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # -- the three stages --------------------------------------------------------------------
    def mask_vectors(self, cond: Float[Tensor, "b c"] | None, cond_on: Bool[Tensor, " b"] | None, batch: int) -> Float[Tensor, "b d"]:
        """Per-row mask vector: projected CLAP where `cond_on`, the learned unconditional mask elsewhere."""
        uncond = self.mask_emb.expand(batch, -1)
        if cond is None:
            return uncond
        if cond.shape != (batch, self.cond_dim):
            raise ShapeError(f"condition embedding must be [{batch}, {self.cond_dim}], got {list(cond.shape)}")
        on = torch.ones(batch, dtype=torch.bool, device=cond.device) if cond_on is None else cond_on
        return torch.where(on[:, None], self.cond_proj(cond).to(uncond.dtype), uncond)

    def embed(
        self,
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        cond: Float[Tensor, "b c"] | None = None,
        cond_on: Bool[Tensor, " b"] | None = None,
    ) -> Float[Tensor, "b l d"]:
        """Token embeddings, masked positions replaced by the (conditional) mask vector, plus positions."""
        b, l = codes.shape
        if l != self.n_tokens:
            raise ShapeError(f"backbone expects {self.n_tokens} tokens (grid {self.grid}), got {l}")
        tok = self.tok_emb(codes.masked_fill(mask, 0))  # masked ids are arbitrary; never look them up
        mvec = self.mask_vectors(cond, cond_on, b)
        return torch.where(mask[..., None], mvec[:, None, :].to(tok.dtype), tok) + self.pos_emb

    def forward_blocks(
        self, x: Float[Tensor, "b l d"], residuals: Sequence[Tensor | None] | None = None
    ) -> Float[Tensor, "b l d"]:
        """Run the blocks; `residuals[i]` (if not None) is added to the hidden state after block i."""
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            r = residuals[i] if residuals is not None and i < len(residuals) else None
            if r is not None:
                x = x + r
        return x

    def logits(self, h: Float[Tensor, "b l d"], index: Int[Tensor, "b k"] | None = None) -> Float[Tensor, "b k v"]:
        """Vocabulary logits for all positions, or only the positions in `index` (gathered per row)."""
        if index is not None:
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
        return self.head(self.norm(h))

    def forward(
        self,
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        cond: Float[Tensor, "b c"] | None = None,
        cond_on: Bool[Tensor, " b"] | None = None,
        block_residuals: Sequence[Tensor | None] | None = None,
    ) -> Float[Tensor, "b l v"]:
        return self.logits(self.forward_blocks(self.embed(codes, mask, cond, cond_on), block_residuals))


@BACKBONES.register("specmaskgit")
def specmaskgit(
    *,
    vocab_size: int,
    grid: tuple[int, int] | list[int],
    dim: int = 768,
    depth: int = 24,
    heads: int = 8,
    ffn_dim: int = 3072,
    cond_dim: int = 512,
    fused_attn: bool = True,
) -> SpecMaskGIT:
    """SpecMaskGIT ViT. Defaults are the paper's (24 blocks, D=768, 8 heads, FFN 3072, CLAP 512)."""
    sizes = {"dim": dim, "depth": depth, "heads": heads, "ffn_dim": ffn_dim, "cond_dim": cond_dim}
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ConfigError(f"specmaskgit: {', '.join(f'{k}={v!r}' for k, v in bad.items())}; each must be a positive int")
    if len(grid) != 2 or min(grid) < 1:
        raise ShapeError(f"grid must be (F, T) with positive sizes, got {grid}")
    if dim % heads:
        raise ShapeError(f"dim {dim} must be divisible by heads {heads}")
    return SpecMaskGIT(
        vocab_size=vocab_size,
        grid=(int(grid[0]), int(grid[1])),
        dim=dim,
        depth=depth,
        heads=heads,
        ffn_dim=ffn_dim,
        cond_dim=cond_dim,
        fused_attn=fused_attn,
    )
