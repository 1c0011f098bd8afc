"""The contract every masked-token backbone satisfies (SpecMaskGIT now; user backbones through
the BACKBONES registry).

Notable features:
- A `typing.Protocol`, checkable at run time with `isinstance(obj, Backbone)` (members exist, not
  their signatures); no base class to inherit from. `build_model` checks it and names what is
  missing, so a broken user backbone fails at build time, not inside a forward.
- Three stages, so that the ControlNet and the fast sampler can work between them: `embed`
  (tokens, mask and text condition -> hidden states), `forward_blocks` (the block loop, adding
  `residuals[i]` after block i: the ControlNet's injection points), `logits` (the vocabulary head,
  only at the positions asked for).
- The ControlNet is a trainable copy of the first blocks: it needs `blocks` (an `nn.ModuleList`
  whose first blocks it copies strictly) and `new_block()` (a fresh block of the same shape).
  A backbone-only model (no video) does not use them.
- Optional `cond_proj`: the module only a text condition reaches; the backbone recipe freezes it
  when the dataset has no text embeddings (so it is not decayed towards zero for nothing).

Builders receive `vocab_size` (the tokenizer's codebook) and `grid` (its token grid (F, T)).
"""

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn

from controlfoley.errors import ShapeError
from controlfoley.typing import Bool, Float, Int, Tensor

__all__ = ["Backbone", "BACKBONE_MEMBERS", "CONTROL_MEMBERS", "check_logits"]

BACKBONE_MEMBERS = ("vocab_size", "dim", "cond_dim", "embed", "forward_blocks", "logits")
CONTROL_MEMBERS = ("blocks", "new_block")  # what the ControlNet copies


@runtime_checkable
class Backbone(Protocol):
    """Masked token model over a grid of F*T tokens (row-major, index f*T + t).

    Attributes:
        vocab_size: V, the tokenizer's codebook size; logits are over [0, V).
        dim: width D of the hidden states (the aligner projects video features to it).
        cond_dim: width C of the text (CLAP-role) embedding `embed` takes.
        blocks: the transformer blocks in order (an `nn.ModuleList`); the ControlNet copies the first.
    """

    vocab_size: int
    dim: int
    cond_dim: int
    blocks: nn.ModuleList

    def new_block(self) -> nn.Module:
        """A fresh block with this backbone's hyper-parameters, whose state dict `blocks[i]` loads."""
        ...

    def embed(
        self,
        codes: Int[Tensor, "b l"],
        mask: Bool[Tensor, "b l"],
        cond: Float[Tensor, "b c"] | None = None,
        cond_on: Bool[Tensor, " b"] | None = None,
    ) -> Float[Tensor, "b l d"]:
        """Hidden states of the tokens; masked positions (mask True) carry no token identity.
        `cond`: text embeddings [b, C], used on rows where `cond_on` (all rows if None); no `cond`:
        the unconditional model."""
        ...

    def forward_blocks(self, x: Float[Tensor, "b l d"], residuals: Sequence[Tensor | None] | None = None) -> Float[Tensor, "b l d"]:
        """Run the blocks; `residuals[i]` (if given and not None) is added after block i."""
        ...

    def logits(self, h: Float[Tensor, "b l d"], index: Int[Tensor, "b k"] | None = None) -> Float[Tensor, "b k v"]:
        """Vocabulary logits at every position, or only at `index` (positions gathered per row)."""
        ...


def check_logits(backbone: Any, name: str, logits: Any, rows: int, positions: int, indexed: bool) -> None:
    """`backbone.logits` gave [rows, positions, vocab_size], or a ShapeError naming the backbone.

    Shapes only (no host sync: the sampler calls it at every step, also inside a captured graph).
    A user backbone whose head has another width, or whose `logits` ignores `index`, used to sample
    without an error: the sampler drew tokens of a smaller vocabulary, or scattered the logits of
    the first positions onto the masked ones."""
    want = (rows, positions, int(backbone.vocab_size))
    if isinstance(logits, Tensor) and tuple(logits.shape) == want:
        return
    got = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
    where = f"backbone {name!r} ({type(backbone).__name__})"
    if isinstance(logits, Tensor) and logits.ndim == 3 and indexed and logits.shape[1] != positions:
        hint = (
            f"; it was asked for the {positions} positions in `index` and gave {logits.shape[1]}: logits(h, index) must "
            "gather those positions of h, per row, when index is given (h.gather(1, index[..., None].expand(-1, -1, h.shape[-1])))"
        )
    elif isinstance(logits, Tensor) and logits.ndim == 3 and logits.shape[-1] != want[2]:
        hint = f"; its vocabulary head gives {logits.shape[-1]} logits per position, but vocab_size is {want[2]} (the tokenizer's codebook)"
    else:
        hint = ""
    raise ShapeError(f"{where}.logits returned {got}; it must return [rows, positions, vocab_size] = {list(want)}{hint}")
