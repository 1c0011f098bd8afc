"""Command line of the training system: `python -m controlfoley.train` and `controlfoley train`.

    python -m controlfoley.train controlnet --preset specmaskfoley --data data/vggsound \\
        --out runs/cn --init runs/backbone [--config cn.json] [--steps 140000] [--batch-size 64]
    python -m controlfoley.train controlnet --out runs/cn --resume          # after a kill
    torchrun --nproc_per_node=4 -m controlfoley.train backbone --preset specmaskgit --data ... --out ...
    python -m controlfoley.train my_recipe --plugin my_recipe.py --preset ...   # a plugin's recipe

Every `TrainConfig` field is a flag (`--batch-size`, `--warmup-steps`, `--no-shuffle`, ...), and
so is every option a recipe declares in its `Options` dataclass (`--label-smoothing 0.1`: parsed
to the option's type, a bad value named; `recipe_options` in the config).
Precedence: the recipe's defaults < `--config file.json` < flags. With `--resume` the run's own
config.json replaces the recipe's defaults, and a flag or a --config value that would change the
run is refused (the same values are fine, so the command that started a run resumes it).
`--auto-resume` resumes when --out holds a run and starts it otherwise: one command line for a
job's first start and its restarts (torchrun --max-restarts, SLURM --requeue).
`--model KEY=JSON` passes a model override (`--model backbone='{"depth": 2}'`).
`--preset` also takes a run folder or a checkpoint (file or folder): the model it records, its
preset and overrides (a plugin's parts need their `--plugin`), with the --model flags on top; without
`--preset`, `--init RUN` gives it. config.json records the preset's name and the merged overrides,
so the run is resumed without the run it started from (`TrainConfig`, `preset_from_checkpoint`).
`--print-config` prints the resolved config as JSON and exits, after checking that the model config
it names resolves (preset, part names, --model overrides); values derived from others (the
warm-up, from --steps) carry a note under "_derived", and a --config file with that note derives
them again, so the printed config reused with another --steps warms up for that run's length.
`--stop-at N` ends this invocation after step N with a checkpoint (resume later), without
changing the schedule; `--resume` on a run already there says so and how to train longer.
Ctrl-C stops at once; SIGTERM (a scheduler's preemption) lets the step in progress finish and
writes a checkpoint of it first. Either way the message names the checkpoint to go on from and
--resume, and the exit status is 128 + the signal (130, 143). Under torchrun the
run's messages come once, from rank 0; an error is printed by the lowest rank that hit it.
Each registered recipe (`controlfoley.RECIPES`) is a subcommand: the built-ins, and those of the
plugins (`--plugin X` anywhere on the line, CONTROLFOLEY_PLUGINS), loaded before the subcommands
are made, in every torchrun rank; a user recipe has the flags of its `base` recipe. A name no
loaded plugin registers gets the registry's error (the registered names, how to load a plugin),
not argparse's "invalid choice".
A run's config.json records the plugin files its recipe came from (`TrainConfig.plugins`): `--resume`
of a run whose recipe no loaded plugin registers loads them (saying so in one line; every torchrun
rank alike, each from the same config.json), or, where one is gone and what it provided (the
recipe, or the model's parts) is not registered now, names it, those, and the `--plugin` fix. A
recorded file whose contents changed since is a warning, not a refusal: the run goes on with the
code as it is now (`controlfoley.train.loop`'s resume warns, naming the file).
"""

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlfoley._registry import RegistryError
from controlfoley.config import ConfigError, parse_overrides
from controlfoley.errors import ControlFoleyError, TrainingError, mark_reported, reported_by
from controlfoley.train.config import (
    BUILTIN_RECIPES, DERIVED_KEY, RECIPES, RecipeError, RecipeOption, TrainConfig, recipe_base, recipe_class,
    recipe_defaults, recipe_option_specs,
)  # fmt: skip

__all__ = ["main", "build_parser", "add_train_subcommands", "config_from_args", "run_from_args"]

