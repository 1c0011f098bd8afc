"""Loading legacy pickled checkpoints (.ckpt / .pt / .pth) safely.

Pickles can run code. They load with `torch.load(weights_only=True)`, which unpickles only tensors
and plain containers. A file that needs more (a Lightning checkpoint holding custom objects) is
refused with a message; the user may pass `trust=True` after deciding the file's source is trusted.
"""

import os
import re
from pathlib import Path
from typing import Any

import torch

from controlfoley.errors import CheckpointError, strip_ansi

__all__ = ["load_legacy_checkpoint"]

def _refusal(e: Exception) -> str:
    """One plain line of torch's refusal: the unpickler's own reason where torch names it."""
    text = strip_ansi(str(e))
    found = re.search(r"WeightsUnpickler error: (.*?\.)(?:\s|$)", text)
    lines = text.strip().splitlines()
    return found.group(1) if found else (lines[0].strip() if lines else type(e).__name__)


def load_legacy_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a pickled PyTorch checkpoint on the CPU, refusing arbitrary objects unless `trust=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
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
        if not trust:
            raise CheckpointError(
                f"{path} cannot be loaded as plain weights (torch.load(weights_only=True) refused: {reason}). "
                "It may contain arbitrary Python objects. If you trust its source, unpickle it fully: trust=True "
                "(SpecVQGAN.from_official), trust_checkpoint=True (the hifigan, melgan and bigvgan vocoder builders); "
                "on the command line --vocoder hifigan,checkpoint=PATH,trust_checkpoint=true."
            ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
