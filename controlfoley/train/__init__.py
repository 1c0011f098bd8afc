"""Training: the tokenizer, backbone and ControlNet recipes of SpecMaskFoley, on one device or many.

    from controlfoley.train import TrainConfig, train
    cfg = TrainConfig.for_recipe("controlnet", preset="specmaskfoley", data="data/vgg", out="runs/cn", init="runs/bb")
    train(cfg)                 # or: python -m controlfoley.train controlnet --preset ... (see controlfoley.train.cli)

Modules: `config` (TrainConfig, recipe defaults), `schedule` (LR scaling, warm-up + cosine),
`recipes` (what trains and its loss: `Recipe`, to subclass, and the built-ins of the `RECIPES`
registry, which plugins extend: examples/custom_recipe.py), `loop` (the Trainer), `checkpoints`
(run folder, atomic checkpoints, RNG state), `metrics` (JSONL / TensorBoard), `distributed`
(torchrun / DDP), `cli`. Heavy modules load on first use of their names.
"""

import importlib
from typing import Any

__all__ = [
    "TrainConfig", "train", "Trainer", "WarmupCosine", "scaled_lr", "main", "add_train_subcommands", "RunDir", "read_metrics", "RECIPES", "Recipe",
]  # fmt: skip

_LAZY = {
    "TrainConfig": "controlfoley.train.config",
    "train": "controlfoley.train.loop",
    "Trainer": "controlfoley.train.loop",
    "WarmupCosine": "controlfoley.train.schedule",
    "scaled_lr": "controlfoley.train.schedule",
    "main": "controlfoley.train.cli",
    "add_train_subcommands": "controlfoley.train.cli",
    "RunDir": "controlfoley.train.checkpoints",
    "read_metrics": "controlfoley.train.metrics",
    "RECIPES": "controlfoley._registry",
    "Recipe": "controlfoley.train.recipes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'controlfoley.train' has no attribute {name!r}")