_SKIP = {"recipe", "model_overrides", "recipe_options", "plugins"}
OPTION_DEST = "recipe_option:"  # argparse dest of a recipe option's flag: this prefix, then its name


def _field_help() -> dict[str, str]:
    """The comment after each TrainConfig field in its source: one place documents both."""
    src = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^=\n]+(?:=[^#\n]*)?#(.*)$", src, re.MULTILINE)}


def _add_config_flags(p: argparse.ArgumentParser, recipe: str) -> None:
    helps = _field_help()
    base, defaults = recipe_base(recipe), recipe_defaults(recipe)  # a user recipe: those of the built-in it is based on
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        owners = helps.get(f.name, "").split(":", 1)[0].split("/")
        if all(o in BUILTIN_RECIPES for o in owners) and base not in owners:
            continue  # a field only other recipes read ("tokenizer: ..." or "backbone/controlnet: ..." in its comment)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = defaults.get(f.name, default)
        text = helps.get(f.name, "") + (f" [default: {shown}]" if shown not in (None, ()) else "")
        if f.name == "warmup_steps":
            text = helps[f.name] + f" [default: {_warmup_default(recipe)}]".replace("%", "%%")  # argparse formats help with %
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name in ("init_parts", "betas", "trainable"):
            p.add_argument(flag, dest=f.name, default=None, metavar="A,B", help=f"comma-separated; {text}")
        else:
            kind = type(default) if default is not None and not isinstance(default, str) else str
            p.add_argument(flag, dest=f.name, type=kind, default=None, help=text)
    _add_option_flags(p, recipe)
    p.add_argument("--config", dest="config_file", default=None, help="JSON file of TrainConfig fields")
    p.add_argument("--model", dest="model_overrides", action="append", default=[], metavar="KEY=JSON", help="model override, e.g. backbone='{\"depth\": 2}'")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    how.add_argument(
        "--auto-resume", action="store_true",
        help="continue the run in --out if it holds one, else start it: one command line for a job's first start and its restarts "
        "(torchrun --max-restarts, SLURM --requeue)",
    )  # fmt: skip
    p.add_argument("--stop-at", type=int, default=None, help="stop this invocation after that step (with a checkpoint)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit (the preset, part names and --model overrides are checked first)")


def _add_option_flags(p: argparse.ArgumentParser, recipe: str) -> None:
    """A flag per option of the recipe's `Options` dataclass, in a group of their own in --help."""
    specs = recipe_option_specs(recipe)
    if not specs:
        return
    group = p.add_argument_group(f"options of the {recipe} recipe", "its own settings (its Options dataclass); config.json records them")
    for spec in specs.values():
        text = (spec.help + f" [default: {spec.default}]").replace("%", "%%")  # argparse formats help with %
        dest = OPTION_DEST + spec.name
        if spec.types == (bool,) and spec.choices is None:
            group.add_argument(spec.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = None if spec.choices is not None else spec.name.upper()
            group.add_argument(spec.flag, dest=dest, type=_option_parser(spec), default=None, choices=spec.choices, metavar=metavar, help=text)


def _option_parser(spec: RecipeOption) -> Any:
    """The argparse `type` of an option: its declared types tried in turn ("none" for None where it
    takes None); argparse names a value none of them takes: "argument --x: invalid float value: 'a'"."""

    def parse(raw: str) -> Any:
        if type(None) in spec.types and str not in spec.types and raw.strip().lower() == "none":
            return None
        for kind in spec.types:
            if kind is bool:
                if raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                    return raw.strip().lower() in ("true", "1", "yes")
            elif kind is not type(None):
                try:
                    return kind(raw)
                except ValueError:
                    continue
        raise ValueError(raw)

    parse.__name__ = " or ".join(t.__name__ for t in spec.types if t is not type(None)) + (" or none" if type(None) in spec.types else "")
    return parse


def _flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options given as flags, by name."""
    return {k[len(OPTION_DEST) :]: v for k, v in vars(args).items() if k.startswith(OPTION_DEST) and v is not None}


def _warmup_default(recipe: str) -> str:
    d = recipe_defaults(recipe)
    return (
        f"{d['warmup_steps']} for the recipe's {d['steps']} steps; a shorter --steps keeps that fraction "
        f"({100 * d['warmup_steps'] / d['steps']:g}% of --steps), a longer one {d['warmup_steps']}"
    )


def add_train_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train {tokenizer,backbone,controlnet}` to another CLI's subparsers (controlfoley.cli)."""
    train = subparsers.add_parser("train", help="train the tokenizer, the backbone or the ControlNet")
    _add_recipes(train)
    return train


def _add_recipes(parser: argparse.ArgumentParser) -> None:
    names = _recipe_names()
    recipes = parser.add_subparsers(dest="recipe", required=True, metavar="{" + ",".join(names) + "}")
    for name in names:
        p = recipes.add_parser(name, help=_recipe_help(name))
        _add_config_flags(p, name)
        p.set_defaults(func=run_from_args)


def _recipe_names() -> list[str]:
    """The registered recipes: the built-ins in their order, then those of plugins (sorted)."""
    return [n for n in BUILTIN_RECIPES if n in RECIPES] + [n for n in RECIPES.names() if n not in BUILTIN_RECIPES]


def _recipe_help(name: str) -> str:
    """A built-in's "the NAME recipe"; a user recipe's first paragraph of its class docstring, and its base."""
    cls = recipe_class(name)
    if str(cls.__module__).startswith("controlfoley."):
        return f"the {name} recipe"
    doc = " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split()).rstrip(".")  # its own, not inherited
    base = getattr(cls, "base", None)
    return f"{doc or f'the {name} recipe'} (a user recipe{f', based on {base}' if base else ''})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlfoley train", description="Train controlfoley models (SpecMaskFoley recipes).")
    _add_recipes(parser)
    return parser


def _parse_value(name: str, raw: str) -> Any:
    if name in ("init_parts", "trainable"):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    try:
        return tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(f"--{name.replace('_', '-')} takes comma-separated numbers, e.g. --betas 0.9,0.999; got {raw!r}") from None


def _model_overrides(items: Sequence[str]) -> dict[str, Any]:
    return parse_overrides(items, "--model")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve the run's TrainConfig: defaults (or the run's config.json on --resume) < file < flags."""
    return _resolve(args)[0]


def _resuming(args: argparse.Namespace, out: Any = None) -> bool:
    """--resume, or --auto-resume where the run folder (`out`: --out, else the --config file's
    "out") holds a run (its config.json; every torchrun rank decides alike, since rank 0 writes
    config.json only after every rank joined the run)."""
    if getattr(args, "resume", False):
        return True
    out = out if out is not None else getattr(args, "out", None)
    return bool(getattr(args, "auto_resume", False)) and out is not None and (Path(out) / "config.json").is_file()


def _resolve(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any], TrainConfig | None]:
    """The TrainConfig, the --config file's fields as used (read once; {} without a file), and on
    resume the run's own config (its config.json, read once)."""
    given = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if f.name in _SKIP or v is None:
            continue
        given[f.name] = _parse_value(f.name, v) if f.name in ("init_parts", "betas", "trainable") else v
    if args.model_overrides:
        given["model_overrides"] = _model_overrides(args.model_overrides)
    options = _flag_options(args)  # merged into the run's or the --config file's options, one by one
    file_fields = _config_file(args)
    if "out" not in given and isinstance(file_fields.get("out"), str) and file_fields["out"]:
        given["out"] = file_fields["out"]  # the --config file's run folder: the line that started the run resumes it
    if _resuming(args, given.get("out")):
        if "out" not in given:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue), or a --config file that names it (\"out\")")
        saved = Path(given["out"]) / "config.json"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} does not exist; there is no run to continue in {given['out']}")
        recorded = saved.read_text(encoding="utf-8")
        try:
            run = TrainConfig.from_json(recorded)
        except RecipeError as e:  # a plugin's recipe whose plugin is not loaded now
            try:
                named = json.loads(recorded).get("recipe")
            except (ValueError, AttributeError):
                named = None
            text = re.sub(r" Did you mean [^?]*\?", "", str(e)) if named else str(e)  # its "did you mean" would offer the name just typed
            what = f"recipe {named!r}, which is not registered" if named else "a recipe that is not registered"
            raise RecipeError(f"--resume: the run in {given['out']} uses {what} (load the plugin that registered it): {text}") from None
        base = run.to_dict()
        if base["recipe"] != args.recipe:
            raise ConfigError(f"--resume: the run in {given['out']} uses recipe {base['recipe']!r}, not {args.recipe!r}")
        del base["plugins"]  # recorded anew: where the recipe's code is now (train() warns when it changed)
        file_fields.pop("plugins", None)
        # a --config file counts as its flags: a value that differs from the run's is refused (named as the file's);
        # one a flag overrides is not the file's to check (the line that started the run resumes it: --auto-resume)
        in_file = file_fields.get("recipe_options")
        in_file = {k: v for k, v in in_file.items() if k not in options} if isinstance(in_file, dict) else {}
        checked = {k: v for k, v in file_fields.items() if k not in given and k != "recipe_options"}
        gone = _source_gone(given, checked, run)  # before the --config check, which would read a gone --preset in the file
        if checked or in_file:
            clash = run.resume_conflicts(TrainConfig.from_dict({**base, **checked, "recipe_options": {**base["recipe_options"], **in_file}}))
            if clash:
                lines = ", ".join(f"{k}: run {a!r} vs file {b!r}" for k, (a, b) in clash.items())
                raise ConfigError(
                    f"--resume continues the run in {given['out']} with its own settings (its config.json), but --config {args.config_file} "
                    f"sets others: {lines}. Drop --config (or those fields), or start a new --out"
                )
        if options or in_file:
            given["recipe_options"] = {**base["recipe_options"], **in_file, **options}
        if not gone:
            _default_preset_as_started(given, file_fields, {**base, **checked}, run)
        return TrainConfig.from_dict({**base, **checked, **given}), file_fields, run
    if options:
        in_file = file_fields.get("recipe_options")
        given["recipe_options"] = {**(in_file if isinstance(in_file, dict) else {}), **options}
    return TrainConfig.for_recipe(args.recipe, **{**file_fields, **given}), file_fields, None


