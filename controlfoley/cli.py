"""The `controlfoley` command.

    controlfoley info PRESET_OR_CHECKPOINT        parameter table per part vs the paper's numbers, each part's
                                                  builder and settings (* where they differ from the preset)
                                                  (a preset, or a checkpoint file, folder or training run)
    controlfoley list [KIND]                      registered names (presets, aligners, guidance, ...)
    controlfoley demo [--out DIR]                 the embedded demo (default outputs/demo)
    controlfoley generate VIDEO|FOLDER... --model M --out DIR   foley for video files
    controlfoley evaluate GENERATED [--reference ORIGINALS]   score foley against the original soundtracks
                                                  (default: the sources GENERATED/generate.json records)
    controlfoley extract ...                      fill a feature dataset
    controlfoley train RECIPE ...                 tokenizer, backbone, controlnet, or a recipe a plugin registers
    controlfoley experiment synthetic             the learning proof on the synthetic world
    controlfoley bench [PRESET_OR_CHECKPOINT]     sampling speed on this machine, with your settings

    controlfoley --plugin my_parts.py train ...   import a module that registers your own parts first
                                                  (--plugin X / --plugin=X may stand anywhere; repeatable)

Subcommands import their heavy modules only when they run.
"""

import argparse
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # (annotations here stay `object` where the runtime checker would have to import these: torch at `--help`)
    from controlfoley.config import ModelConfig
    from controlfoley.model import SpecMaskFoley

__all__ = ["main", "model_from_arg", "run"]

# The paper's parameter counts (sec. 4.2 and Table 1).
PAPER_PARAMS = {"backbone": 170e6, "trainable": 126e6, "total": 300e6}

# subcommand -> (module, function taking argv); those modules own their argument parsing
_DELEGATED = {
    "train": ("controlfoley.train.__main__", "main"),
    "extract": ("controlfoley.data.extract", "extract_main"),
    "generate": ("controlfoley.pipeline", "generate_main"),
    "evaluate": ("controlfoley.evaluate_cli", "evaluate_main"),
    "bench": ("controlfoley.bench", "bench_main"),
    "experiment": ("controlfoley.experiment", "experiment_main"),
    "demo": ("controlfoley.demo", "demo_main"),
}


def _fmt(n: int | float) -> str:
    return f"{n / 1e6:8.2f}M"


def _refuse_run_config(path: Path) -> None:
    """A training run's config.json given where a model config goes: say what it is and what to give."""
    import json

    from controlfoley.errors import ConfigError

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the model config's own reading says what is wrong with it
    if isinstance(d, dict) and {"recipe", "preset", "data", "out"} <= d.keys():
        raise ConfigError(
            f"{path} is a training run's config (recipe {d.get('recipe')!r}{_run_recipe_origin(d)}), not a model config: give the run "
            f"folder ({path.parent}) for its trained model, or a model config as model.config.to_json() writes it"
        )


def _run_recipe_origin(d: Mapping[str, Any]) -> str:
    """", from plugin FILE (as recorded | changed since | gone), options {...}" for a run's config
    (`TrainConfig.plugins`, `recipe_options`): what `--resume` will load, and whether it still can."""
    out = ""
    shown = _plugin_states(d)
    if shown:
        out += f", from plugin {', '.join(shown)}"
    options = d.get("recipe_options")
    if isinstance(options, dict) and options:
        out += f", options {', '.join(f'{k}={v!r}' for k, v in options.items())}"
    return out


