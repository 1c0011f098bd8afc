"""The contract every masked-token backbone satisfies (SpecMaskGIT now; user backbones through
the BACKBONES registry).

Notable features:
- A `typing.Protocol`, checkable at run time with `isinstance(obj, Backbone)` on every supported
  Python (members exist, not their signatures; `controlfoley._protocol`: Python 3.12's own check
  misses a module's submodules); no base class to inherit from. `build_model` checks it and names
  what is missing, so a broken user backbone fails at build time, not inside a forward.
- Three stages, so that the ControlNet and the fast sampler can work between them: `embed`
  (tokens, mask and text condition -> hidden states), `forward_blocks` (the block loop, adding
  `residuals[i]` after block i: the ControlNet's injection points), `logits` (the vocabulary head,
  only at the positions asked for).
- The ControlNet is a trainable copy of the first blocks: it needs `blocks` (an `nn.ModuleList`
  whose first blocks it copies strictly) and `new_block()` (a fresh block of the same shape).
  A backbone-only model (no video) does not use them.
- Optional `cond_proj`: the module only a text condition reaches; the backbone recipe freezes it
  when the dataset has no text embeddings (so it is not decayed towards zero for nothing).
- Activation checkpointing (`SpecMaskFoley.enable_activation_checkpointing`) needs `blocks` too:
  `recompute_blocks` makes each block recompute its activations in the backward pass, for any
  `forward_blocks` that calls its blocks (`blk(x)` or `blk.forward(x)`).

Builders receive `vocab_size` (the tokenizer's codebook) and `grid` (its token grid (F, T)).
"""

import copy
import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from controlfoley._protocol import ModuleProtocolMeta
from controlfoley.errors import ShapeError
from controlfoley.typing import Bool, Float, Int, Tensor

__all__ = ["Backbone", "BACKBONE_MEMBERS", "CONTROL_MEMBERS", "RecomputedForward", "check_logits", "recompute_blocks", "recomputes"]

BACKBONE_MEMBERS = ("vocab_size", "dim", "cond_dim", "embed", "forward_blocks", "logits")
CONTROL_MEMBERS = ("blocks", "new_block")  # what the ControlNet copies


@runtime_checkable
class Backbone(Protocol, metaclass=ModuleProtocolMeta):
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


class RecomputedForward:
    """A block's forward that keeps only its inputs for the backward pass and recomputes the rest
    there (activation checkpointing: torch.utils.checkpoint, non-reentrant, which restores the RNG
    state for dropout and replays autocast), when the block is in training mode with grad enabled;
    otherwise the block's own forward, unchanged (sampling, validation, inference mode).

    Set on the block instance as its `forward` (`recompute_blocks`), which `nn.Module.__call__`
    looks up: the module tree, the state_dict keys (checkpoints, strict loads, the ControlNet's
    copy of the backbone blocks) and the block's class stay as they are, unlike torch's
    checkpoint_wrapper, which adds a module level to every key. It holds its block by a weak
    reference: a strong one would make every block a reference cycle, whose weights `del model`
    would not free until the garbage collector's next full pass (GPU memory a notebook or a
    process training several models expects back at once). deepcopy and pickle carry it with the
    block (`__deepcopy__`, `__reduce__`). `inner`: a forward already set on the instance (by other
    code), run inside, and put back when checkpointing is switched off."""

    def __init__(self, block: nn.Module, inner: Callable[..., Any] | None = None) -> None:
        self._block, self.inner = weakref.ref(block), inner

    @property
    def block(self) -> nn.Module:
        block = self._block()
        if block is None:  # only reachable by holding this object past its block
            raise RuntimeError("RecomputedForward: its block no longer exists")
        return block

    def __deepcopy__(self, memo: dict[int, Any]) -> "RecomputedForward":
        # within a deepcopy of the block (its __dict__ holds this), the copy of the block is in memo already
        block = self.block
        new_block = memo.get(id(block))
        if new_block is None:  # this object copied on its own: with a copy of its block
            new_block = copy.deepcopy(block, memo)
        return RecomputedForward(new_block, copy.deepcopy(self.inner, memo))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RecomputedForward, (self.block, self.inner))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        block = self.block
        forward = self.inner if self.inner is not None else functools.partial(type(block).forward, block)
        if block.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)


def recompute_blocks(blocks: nn.Module, enabled: bool = True) -> None:
    """Switch activation checkpointing of every block in `blocks` (a ModuleList) on or off;
    switching it on twice wraps nothing twice."""
    for blk in blocks.children():
        current = blk.__dict__.get("forward")
        if isinstance(current, RecomputedForward):
            if not enabled and current.inner is None:
                delattr(blk, "forward")  # the class's forward again
            elif not enabled:
                setattr(blk, "forward", current.inner)
        elif enabled:
            setattr(blk, "forward", RecomputedForward(blk, current))


def recomputes(blocks: nn.Module) -> bool:
    """Whether every block of `blocks` recomputes its activations in the backward pass."""
    children = list(blocks.children())
    return bool(children) and all(isinstance(b.__dict__.get("forward"), RecomputedForward) for b in children)
