"""The contract every mel tokenizer satisfies: 2-D ones (SpecVQGAN) now, 1-D ones later.

Notable features:
- A `typing.Protocol`, checkable at run time with `isinstance(obj, Tokenizer)` (which checks that
  the members exist, not their signatures); no base class to inherit from.
- Token maps are always 3-D `[b, f, t]` in row-major order (token index f*T + t); a 1-D tokenizer
  returns F = 1, so backbones, aligners and samplers need no special case.
- `embed_codes` gives the dequantised latents `[b, e, f, t]`, for parts that work in latent space.
- `TrainableTokenizer`: what the `tokenizer` training recipe needs on top (a forward that
  reconstructs through the quantiser; `restart_dead_codes` only when codebook restarts are on).

Reference: docs/DESIGN.md section 2 (Tokenizer interface).
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from controlfoley._protocol import ModuleProtocolMeta
from controlfoley.typing import Float, Int, Tensor

__all__ = ["Tokenizer", "TrainableTokenizer", "RestartableTokenizer"]


@runtime_checkable
class Tokenizer(Protocol, metaclass=ModuleProtocolMeta):
    """Mel spectrogram <-> grid of discrete tokens.

    Attributes:
        codebook_size: number of distinct tokens V; codes lie in [0, V).
        n_mels: mel bins m the tokenizer reads and writes.
        downsample: (mel-bin factor, frame factor) between a mel and its token grid; a 1-D
            tokenizer has mel-bin factor n_mels so that F = 1.
    """

    codebook_size: int
    n_mels: int
    downsample: tuple[int, int]

    def grid(self, n_frames: int) -> tuple[int, int]:
        """Token grid (F, T) of a mel with `n_frames` frames; raises ShapeError for a length it
        cannot tokenize, naming the nearest lengths it can."""
        ...

    def encode(self, mel: Float[Tensor, "b m n"]) -> Int[Tensor, "b f t"]:
        """Mel [b, n_mels, n] -> token indices [b, F, T] with (F, T) = grid(n)."""
        ...

    def decode(self, codes: Int[Tensor, "b f t"]) -> Float[Tensor, "b m n"]:
        """Token indices [b, F, T] -> mel [b, n_mels, n]; raises ShapeError for codes out of range."""
        ...

    def embed_codes(self, codes: Int[Tensor, "b f t"]) -> Float[Tensor, "b e f t"]:
        """Token indices -> their codebook vectors (dequantised latents) [b, e, F, T]."""
        ...


@runtime_checkable
class TrainableTokenizer(Tokenizer, Protocol):
    """A tokenizer the `tokenizer` training recipe can train (an `nn.Module`)."""

    def forward(self, mel: Float[Tensor, "b m n"]) -> tuple[Float[Tensor, "b m n"], Int[Tensor, "b f t"], Float[Tensor, ""]]:
        """Reconstruct through the quantiser: (recon mel [b, m, n], codes [b, F, T], scalar VQ
        loss). Gradients must reach the encoder (e.g. by a straight-through estimator)."""
        ...


@runtime_checkable
class RestartableTokenizer(TrainableTokenizer, Protocol):
    """A trainable tokenizer that supports codebook restarts (`codebook_restart_every > 0`)."""

    def restart_dead_codes(self, mels: Sequence[Float[Tensor, "b m n"]], generator: torch.Generator) -> int:
        """Move the codebook entries that no token of `mels` selects onto randomly chosen latents of
        `mels`; return how many moved. Called once per restart step with the step's micro-batches
        on this rank (encode them one at a time: accumulation exists to bound memory); under
        torch.distributed every rank must reach the same decision (sum usage over ranks) and keep
        one codebook."""
        ...