def model_from_arg(preset_or_path: str, overrides: Mapping[str, Any] | None = None) -> tuple[object, str]:
    """(model, label): a registered preset built untrained (one that ships weights: with them), a
    .json model config built untrained, or a checkpoint's own model (a .safetensors file, a
    checkpoint folder, or a training run folder: its final model, else its latest checkpoint).
    `overrides`: `build_model` overrides (`parse_overrides` of `--model KEY=VALUE` flags); on
    weights, as `from_pretrained(..., **overrides)` takes them (settings that fit the weights)."""
    from controlfoley import PRESETS, build_model
    from controlfoley.presets import PRETRAINED

    overrides = dict(overrides or {})
    shown = f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else ""
    if preset_or_path in PRETRAINED:  # the name of shipped weights: those weights
        from controlfoley.model import from_pretrained

        return from_pretrained(preset_or_path, **overrides), f"preset {preset_or_path} (its shipped weights){shown}"
    if preset_or_path in PRESETS:
        return build_model(preset_or_path, **overrides), f"preset {preset_or_path}{shown}"
    if preset_or_path.lower().endswith(".json") and Path(preset_or_path).is_file():
        _refuse_run_config(Path(preset_or_path))
        model = build_model(preset_or_path, **overrides)
        return model, f"config {preset_or_path} (built untrained){shown}"
    if Path(preset_or_path).exists():
        from controlfoley.model import from_pretrained
        from controlfoley.train.checkpoints import resolve_model_file

        file = resolve_model_file(preset_or_path)
        model = from_pretrained(file, **overrides)
        return model, f"checkpoint {file} (config {model.config.name}){shown}"
    from controlfoley.errors import ConfigError

    raise ConfigError(
        f"{preset_or_path!r} is neither a preset nor an existing checkpoint file, folder or training run; "
        f"give a preset ({', '.join(PRESETS.names())}) or the path of a checkpoint"
    )


def info(preset: str, overrides: Mapping[str, Any] | None = None) -> str:
    """A parameter table per part (frozen vs trainable under the ControlNet recipe, or for a tokenizer
    or backbone run's checkpoint under its recipe) beside the paper, for a preset or a checkpoint
    (file, folder or training run: the table of its own config), with the parts it records as trained."""
    from controlfoley.train.recipes import get_recipe, train_only

    from controlfoley.errors import ControlFoleyError

    try:
        built, label = model_from_arg(preset, overrides)
    except ControlFoleyError as e:  # a run with no checkpoint yet, or whose plugin is gone: still say what it records
        run = _run_lines(preset)
        if run:
            e.args = (f"{e}\n  {run[0]}", *e.args[1:])
        raise
    model = cast("SpecMaskFoley", built)  # what model_from_arg gives (`object` only to keep this module's imports light)
    recorded = getattr(model, "trained_parts", None)
    recipe = "controlnet" if model.has_control else "backbone"
    loaded = getattr(model, "loaded_from", None) is not None  # else built untrained: a preset's record is its weights files
    if loaded and recorded and "controlnet" not in recorded:  # a tokenizer or backbone run's checkpoint: that recipe's split
        recipe = "backbone" if "backbone" in recorded else "tokenizer"
    run_cfg = _run_config(preset) if loaded else None  # a training run's folder: the split it trained, from its config.json
    chosen = None
    if run_cfg is not None:
        from controlfoley._registry import RECIPES

        if isinstance(run_cfg.get("recipe"), str) and run_cfg["recipe"] in RECIPES:  # (a plugin's recipe not loaded now: the guess above)
            recipe = run_cfg["recipe"]
        trainable = run_cfg.get("trainable")  # decides the split alone, whatever the recipe
        chosen = [t for t in trainable if isinstance(t, str) and getattr(model, t, None) is not None] if isinstance(trainable, list) else None
        chosen = chosen or None  # none of its parts in this model (info RUN --model ...): the recipe's split
    get_recipe(recipe).prepare(model)  # trainable as that recipe trains
    if chosen is not None:  # the run's --trainable replaced the recipe's choice, as the training loop does
        train_only(model, chosen)
    rows = model.parameter_table()
    from controlfoley.pipeline_parts import foley_parts

    lines = [f"{label}: grid {model.grid[0]}x{model.grid[1]} tokens over {model.config.n_frames} mel frames", _trained_line(loaded, recorded, foley_parts(model))]
    from controlfoley.checkpoint import ema_lines, read_metadata, trained_as_lines

    # parts built otherwise than their weights were trained (a file saved after such a load records it)
    lines += trained_as_lines(getattr(model, "trained_as", None) or {})
    if loaded:  # weights a run averaged (--ema-decay): its metadata says so, and where the raw weights are
        lines += ema_lines(read_metadata(model.loaded_from), model.loaded_from)
    lines += [*_run_lines(preset), ""]
    ran = run_cfg.get("recipe") if run_cfg is not None else recipe  # its own recipe's name, a plugin's too
    how = f"as the run trained it: the {ran} recipe with --trainable {','.join(chosen)}" if chosen is not None else f"as the {recipe} recipe trains it"
    lines.append(f"{'part':<16}{'params':>10}{'trainable':>11}{'frozen':>10}   (trainable / frozen: {how})")
    for r in rows:
        lines.append(f"{r['part']:<16}{_fmt(r['params'])}{_fmt(r['trainable']):>11}{_fmt(r['frozen']):>10}")
    lines += ["", *_parts_lines(model.config)]
    by = {r["part"]: r for r in rows}
    bb = by["backbone"]["params"]
    blocks = sum(p.numel() for p in model.backbone.blocks.parameters())
    dim = int(getattr(model.backbone, "dim", 768))
    if dim != 768:  # a scaled-down (or up) model: the paper's counts say nothing about it
        lines += ["", f"(the paper's ~170M / ~126M / ~300M are for its 768-wide ViT; this backbone is {dim} wide: not compared)"]
        return "\n".join(lines)
    lines += ["", "beside the paper (sec. 4.2, Table 1):"]
    lines.append(f"  backbone          {_fmt(bb)} (blocks alone {_fmt(blocks)})   paper ~170M")
    if model.has_control:
        trainable = sum(by[p]["trainable"] for p in ("control_encoder", "aligner", "controlnet"))
        total = bb + trainable
        lines.append(f"  trainable         {_fmt(trainable)}   paper ~126M")
        lines.append(f"  backbone+control  {_fmt(total)}   paper ~300M (tokenizer and vocoder not counted, as in the paper)")
        lines += ["", *_explain(model, trainable)]
    return "\n".join(lines)