def _default_preset_as_started(given: dict[str, Any], file_fields: dict[str, Any], base: dict[str, Any], run: TrainConfig) -> None:
    """On resume, a line without --preset (flags or --config) but with --init and --model flags is the
    line that started a run whose preset defaulted to --init's model, the flags on top: the preset is
    that again (in `given`), where it resolves to the run's own preset and overrides; else (a run
    started with a --preset NAME) the run's preset stays, as before, with those flags over it."""
    line = {**file_fields, **given}
    if "model_overrides" not in given or line.get("preset") is not None or line.get("init") is None:
        return
    try:
        started = TrainConfig.from_dict({**base, **given, "preset": None})  # the preset as from_dict defaults it from --init
    except (ConfigError, RegistryError, ControlFoleyError):
        return  # the run's preset with the flags: any conflict is named as before
    if (started.preset, started.model_overrides) == (run.preset, run.model_overrides):
        given["preset"], given["model_overrides"] = started.preset, started.model_overrides


def _source_gone(given: dict[str, Any], checked: dict[str, Any], run: TrainConfig) -> bool:
    """On resume, where the line's --preset RUN (a flag or the --config file's; or, without
    --preset, the --init RUN that stood for it, --model flags given) names a run or checkpoint that
    is gone (moved, deleted): the run's own recorded model stands for it, with the line's --model
    flags on top (a change they make is then named as a conflict, as any other), so the line that
    started the run still resumes it, as config.json, which holds no path, promises; said in a
    warning. Only a source spelled as a path (`is_checkpoint_source`: a separator, .safetensors):
    a bare name that is no preset (a typo, a plugin's preset not loaded) is named as before. True
    where it did so (in `given`; the file's preset and overrides then are not its to check)."""
    import warnings

    from controlfoley.builder import model_config
    from controlfoley.errors import user_stacklevel
    from controlfoley.train.config import _as_overrides, is_checkpoint_source

    line = {**checked, **given}
    source = line.get("preset")
    if source is None and ("model_overrides" not in given or line.get("init") is None):
        return False
    source = os.fspath(source if source is not None else line["init"])
    if not is_checkpoint_source(source) or Path(source).exists():
        return False  # a preset (or a typo of one), a model config, or a source that is there: read as when the run started
    flags = line.get("model_overrides") or {}
    recorded = model_config(run.preset, **run.model_overrides)
    cfg = model_config(recorded, **flags) if flags else recorded
    given["preset"] = run.preset  # the run's own spelling where the flags change nothing (compared as written)
    given["model_overrides"] = dict(run.model_overrides) if cfg == recorded else _as_overrides(run.preset, cfg, f"--resume of {run.out}")
    checked.pop("preset", None)
    checked.pop("model_overrides", None)
    warnings.warn(
        f"--resume: {source}, the run or checkpoint this run was built from, is gone; the run resumes with the model its "
        f"config.json records (preset {run.preset!r} and its overrides){', the --model flags on top' if flags else ''}",
        stacklevel=user_stacklevel(),
    )
    return True


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    """The --config file's fields ({} without one): a JSON object written for this recipe; a
    warm-up --print-config noted as derived is left out (derived again)."""
    file_fields: dict[str, Any] = {}
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
        theirs = file_fields.pop("recipe", args.recipe)
        if theirs != args.recipe:  # its values hold that recipe's defaults (lr, betas, uncond_prob, ...): they would replace this one's
            raise ConfigError(
                f"--config {path} was written for the {theirs!r} recipe (its 'recipe' field), not {args.recipe!r}: its values "
                f"include that recipe's defaults, which would replace the {args.recipe} recipe's. Use a config printed by "
                f"`train {args.recipe} ... --print-config`, or delete its 'recipe' field to take its values anyway"
            )
        if "warmup_steps" in _derived(file_fields):  # --print-config's note: it follows the steps
            file_fields.pop("warmup_steps", None)
    return file_fields


