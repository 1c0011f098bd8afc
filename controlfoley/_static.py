"""Names that say more to a static type checker than at run time: the model and its parts.

A model's parts are `nn.Module`s that also have the members their contract names (a `Tokenizer`, a
`Backbone`, a control encoder's `out_dim` and `required_features`, ...; `build_model` checks them).
Typed as plain `nn.Module`, every member access is `Tensor | Module` to mypy (torch's
`Module.__getattr__`), and mypy has no intersection type to say "a Module with these members". So,
for type checkers only (`TYPE_CHECKING`), each name below is a class deriving from `nn.Module` and the
part's contract; at run time each is `nn.Module` itself, so the runtime checker (jaxtyping + beartype
under pytest) checks exactly what it checked before, and user parts need not derive from anything.

`ModelModule` is `SpecMaskFoley` to a type checker, for the functions of modules that `model.py`
imports (fast, graphs, checkpoint, ...), which cannot import it back at run time.
"""

from typing import TYPE_CHECKING

from torch import nn

__all__ = ["BackboneModule", "ControlEncoderModule", "MelModule", "ModelModule", "TokenizerModule", "VocoderModule"]

if TYPE_CHECKING:
    from collections.abc import Collection

    from controlfoley.backbones.base import Backbone
    from controlfoley.model import SpecMaskFoley as ModelModule
    from controlfoley.tokenizers.base import Tokenizer

    class TokenizerModule(nn.Module, Tokenizer):
        """An `nn.Module` with the `Tokenizer` members."""

    class BackboneModule(nn.Module, Backbone):
        """An `nn.Module` with the `Backbone` members."""

    class MelModule(nn.Module):
        """A mel front-end: what the model and the vocoders read of it."""

        sample_rate: int
        hop_length: int
        n_mels: int

    class VocoderModule(nn.Module):
        """A vocoder (`controlfoley.audio.vocoders.Vocoder`): normalised mel -> waveform at `sample_rate`."""

        sample_rate: int

    class ControlEncoderModule(nn.Module):
        """A control encoder (`control/encoders.py`; its optional `feature_dims` is read with getattr)."""

        out_dim: int
        required_features: Collection[str]

else:
    ModelModule = TokenizerModule = BackboneModule = MelModule = VocoderModule = ControlEncoderModule = nn.Module