def _run_config(path: str) -> dict[str, Any] | None:
    """A training run folder's config.json as a dict; None for anything else."""
    import json

    file = Path(path) / "config.json"
    try:
        d = json.loads(file.read_text(encoding="utf-8")) if Path(path).is_dir() else None
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and {"recipe", "preset", "data", "out"} <= d.keys() else None


def _run_lines(path: str) -> list[str]:
    """For a training run's folder: its recipe and where its code came from (the plugin files its
    config.json records, and whether each is still there and unchanged: what --resume loads)."""
    d = _run_config(path)
    if d is None:
        return []
    line = f"training run: recipe {d.get('recipe')!r}"
    states = _plugin_states(d)
    if states:
        line += f"; plugin files it records (what --resume loads, for its recipe or its model's parts): {', '.join(states)}"
    return [line]


def _plugin_states(d: Mapping[str, Any]) -> list[str]:
    """"FILE (as recorded | changed since the run recorded it | gone: ...)" for each plugin file a
    run's config.json records (`TrainConfig.plugins`)."""
    import hashlib

    records = d.get("plugins")
    shown = []
    for r in records if isinstance(records, list) else ():
        if not (isinstance(r, dict) and isinstance(r.get("path"), str)):
            continue
        file = Path(r["path"])
        if not file.is_file():
            state = "gone: --resume needs --plugin NEW/PATH.py"
        elif hashlib.sha256(file.read_bytes()).hexdigest() != r.get("sha256"):
            state = "changed since the run recorded it"
        else:
            state = "as recorded"
        shown.append(f"{file} ({state})")
    return shown


def _parts_lines(cfg: "ModelConfig") -> list[str]:
    """Each part's builder and settings (the config's kwargs), marked where they differ from the
    preset the config was made from, and the sampler: what a checkpoint was built with."""
    import dataclasses

    from controlfoley.config import _PART_FIELDS
    from controlfoley.presets import PRESETS, get_preset

    base = get_preset(cfg.name) if cfg.name in PRESETS else None
    changed = [f for f in (*_PART_FIELDS, "n_frames", "sampler") if base is not None and getattr(base, f) != getattr(cfg, f)]
    head = "parts (builder and settings"
    head += f"; * changed from the {cfg.name} preset)" if changed else (f": the {cfg.name} preset's)" if base is not None else ")")
    out = [head]
    for f in _PART_FIELDS:
        part = getattr(cfg, f)
        if part is None:
            continue
        kw = ", ".join(f"{k}={v!r}" for k, v in part.kwargs.items())
        kw = kw if len(kw) <= 100 else kw[:97] + "..."
        out.append(f"{'*' if f in changed else ' '} {f:<16}{part.name}({kw})")
    if base is not None and any(getattr(base, f) is not None and getattr(cfg, f) is None for f in _PART_FIELDS):
        out.append("* " + ", ".join(f for f in _PART_FIELDS if getattr(base, f) is not None and getattr(cfg, f) is None) + ": removed")
    sampler = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(cfg.sampler).items())
    out.append(f"{'*' if 'sampler' in changed else ' '} {'sampler':<16}{sampler}; n_frames={cfg.n_frames}{' *' if 'n_frames' in changed else ''}")
    return out