def _build_on_meta(resolved: Any) -> None:
    """The model of `resolved` built as the run's first step builds it, on the meta device (shapes,
    no memory; 0.1 s for the paper preset) and without reading its parts' weights files: what only
    building finds (a value contradicting the one wired from another part, e.g. tokenizer n_mels
    against the mel front end's; a missing argument; a part breaking its contract) is an error of
    --print-config too, not of the run it configures. Warnings are the run's to give."""
    import warnings

    import torch

    from controlfoley.builder import build_without_weight_files

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            build_without_weight_files(resolved)
    except (ConfigError, RegistryError, ControlFoleyError):
        raise  # what the run would refuse, named as it would name it
    except Exception:  # noqa: BLE001  a part that cannot be built on the meta device (a plugin builder reading a value back): the run checks it
        return


def run_from_args(args: argparse.Namespace) -> int:
    from controlfoley.train.loop import train

    try:
        cfg, file_fields, saved = _resolve(args)
        if args.print_config:  # the model config it names resolves (part names, overrides), as a real run checks first
            from controlfoley.builder import model_config
            from controlfoley.config import part_registries

            resolved = model_config(cfg.preset, **cfg.model_overrides)
            for field, registry in part_registries().items():  # each part's arguments as its builder takes them
                part = getattr(resolved, field, None)
                if part is not None:
                    registry.check_args(part.name, part.kwargs)
            _build_on_meta(resolved)
    except (ConfigError, RegistryError, ControlFoleyError) as e:
        # from the flags and files alone: every rank of a node hits it alike; one per node prints it
        raise e if _local_rank() == 0 else mark_reported(e, 0)
    if args.print_config:
        print(_printed_config(cfg, args, file_fields))
        return 0
    if args.tensorboard:  # asked for by name: missing, it is an error, not the default's quiet JSONL-only
        from controlfoley.errors import require

        try:
            require("torch.utils.tensorboard", extra="tensorboard", purpose="--tensorboard")
        except ControlFoleyError as e:
            error = ConfigError(f"{e}; or leave --tensorboard out (metrics are written to metrics.jsonl either way)")
            raise (error if _local_rank() == 0 else mark_reported(error, 0)) from e  # every rank of a node alike: one prints it
    rank0 = _rank() == 0  # under torchrun, messages of the whole run come once, from rank 0
    from controlfoley.train.loop import checked_stop_at

    checked_stop_at(args.stop_at)  # before "nothing to do" can be said of it
    resume = saved is not None
    if saved is not None:
        done = _nothing_to_resume(cfg, args.stop_at, saved)
        if done is not None:
            if rank0:
                print(done, file=sys.stderr)
            return 0
    try:
        result = train(cfg, resume=resume, stop_at=args.stop_at)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (TrainingInterrupted): every rank gets it
        signum = getattr(e, "signum", signal.SIGINT)
        if rank0:
            again = "the same command" if (args.resume or getattr(args, "auto_resume", False)) else "the same command and --resume"
            _say_interrupted(cfg, "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}", getattr(e, "checkpoint", None), again)
        return 128 + int(signum)
    if rank0:
        print(json.dumps(result, default=float))
    return 0


