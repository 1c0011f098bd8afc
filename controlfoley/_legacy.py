"""Loading legacy pickled checkpoints (.ckpt / .pt / .pth) safely.

Pickles can run code. They load with `torch.load(weights_only=True)`, which unpickles only tensors
and plain containers. Training-framework classes (Lightning callbacks, OmegaConf hyper-parameters)
are unpickled as inert stand-ins, so a Lightning checkpoint's weights load without Lightning and
without trust. A file that needs other objects is refused with a message; the user may pass
`trust=True` after deciding the file's source is trusted.
"""

import collections
import os
import re
from pathlib import Path
from typing import Any

import torch

from controlfoley._ckpt_kind import is_torch_pickle
from controlfoley.errors import CheckpointError, strip_ansi

__all__ = ["load_legacy_checkpoint"]

# Training-framework classes a checkpoint may pickle beside its weights (a Lightning checkpoint keys
# its callbacks' state by the callback class; hyper-parameters may be OmegaConf containers with
# typing annotations). Under these names an inert stand-in is unpickled instead: no code of the
# framework runs, or is needed, to read the tensors.
_FRAMEWORK_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "typing.")


# Plain container and number types an OmegaConf container pickles by name beside its framework
# classes (its metadata's object_type / key_type, a defaultdict of flags): safe to unpickle as the
# real types, and allowed only together with a framework's stand-ins (torch itself refuses them).
_CONTAINER_TYPES: dict[str, type] = {
    **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, int, float, str, bool)},  # no bytes: str(bytes(N)) would allocate N
    "collections.defaultdict": collections.defaultdict,
    "collections.OrderedDict": collections.OrderedDict,
}


class _Inert:
    """Stands in for a training-framework class named in a checkpoint: takes any arguments and
    state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_ins(path: Path) -> list[tuple[type, str]] | None:
    """(inert class, name) for each non-tensor global `path` names, when every one is a training
    framework's (_FRAMEWORK_PREFIXES); None otherwise, or on a torch without the API (< 2.5)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is None:
        return None
    try:
        names = find(str(path))
    except Exception:
        return None
    framework = [n for n in names if n.startswith(_FRAMEWORK_PREFIXES)]
    if not framework or not all(n in _CONTAINER_TYPES for n in names if n not in framework):
        return None
    out: list[tuple[type, str]] = [(_CONTAINER_TYPES[n], n) for n in names if n not in framework]  # the real types: plain data
    for name in framework:
        module, _, qual = name.rpartition(".")
        out.append((type(qual, (_Inert,), {"__module__": module, "__qualname__": qual}), name))
    return out


def _load_with_stand_ins(path: Path) -> Any | None:
    """`torch.load(weights_only=True)` with inert stand-ins for framework classes; None if it still fails."""
    stand_ins = _stand_ins(path)
    if stand_ins is None:
        return None
    try:
        with torch.serialization.safe_globals(list(stand_ins)):  # list(): a list of its element type to mypy (lists are invariant)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def _refusal(e: Exception) -> str:
    """One plain line of torch's refusal: the unpickler's own reason where torch names it."""
    text = strip_ansi(str(e))
    found = re.search(r"WeightsUnpickler error: (.*?\.)(?:\s|$)", text)
    lines = text.strip().splitlines()
    return found.group(1) if found else (lines[0].strip() if lines else type(e).__name__)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length that fits the file, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save's zip archive: it holds code/ (and constants.pkl) beside data.pkl."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.split("/", 2)[1:2] == ["code"] for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_legacy_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a pickled PyTorch checkpoint on the CPU, refusing arbitrary objects unless `trust=True`.
    A safetensors file given here loads as its dict of tensors, as torch 2.14's `torch.load` reads
    one (2.11's calls it a corrupt pickle), so the caller can say what the file is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_safetensors(path) or (path.suffix == ".safetensors" and not is_torch_pickle(path)):  # one cut inside its header too
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: truncated or corrupt ({e}); re-download or re-export it") from e
    if _is_torchscript(path):  # torch.jit.save's archive (OpenAI's released CLIP .pt files, say): whole, not broken
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a state dict: it loads with torch.jit.load(PATH, "
            "map_location='cpu'), which runs its code, so only where you trust it; save its .state_dict() with "
            "torch.save or safetensors and give that file"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... here
        reason = _refusal(e)
        if "Unsupported global" not in reason:  # not a refusal of objects: the bytes are broken
            detail = "" if reason == type(e).__name__ else ": " + reason.split(". ")[0]
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint: truncated, corrupt or another format "
                f"({type(e).__name__}{detail}); re-download or re-export it"
            ) from e
        loaded = _load_with_stand_ins(path)  # a Lightning checkpoint: its weights, safely
        if loaded is not None:
            return loaded
        if not trust:
            raise CheckpointError(
                f"{path} cannot be loaded as plain weights (torch.load(weights_only=True) refused: {reason}). "
                "It may contain arbitrary Python objects. If you trust its source, unpickle it fully: trust=True "
                "(SpecVQGAN.from_official), trust_checkpoint=True (the specvqgan tokenizer and the hifigan, melgan and bigvgan "
                "vocoder builders); on the command line --vocoder hifigan,checkpoint=PATH,trust_checkpoint=true or "
                "--model tokenizer='{\"checkpoint\": PATH, \"trust_checkpoint\": true}'."
            ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise CheckpointError(
            f"{path} pickles objects of the module {e.name!r}, which is not importable here: unpickling it fully needs the code "
            f"that defines it (the folder of the repository it came from on PYTHONPATH, or the package that provides it: a "
            f"module name is not always its package's name on PyPI), or export the weights alone where it loads "
            f"(torch.save(ckpt['state_dict'], ...))"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
