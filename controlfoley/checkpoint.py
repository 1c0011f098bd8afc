"""The library's checkpoint format: safetensors, with the model config JSON in the file's metadata.

- `save_model` / `load_model`: whole models; a round trip rebuilds the same model with identical logits.
- `load_parts`: load only some parts (tokenizer, backbone, ...) from a file, e.g. a pretrained
  backbone into a fresh SpecMaskFoley; the ControlNet copy is re-synchronised from the new backbone.
- Every mismatch (missing or unexpected keys, shapes) is a CheckpointError that names the keys.
Writes are atomic (temporary file + rename).
"""

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from controlfoley._io import atomic_path
from controlfoley.config import ModelConfig
from controlfoley.errors import CheckpointError, RandomWeightsWarning

__all__ = ["save_model", "load_model", "load_parts", "save_state_dict", "read_state_dict", "check_state_dict", "CONFIG_KEY"]

CONFIG_KEY = "controlfoley_config"
FORMAT_KEY = "controlfoley_format"
FORMAT_VERSION = "1"


def save_state_dict(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Atomically write tensors (made contiguous, on CPU) with string metadata."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: FORMAT_VERSION, **dict(metadata)})
    return path


def read_state_dict(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = _resolve_file(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}). Is it truncated, or another format?") from e
    return state, meta


def _resolve_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def save_model(model: nn.Module, path: str | os.PathLike[str], *, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Save a SpecMaskFoley model: all parameters and persistent buffers, config in metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "model.safetensors"
    meta = {CONFIG_KEY: model.config.to_json(), **dict(extra_metadata or {})}
    return save_state_dict(path, model.state_dict(), meta)


def config_from_metadata(meta: Mapping[str, str], path: Path) -> ModelConfig:
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path} has no controlfoley config in its metadata; it was not written by controlfoley.save")
    return ModelConfig.from_json(meta[CONFIG_KEY])


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys (strict loading)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}" for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        msg = [f"{what} does not match the model:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                msg.append(f"  {label} ({len(items)}): {', '.join(items[:8])}{more}")
        msg.append("  Was it saved from another preset or config? Build the model from the checkpoint's own config (from_pretrained).")
        raise CheckpointError("\n".join(msg))


def load_model(
    path_or_preset: str | os.PathLike[str], *, strict: bool = True, map_location: str | torch.device = "cpu", **overrides: Any
) -> nn.Module:
    from controlfoley.model import build_model
    from controlfoley.presets import pretrained_path

    p = Path(path_or_preset)
    if not p.exists():
        bundled = pretrained_path(str(path_or_preset))
        if bundled is None:
            from controlfoley._registry import PRESETS
            from controlfoley.presets import PRETRAINED

            name = str(path_or_preset)
            hint = f"; build_model({name!r}) gives that preset untrained" if name in PRESETS else ""
            raise CheckpointError(
                f"{name} is neither a checkpoint file/folder nor a preset that ships weights ({', '.join(sorted(PRETRAINED))}){hint}"
            )
        p = bundled
    state, meta = read_state_dict(p, map_location)
    cfg = config_from_metadata(meta, p)
    with warnings.catch_warnings():  # a GAN vocoder built without its checkpoint gets its weights from this file
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = build_model(cfg, **overrides)
    if strict:
        check_state_dict(model, state, str(p))
    model.load_state_dict(state, strict=strict)
    return model.to(map_location)


def load_parts(model: nn.Module, path: str | os.PathLike[str], parts: Iterable[str]) -> list[str]:
    """Load the named parts (top-level submodules such as 'tokenizer', 'backbone') from a checkpoint.

    Each part must match strictly. If the backbone is loaded and the ControlNet is not, the
    ControlNet is re-copied from the new backbone (it must start as a copy of the *pretrained* blocks).
    """
    state, _ = read_state_dict(path)
    parts = list(parts)
    for part in parts:
        sub = getattr(model, part, None)
        if not isinstance(sub, nn.Module):
            raise CheckpointError(f"model has no part {part!r}")
        prefix = part + "."
        sub_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub_state:
            raise CheckpointError(f"{path} holds no weights for part {part!r}; it holds: {sorted({k.split('.')[0] for k in state})}")
        check_state_dict(sub, sub_state, f"{part} in {path}")
        sub.load_state_dict(sub_state, strict=True)
    if "backbone" in parts and "controlnet" not in parts and getattr(model, "controlnet", None) is not None:
        model.controlnet.copy_from(model.backbone)
    return parts