def _trained_line(loaded: bool, recorded: set[str] | None, needed: list[str]) -> str:
    """What the weights are: the parts a checkpoint records as trained (what generate checks)."""
    if not loaded:
        return "weights: untrained (a preset's architecture; " + (
            f"made from weights files: {', '.join(sorted(recorded))})" if recorded else "train it, or load a checkpoint)"
        )
    if recorded is None:
        return "trained parts: not recorded (a file from before the record; generate takes it as trained)"
    core = [p for p in needed if p in ("tokenizer", "backbone", "controlnet")]
    if not set(core) <= recorded:
        missing = ", ".join(p for p in core if p not in recorded)
        return f"trained parts: {', '.join(sorted(recorded)) or 'none'} (not {missing}: generate refuses it for foley)"
    if not set(needed) <= recorded:
        missing = ", ".join(p for p in needed if p not in recorded)
        return f"trained parts: {', '.join(sorted(recorded))} (not {missing}: generate warns that it may steer with random weights)"
    return f"trained parts: {', '.join(sorted(recorded))}"


def _explain(model: object, trainable: int) -> list[str]:
    cn = cast("SpecMaskFoley", model).controlnet
    assert cn is not None  # info explains a model with video control only
    copies = sum(p.numel() for p in cn.blocks.parameters())
    zero = sum(p.numel() for p in cn.cond_in.parameters()) + sum(p.numel() for p in cn.outs.parameters())
    rest = trainable - copies - zero
    gap = PAPER_PARAMS["trainable"] - trainable
    return [
        "where the trainable count comes from:",
        f"  {len(cn.blocks)} copied blocks {_fmt(copies)}, zero-initialised linears {_fmt(zero)}, control encoder + aligner {_fmt(rest)}",
        f"  The paper reports ~126M trainable without itemising it; this build has {_fmt(trainable).strip()} "
        f"({_fmt(abs(gap)).strip()} {'fewer' if gap > 0 else 'more'}).",
        "  The paper's text fixes 12 copied blocks of width 768 (~85M); the remainder depends on details it",
        "  does not give (projection widths, FT-Aligner kernel, any extra input/output layers), so the",
        "  difference is reported rather than padded to match.",
    ]


def registry_kind(kind: str) -> str:
    """The registry a KIND of `controlfoley list` names: singular or plural, any case, - or _
    (`presets`, `Vocoders`, `control-encoders`, `MEL_FRONTENDS`)."""
    from controlfoley import ALL_REGISTRIES
    from controlfoley.errors import ConfigError

    k = kind.strip().lower().replace("-", "_")
    for name, reg in ALL_REGISTRIES.items():
        if k in (name, name + "s", reg.attr.lower()):
            return name
    raise ConfigError(
        f"unknown registry kind {kind!r}; choose one of {', '.join(sorted(ALL_REGISTRIES))} (plurals work too, e.g. presets)"
    )