def _say_interrupted(cfg: TrainConfig, how: str, written: Path | None = None, again: str = "the same command and --resume") -> None:
    """What a stopped run says: what is intact, and `again`, the command that goes on (with
    --auto-resume or --resume given: the same command; --resume and --auto-resume exclude each other)."""
    from controlfoley.train.checkpoints import RunDir

    if written is not None:
        print(f"\ninterrupted{how}: the step in progress finished and {written} was written; continue with {again}", file=sys.stderr)
        return
    try:
        latest = RunDir(cfg.out).latest_dir()
    except ControlFoleyError:
        latest = None
    if latest is None:
        print(f"\ninterrupted{how} before the first checkpoint: nothing to resume; the same command starts the run again", file=sys.stderr)
    else:
        print(f"\ninterrupted{how}: checkpoints are written atomically, so {latest} is intact; continue with {again}", file=sys.stderr)


def _nothing_to_resume(cfg: TrainConfig, stop_at: int | None, saved: TrainConfig) -> str | None:
    """The message when the run is already where this invocation would stop (and, if finished, has
    its final model), said before building anything; None: train() goes on. `saved`: the run's
    config.json as `_resolve` read it."""
    from controlfoley.train.checkpoints import RunDir, checkpoint_step, nothing_to_resume_message

    run = RunDir(cfg.out)
    try:
        latest = run.latest_dir()
    except (ControlFoleyError, OSError):
        return None  # train() names what is wrong with the checkpoints
    if saved.resume_conflicts(cfg):
        return None  # flags the run would refuse: train() names them, rather than "nothing to do" accepting them
    step = -1 if latest is None else checkpoint_step(latest)
    finished = step >= cfg.steps and run.final_model.is_file()
    if finished or (stop_at is not None and stop_at <= step < cfg.steps):
        return nothing_to_resume_message(cfg.out, cfg.recipe, step, cfg.steps, stop_at)
    return None


