"""Loading legacy pickled checkpoints (.ckpt / .pt / .pth) safely.

Pickles can run code. They load with `torch.load(weights_only=True)`, which unpickles only tensors
and plain containers. A file that needs more (a Lightning checkpoint holding custom objects) is
refused with a message; the user may pass `trust=True` after deciding the file's source is trusted.
"""

import os
from pathlib import Path
from typing import Any

import torch

from controlfoley.errors import CheckpointError

__all__ = ["load_legacy_checkpoint"]


def load_legacy_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a pickled PyTorch checkpoint on the CPU, refusing arbitrary objects unless `trust=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError or RuntimeError subclasses here
        if not trust:
            raise CheckpointError(
                f"{path} cannot be loaded as plain weights (torch.load(weights_only=True) refused: {str(e).splitlines()[0]}). "
                "It may contain arbitrary Python objects. If you trust its source, pass trust=True "
                "(CLI: --trust-checkpoint) to unpickle it fully."
            ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
