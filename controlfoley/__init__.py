"""controlfoley: video-synchronised foley synthesis by steering masked generative audio models.

    from controlfoley import build_model
    model = build_model("specmaskfoley")                          # the paper's model (untrained)
    abl = build_model("specmaskfoley", aligner="plain1d", guidance="cfg_video")

Importing the package is light: torch-heavy modules load on first use of an attribute.
"""

import importlib
from typing import Any

from controlfoley.typing import install_typecheck_hook, typecheck_requested

if typecheck_requested():
    install_typecheck_hook()

from controlfoley._registry import (  # noqa: E402  (after the optional type-check hook)
    ALIGNERS,
    ALL_REGISTRIES,
    BACKBONES,
    CONTROL_ENCODERS,
    EXTRACTORS,
    GUIDANCE,
    MEL_FRONTENDS,
    PRESETS,
    TOKENIZERS,
    VOCODERS,
    PluginError,
    Registry,
    RegistryError,
    load_plugins,
)
from controlfoley.config import ConfigError, ModelConfig, Part, SamplerConfig  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "build_model": "controlfoley.model",
    "from_pretrained": "controlfoley.model",
    "SpecMaskFoley": "controlfoley.model",
    "get_preset": "controlfoley.presets",
    "list_presets": "controlfoley.presets",
    "Tokenizer": "controlfoley.tokenizers.base",
}

__all__ = [
    "ALIGNERS",
    "ALL_REGISTRIES",
    "BACKBONES",
    "CONTROL_ENCODERS",
    "EXTRACTORS",
    "GUIDANCE",
    "MEL_FRONTENDS",
    "PRESETS",
    "TOKENIZERS",
    "VOCODERS",
    "Registry",
    "RegistryError",
    "PluginError",
    "load_plugins",
    "ConfigError",
    "ModelConfig",
    "Part",
    "SamplerConfig",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'controlfoley' has no attribute {name!r}")