def _printed_config(cfg: TrainConfig, args: argparse.Namespace, file_fields: dict[str, Any]) -> str:
    """The resolved config; values derived from others get a note under DERIVED_KEY, and a
    --config file that holds it derives them again from its other values and the flags (a
    printed config reused with another --steps gets that run's warm-up, not this one's).
    `file_fields`: the --config file as `_resolve` used it (a derived warmup_steps already dropped)."""
    d = json.loads(cfg.to_json())
    if _resuming(args, cfg.out) or args.warmup_steps is not None:  # the run's own value, or one given: nothing derived
        return json.dumps(d, indent=2, sort_keys=True)
    if "warmup_steps" not in file_fields:  # not in the file, or there only as derived: derived here too
        d[DERIVED_KEY] = {
            "warmup_steps": f"derived from steps: {_warmup_default(cfg.recipe)}. Read back with --config, it is derived again from "
            f"that run's steps; delete this {DERIVED_KEY!r} entry to keep it at {cfg.warmup_steps}"
        }
    return json.dumps(d, indent=2, sort_keys=True)


def _derived(fields: dict[str, Any]) -> dict[str, Any]:
    note = fields.pop(DERIVED_KEY, None)
    return note if isinstance(note, dict) else {}


def _rank() -> int:
    return _ranks()[0]