def list_names(kind: str | None, describe: bool = False) -> str:
    """The registered names of one kind (or of all), one line per kind; with `describe`, one line per
    name with the first sentence of its builder's docstring."""
    from controlfoley import ALL_REGISTRIES
    from controlfoley.presets import PRETRAINED

    kinds = [registry_kind(kind)] if kind else sorted(ALL_REGISTRIES)
    out = []
    for k in kinds:
        registry = ALL_REGISTRIES[k]
        shipped = {n: " (trained weights shipped)" if k == "preset" and n in PRETRAINED else "" for n in registry.names()}
        if not describe:
            out.append(f"{k}: {', '.join(n + note for n, note in shipped.items())}")
            continue
        out.append(f"{k}:")
        for n, note in shipped.items():
            raw = inspect.cleandoc(getattr(registry.get(n), "__doc__", None) or "")
            doc = " ".join(raw.split("\n\n")[0].split())  # the first paragraph
            # its first sentence: a period before a capital, a backquote or a quote (not "sec. 4.2", "e.g. X")
            first = re.split(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bsec)\.\s+(?=[A-Z`\"'])", doc)[0].rstrip(".") if doc else "(no docstring)"
            out.append(f"  {n}{note}: {first}")
    return "\n".join(out)


def _take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """The `--plugin X` / `--plugin=X` options found anywhere before a `--` (in order), and the rest
    of the command line, so that `controlfoley generate ... --plugin my_parts.py` works as well."""
    plugins: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":  # everything after it is positional, for the subcommand
            rest += argv[i:]
            break
        if a == "--plugin":
            if i + 1 >= len(argv) or not argv[i + 1]:
                raise SystemExit("error: --plugin needs a module name or a .py path: --plugin my_parts.py")
            plugins.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--plugin="):
            if not a.split("=", 1)[1]:
                raise SystemExit("error: --plugin needs a module name or a .py path: --plugin=my_parts.py")
            plugins.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return plugins, rest


def _plain_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    return f"warning: {message}\n"


def run() -> int:
    """The `controlfoley` program: `main` with warnings printed as one plain line each (not the
    source line of the library call that raised them)."""
    import warnings

    warnings.formatwarning = _plain_warning
    try:
        return main()
    except BrokenPipeError:  # `controlfoley list | head`: the reader left; no traceback (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def load_command_line_plugins(argv: Sequence[str]) -> list[str]:
    """Import the plugins of the environment, of installed packages and of `--plugin X` anywhere in
    `argv` (a PluginError names a broken one); returns the command line without the --plugin options.
    The `controlfoley` command and `python -m controlfoley.train` (torchrun's entry point) call it."""
    plugins, rest = _take_plugins(list(argv))
    from controlfoley._registry import PLUGIN_ENV, PLUGIN_GROUP

    if plugins or os.environ.get(PLUGIN_ENV) or importlib.metadata.entry_points(group=PLUGIN_GROUP):
        from controlfoley._registry import _env_plugins, load_plugins, plugin_path

        # the environment's and installed plugins first (one clear line if one is broken), then --plugin
        load_plugins()
        load_plugins(*plugins, source="--plugin")
        # in the environment too, so that processes this command starts (workers, ranks, in any
        # working directory) import them as well
        given = [str(path) if (path := plugin_path(p)) is not None else p.strip() for p in plugins]
        os.environ[PLUGIN_ENV] = ",".join([*_env_plugins(), *given])
    return rest


def main(argv: Sequence[str] | None = None) -> int:
    from controlfoley._registry import PluginError

    try:
        argv = load_command_line_plugins(sys.argv[1:] if argv is None else argv)
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] in _DELEGATED:
        mod, fn = _DELEGATED[argv[0]]
        return int(getattr(importlib.import_module(mod), fn)(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="controlfoley", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--plugin", action="append", metavar="MODULE|FILE.py",
        help="import this module first (it registers your own parts); repeatable; anywhere on the command line",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="parameter table of a preset or checkpoint beside the paper's numbers, and each part's builder and settings")
    p_info.add_argument("preset", metavar="PRESET_OR_CHECKPOINT", help="a preset name, a .json model config, or a checkpoint file, folder or training run")
    p_info.add_argument(
        "--model", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a build_model override, as train takes it: controlnet.n_blocks=6, aligner=plain1d, backbone='{\"depth\": 8}'; repeatable",
    )  # fmt: skip
    p_list = sub.add_parser("list", help="registered names")
    p_list.add_argument("kind", nargs="?", metavar="KIND", help="preset(s), tokenizer(s), backbone(s), aligner(s), guidance, vocoder(s), ...")
    p_list.add_argument("-v", "--describe", action="store_true", help="one line per name, from its builder's docstring")
    for name in _DELEGATED:
        sub.add_parser(name, help=f"see `controlfoley {name} --help`")
    args = parser.parse_args(argv)
    from controlfoley.errors import ConfigError, ControlFoleyError, RegistryError

    try:
        if args.cmd == "info":
            from controlfoley.config import parse_overrides

            print(info(args.preset, parse_overrides(args.overrides)))
        else:
            print(list_names(args.kind, args.describe))
    except (ControlFoleyError, ConfigError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # `python -m controlfoley.cli`: as the `controlfoley` program
    raise SystemExit(run())
