"""Command line of the training system: `python -m controlfoley.train` and `controlfoley train`.

    python -m controlfoley.train controlnet --preset specmaskfoley --data data/vggsound \\
        --out runs/cn --init runs/backbone [--config cn.json] [--steps 140000] [--batch-size 64]
    python -m controlfoley.train controlnet --out runs/cn --resume          # after a kill
    torchrun --nproc_per_node=4 -m controlfoley.train backbone --preset specmaskgit --data ... --out ...

Every `TrainConfig` field is a flag (`--batch-size`, `--warmup-steps`, `--no-shuffle`, ...).
Precedence: the recipe's defaults < `--config file.json` < flags. With `--resume` the run's own
config.json replaces the first two, and a flag that would change the run is refused.
`--model KEY=JSON` passes a model override (`--model backbone='{"depth": 2}'`).
`--print-config` prints the resolved config as JSON and exits; `--stop-at N` ends this
invocation after step N with a checkpoint (resume later), without changing the schedule.
"""

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlfoley._registry import RegistryError
from controlfoley.config import ConfigError, parse_overrides
from controlfoley.errors import ControlFoleyError
from controlfoley.train.config import RECIPE_DEFAULTS, RECIPES, TrainConfig

__all__ = ["main", "build_parser", "add_train_subcommands", "config_from_args", "run_from_args"]

_SKIP = {"recipe", "model_overrides"}


def _field_help() -> dict[str, str]:
    """The comment after each TrainConfig field in its source: one place documents both."""
    src = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^=\n]+(?:=[^#\n]*)?#(.*)$", src, re.MULTILINE)}


def _add_config_flags(p: argparse.ArgumentParser, recipe: str) -> None:
    helps = _field_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        owner = helps.get(f.name, "").split(":", 1)[0]
        if owner in RECIPES and owner != recipe:
            continue  # a field only another recipe reads ("tokenizer: ..." in its comment)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = RECIPE_DEFAULTS[recipe].get(f.name, default)
        text = helps.get(f.name, "") + (f" [default: {shown}]" if shown not in (None, ()) else "")
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name in ("init_parts", "betas"):
            p.add_argument(flag, dest=f.name, default=None, metavar="A,B", help=f"comma-separated; {text}")
        else:
            kind = type(default) if default is not None and not isinstance(default, str) else str
            p.add_argument(flag, dest=f.name, type=kind, default=None, help=text)
    p.add_argument("--config", dest="config_file", default=None, help="JSON file of TrainConfig fields")
    p.add_argument("--model", dest="model_overrides", action="append", default=[], metavar="KEY=JSON", help="model override, e.g. backbone='{\"depth\": 2}'")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--stop-at", type=int, default=None, help="stop this invocation after that step (with a checkpoint)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_train_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train {tokenizer,backbone,controlnet}` to another CLI's subparsers (controlfoley.cli)."""
    train = subparsers.add_parser("train", help="train the tokenizer, the backbone or the ControlNet")
    _add_recipes(train)
    return train


def _add_recipes(parser: argparse.ArgumentParser) -> None:
    recipes = parser.add_subparsers(dest="recipe", required=True, metavar="{" + ",".join(RECIPES) + "}")
    for name in RECIPES:
        p = recipes.add_parser(name, help=f"the {name} recipe")
        _add_config_flags(p, name)
        p.set_defaults(func=run_from_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlfoley train", description="Train controlfoley models (SpecMaskFoley recipes).")
    _add_recipes(parser)
    return parser


def _parse_value(name: str, raw: str) -> Any:
    if name == "init_parts":
        return tuple(x for x in raw.split(",") if x)
    return tuple(float(x) for x in raw.split(","))


def _model_overrides(items: Sequence[str]) -> dict[str, Any]:
    return parse_overrides(items, "--model")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve the run's TrainConfig: defaults (or the run's config.json on --resume) < file < flags."""
    given = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if f.name in _SKIP or v is None:
            continue
        given[f.name] = _parse_value(f.name, v) if f.name in ("init_parts", "betas") else v
    if args.model_overrides:
        given["model_overrides"] = _model_overrides(args.model_overrides)
    if args.resume:
        if "out" not in given:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(given["out"]) / "config.json"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} does not exist; there is no run to continue in {given['out']}")
        base = TrainConfig.from_json(saved.read_text(encoding="utf-8")).to_dict()
        if base["recipe"] != args.recipe:
            raise ConfigError(f"--resume: the run in {given['out']} uses recipe {base['recipe']!r}, not {args.recipe!r}")
        return TrainConfig.from_dict({**base, **given})
    file_fields = {}
    if args.config_file:
        path = Path(args.config_file)
        try:
            file_fields = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {path} is not valid JSON ({e}); write a JSON object of TrainConfig fields, e.g. --print-config's output") from e
        if not isinstance(file_fields, dict):
            raise ConfigError(f"--config {path} holds a {type(file_fields).__name__}, not a JSON object of TrainConfig fields")
        file_fields.pop("recipe", None)
    return TrainConfig.for_recipe(args.recipe, **{**file_fields, **given})


def run_from_args(args: argparse.Namespace) -> int:
    from controlfoley.train.loop import train

    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    try:
        result = train(cfg, resume=args.resume, stop_at=args.stop_at)
    except KeyboardInterrupt:
        from controlfoley.train.checkpoints import RunDir

        try:
            latest = RunDir(cfg.out).latest_dir()
        except ControlFoleyError:
            latest = None
        if latest is None:
            print("\ninterrupted before the first checkpoint: nothing to resume; the same command starts the run again", file=sys.stderr)
        else:
            print(f"\ninterrupted: checkpoints are written atomically, so {latest} is intact; continue with the same command and --resume", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the run, not one per rank
        print(json.dumps(result, default=float))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ControlFoleyError, ConfigError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