def _local_rank() -> int:
    return _ranks()[1]


def _ranks() -> tuple[int, int]:
    """(rank, local rank) for deciding who prints; a malformed variable counts as 0 here, and
    training names it (`init_distributed`)."""
    from controlfoley.train.distributed import torchrun_env

    try:
        rank, _, local_rank = torchrun_env()
    except TrainingError:
        return 0, 0
    return rank, local_rank


def main(argv: Sequence[str] | None = None) -> int:
    from controlfoley._registry import PluginError
    from controlfoley.cli import load_command_line_plugins

    try:  # `--plugin X` here too: `torchrun ... -m controlfoley.train controlnet --plugin my_parts.py ...`
        argv = load_command_line_plugins(sys.argv[1:] if argv is None else argv)
    except PluginError as e:
        if _local_rank() == 0:  # every rank of a node hits it alike
            print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # before the subcommands are made from the registered recipes
        _load_run_plugins(argv)
    except (PluginError, RecipeError) as e:
        if _local_rank() == 0:  # every rank of a node hits it alike
            print(f"error: {e}", file=sys.stderr)
        return 2
    if argv and not argv[0].startswith("-") and argv[0] not in RECIPES:  # a typo, or a recipe whose plugin is not loaded
        try:
            recipe_class(argv[0])
        except RecipeError as e:  # the registry's message (the names, how to load a plugin), not argparse's "invalid choice"
            if _local_rank() == 0:  # every rank of a node hits it alike
                print(f"error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ControlFoleyError, ConfigError, RegistryError) as e:
        by, rank = reported_by(e), _rank()
        if by is None or by == rank:  # under torchrun each message once, by the lowest rank that hit it
            print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        return 2


def _resume_out(argv: Sequence[str]) -> str | None:
    """The --out of a command line with --resume or --auto-resume (before any `--`), else None."""
    argv = list(argv)[: argv.index("--")] if "--" in argv else list(argv)
    if "--resume" not in argv and "--auto-resume" not in argv:
        return None
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--out="):
            return a.split("=", 1)[1]
    return None


def _importable(module: str) -> bool:
    """Whether `module` can be imported by name from here (its top package is on sys.path)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is not there, or a bad name
        return False


def _load_run_plugins(argv: Sequence[str]) -> None:
    """`--resume`: import the plugins the run's config.json records that are not loaded yet (its
    recipe's, and its model's registered parts': a built-in recipe with a plugin's backbone, too;
    one line on stderr from rank 0 says which; every rank imports them, each reading the same
    config.json, so all run the same code), and put them in CONTROLFOLEY_PLUGINS for the processes
    the run starts, as --plugin does. A recorded file that is gone, where its recipe or a model part
    it provided is not registered now (`_parts_from`), is a RecipeError naming the file, what it
    provided (the recipe; a part's kind and name) and the --plugin fix. Anything else (no --resume, no config.json, a run that records no plugin) is
    left to the checks that follow, which name it."""
    from controlfoley._registry import PLUGIN_ENV, _env_plugins, _loaded_from, load_plugins, plugin_path

    out = _resume_out(argv)
    if out is None:
        return
    saved = Path(out) / "config.json"
    try:
        d = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    name, records = (d.get("recipe"), d.get("plugins")) if isinstance(d, dict) else (None, None)
    if not isinstance(name, str) or not isinstance(records, list):
        return
    records = [
        r for r in records
        if isinstance(r, dict) and isinstance(r.get("path"), str) and r.get("module") not in sys.modules and _loaded_from(Path(r["path"])) is None
    ]  # fmt: skip
    if not records:  # all loaded already (by --plugin, the environment, or an import)
        return
    what = f"recipe {name!r}" if name not in RECIPES else "its model's parts"
    # a module imported by name is imported so again where it still can be (a package's relative
    # imports need it), else from its file
    paths = [m if isinstance(m := r.get("module"), str) and _importable(m) else r["path"] for r in records]
    gone = [p for p in paths if plugin_path(p) is not None and not Path(p).is_file()]
    parts = _parts_from(gone, Path(out), d) if gone else []  # what the gone files provided that nothing registers now
    if gone and name in RECIPES and not parts:  # the recipe and parts are loaded (from a new place, say): the loop compares the code
        paths = [p for p in paths if p not in gone]
        if not paths:
            return
    elif gone:
        provided = ([] if name in RECIPES else [f"recipe {name!r}"]) + parts
        raise RecipeError(
            f"--resume: the run in {out} uses code of {' and '.join(provided)} from plugin file {', '.join(gone)} ({saved} records it), and "
            f"{'that file is' if len(gone) == 1 else 'those files are'} gone. Give {'its' if len(gone) == 1 else 'their'} new place: "
            f"controlfoley train {name} --out {out} --resume --plugin NEW/PATH.py (or set {PLUGIN_ENV})"
        )
    if _rank() == 0:
        print(f"--resume: loading plugin {', '.join(paths)}, which {saved} records for {what}", file=sys.stderr, flush=True)
    load_plugins(*paths, source=f"the plugins {saved} records")
    os.environ[PLUGIN_ENV] = ",".join([*_env_plugins(), *(p for p in paths if p not in _env_plugins())])
    if name not in RECIPES:
        raise RecipeError(
            f"--resume: the run in {out} uses recipe {name!r}; the plugin {saved} records for it ({', '.join(paths)}) loaded, but "
            f"registers no recipe of that name now (renamed?). Registered: {', '.join(_recipe_names())}. Load the plugin that "
            "registers it with --plugin FILE.py"
        )


def _parts_from(gone: Sequence[str], out: Path, saved: dict[str, Any]) -> list[str]:
    """"aligner 'interp_rows'", ... for each model part of the run in `out` that no registry holds now
    and that came from one of the `gone` plugin files: as the latest checkpoint records its parts
    (their names, and the file each user part came from), else, before the first checkpoint, the
    part names of config.json's model overrides (from any of the gone files)."""
    from controlfoley.checkpoint import CONFIG_KEY, PARTS_KEY
    from controlfoley.config import part_registries
    from controlfoley.train.checkpoints import RunDir

    from safetensors import SafetensorError, safe_open

    names: dict[str, Any] = {}
    origins: dict[str, Any] | None = None
    try:
        latest = RunDir(out).latest_dir()
        if latest is not None:
            with safe_open(str(latest / "model.safetensors"), framework="pt") as f:
                meta = f.metadata() or {}
            names = json.loads(meta.get(CONFIG_KEY, "{}"))
            origins = json.loads(meta.get(PARTS_KEY, "{}"))
    except (ControlFoleyError, OSError, ValueError, SafetensorError):  # no checkpoint that reads: config.json's overrides
        names, origins = {}, None
    if not isinstance(names, dict) or not names:
        overrides = saved.get("model_overrides")
        names = overrides if isinstance(overrides, dict) else {}
    out_parts = []
    for field, registry in part_registries().items():
        value = names.get(field)
        part = value.get("name") if isinstance(value, dict) else value
        if not isinstance(part, str) or part in registry:
            continue
        came_from = origins.get(field) if isinstance(origins, dict) else None
        if came_from is None or any(str(g) in str(came_from) for g in gone):
            out_parts.append(f"{registry.kind} {part!r}")
    return out_parts
