"""controlfoley: video-synchronised foley synthesis by steering masked generative audio models.

    from controlfoley import build_model, FoleyPipeline
    model = build_model("specmaskfoley")                          # the paper's model (untrained)
    abl = build_model("specmaskfoley", aligner="plain1d", guidance="cfg_video")
    pipe = FoleyPipeline.from_pretrained("specmaskfoley_synthetic")

Importing the package is light (no torch): the modules behind `_LAZY` (the model, the pipeline, the
error classes, ...) load on first use of one of their names; `dir(controlfoley)` lists them too.
"""

import difflib as _difflib  # private names: dir(controlfoley) lists the library, not its imports
import importlib as _importlib
import os as _os
from typing import Any as _Any

# Runtime type checks on request (controlfoley.typing; read here because that module imports torch).
if _os.environ.get("CONTROLFOLEY_TYPECHECK", "").strip().lower() in ("1", "true", "yes", "on"):
    from controlfoley.typing import install_typecheck_hook

    install_typecheck_hook()

from controlfoley._registry import (  # noqa: E402  (after the optional type-check hook)
    ALIGNERS,
    ALL_REGISTRIES,
    BACKBONES,
    CONTROL_ENCODERS,
    EXTRACTORS,
    GUIDANCE,
    MASK_SCHEDULES,
    MEL_FRONTENDS,
    PRESETS,
    RECIPES,
    TOKENIZERS,
    VOCODERS,
    ArgumentError,
    PluginError,
    Registry,
    RegistryError,
    load_plugins,
)
from controlfoley.config import ConfigError, ModelConfig, Part, SamplerConfig  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "build_model": "controlfoley.builder",
    "from_pretrained": "controlfoley.model",
    "SpecMaskFoley": "controlfoley.model",
    "get_preset": "controlfoley.presets",
    "list_presets": "controlfoley.presets",
    "Tokenizer": "controlfoley.tokenizers.base",
    "Backbone": "controlfoley.backbones.base",
    "GuidanceRule": "controlfoley.guidance",
    "Condition": "controlfoley.guidance",
    "FoleyPipeline": "controlfoley.pipeline",
    "FoleyResult": "controlfoley.pipeline",
    "ControlFoleyError": "controlfoley.errors",
    "ShapeError": "controlfoley.errors",
    "MediaError": "controlfoley.errors",
    "CheckpointError": "controlfoley.errors",
    "DataError": "controlfoley.errors",
    "TrainingError": "controlfoley.errors",
    "MissingDependencyError": "controlfoley.errors",
    "RandomWeightsWarning": "controlfoley.errors",
}

__all__ = [
    "ALIGNERS",
    "ALL_REGISTRIES",
    "BACKBONES",
    "CONTROL_ENCODERS",
    "EXTRACTORS",
    "GUIDANCE",
    "MASK_SCHEDULES",
    "MEL_FRONTENDS",
    "PRESETS",
    "RECIPES",
    "TOKENIZERS",
    "VOCODERS",
    "Registry",
    "RegistryError",
    "ArgumentError",
    "PluginError",
    "load_plugins",
    "ConfigError",
    "ModelConfig",
    "Part",
    "SamplerConfig",
    *_LAZY,
]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    close = [] if name.startswith("_") else _difflib.get_close_matches(name, [n for n in (*globals(), *_LAZY) if not n.startswith("_")], n=1)
    raise AttributeError(f"module 'controlfoley' has no attribute {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def __dir__() -> list[str]:
    """The module's names and the lazy ones (not loaded yet), for dir() and tab completion."""
    return sorted({*globals(), *_LAZY})
