"""`TrainConfig`: every knob of a training run, frozen, with a JSON round trip and per-recipe defaults.

- `TrainConfig.for_recipe(recipe, **fields)`: the recipe's defaults, then the given fields.
  `controlnet` is the SpecMaskFoley recipe (sec. 4.2): 140K steps, batch 64, AdamW, base LR 1e-3
  scaled by batch / 256, 2.8K linear warm-up steps then cosine, CLAP condition replaced by the
  unconditional mask on 90% of the steps, cross-entropy only, backbone and tokenizer loaded from
  `init`. The paper gives those numbers; what it does not give is controlfoley's choice: AdamW
  betas (0.9, 0.999) and weight decay 0.01 on tensors of rank >= 2, gradient clipping at norm 1,
  a cosine decay to 0. `backbone` (SpecMaskGIT-style masked-token pretraining) and `tokenizer`
  (SpecVQGAN reconstruction + VQ losses) defaults are all controlfoley's choices.
- `recipe` names an entry of the `RECIPES` registry (`controlfoley.train.recipes`): the three
  built-ins or a user's `Recipe` subclass, registered by a plugin. Its defaults (`recipe_defaults`)
  are its `base` recipe's RECIPE_DEFAULTS, then the `defaults` of its class and of the classes it
  derives from; the recipe-specific checks below (`trainable`) follow its `base`. A name that is
  not registered (a run's config.json whose plugin is not loaded) is a `RecipeError` naming the
  registered ones and how to load a plugin.
- `to_json` / `from_json`; unknown fields are a ConfigError naming the known ones.
- `model_overrides` holds JSON values (config.json stores them): a `Part` becomes the dict that
  builds the same part, a `SamplerConfig` its fields (`_json_overrides`).
- `preset` may name a run folder or a checkpoint (file or folder) instead of a preset: the model
  config it records, with `model_overrides` on top, stored as the preset it came from and the
  overrides that build it (`preset_from_checkpoint`): config.json is self-contained, a resume does
  not read the checkpoint. Without a preset, `from_dict` takes `init`'s (the run a stage starts from).
- `from_dict` skips the `_derived` note that `--print-config` adds (see `controlfoley.train.cli`).
- `resume_conflicts(other)`: fields that must not change when a run is resumed (everything but
  the operational ones in `RESUME_MUTABLE`, `grad_accum` among them: like the number of processes
  it only splits the global batch; and `activation_checkpointing`, which only trades memory for
  time), so that a resumed run is the same run; a recipe option is named on its own
  (`recipe_options.NAME`).
- `recipe_options`: the recipe's own settings, declared by its `Options` dataclass
  (`recipe_option_specs`): typed, each with a default, each a `controlfoley train` flag. The
  config holds every one of them (defaults filled in, values checked: by type, then by the
  dataclass's own `__post_init__`), so config.json, `--print-config`, `--config` and `--resume`
  carry them like the other fields.
- `plugins`: where the recipe's code came from, recorded so that a run remembers it: the file and
  SHA-256 of every class of the recipe outside the library (`recipe_plugins`), filled in when the
  config is made (a config read back keeps its record). `controlfoley train NAME --out RUN --resume`
  without `--plugin` loads those files (`controlfoley.train.cli`).
"""

import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import numbers
import os
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from controlfoley._registry import PLUGIN_MODULE_PREFIX, RECIPES, RegistryError, is_a, simple_types
from controlfoley.config import _OPTIONAL_PARTS, ConfigError, Part, SamplerConfig, part_registries
from controlfoley.train.schedule import WarmupCosine, scaled_lr

__all__ = [
    "TrainConfig", "RECIPES", "BUILTIN_RECIPES", "RECIPE_DEFAULTS", "RecipeError", "recipe_class", "recipe_base", "known_base", "recipe_defaults",
    "RESUME_MUTABLE", "PRECISIONS", "VERIFY_LEVELS", "DERIVED_KEY", "RecipeOption", "recipe_option_specs", "option_specs",
    "recipe_plugins", "plugin_changes", "PluginChangedWarning", "RESERVED_OPTION_NAMES",
]  # fmt: skip

# RECIPES (imported above) is the registry of recipe classes; these are the built-in ones, whose
# names a recipe's `base` takes (the flags and checks of that recipe) and RECIPE_DEFAULTS keys
BUILTIN_RECIPES = ("tokenizer", "backbone", "controlnet")
PRECISIONS = ("auto", "fp32", "bf16")
VERIFY_LEVELS = ("none", "size", "header", "sha256")

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tokenizer": {
        "steps": 100_000,
        "batch_size": 32,
        "base_lr": 8e-4,  # 1e-4 at batch 32 after scaling
        "warmup_steps": 1_000,
        "betas": (0.5, 0.9),  # the VQGAN optimiser setting (Esser et al. 2021)
        "weight_decay": 0.0,
    },
    "backbone": {
        "steps": 200_000,
        "batch_size": 256,
        "base_lr": 1e-3,
        "warmup_steps": 5_000,
        "uncond_prob": 0.1,  # classifier-free-guidance style condition dropout
        "uncond_per": "sample",
        "init_parts": ("tokenizer",),
    },
    "controlnet": {
        "steps": 140_000,
        "batch_size": 64,
        "base_lr": 1e-3,
        "warmup_steps": 2_800,
        "uncond_prob": 0.9,
        "uncond_per": "step",  # "for 90% of the training steps" (sec. 3.4)
        "init_parts": ("tokenizer", "backbone"),
    },
}


class RecipeError(RegistryError, ConfigError):
    """A recipe name that is not registered: the RECIPES registry's message (the registered names, and
    how to load the plugin that registers one); a ConfigError, as a refused setting, and a RegistryError."""


def recipe_class(name: str) -> type[Any]:
    """The Recipe subclass registered as `name` (RecipeError when none is)."""
    try:
        return cast("type[Any]", RECIPES.get(name))  # the registry's check (_check_recipe) takes Recipe subclasses only
    except RegistryError as e:
        raise RecipeError(str(e)) from None


def recipe_base(name: str) -> str | None:
    """The built-in recipe whose flags and checks recipe `name` takes (its `base`), or None."""
    return getattr(recipe_class(name), "base", None)


def known_base(name: Any) -> str | None:
    """`recipe_base` for a name read from a run folder: None also where no loaded plugin registers
    it (advice for it then is that of a recipe of one's own)."""
    try:
        return recipe_base(name)
    except RecipeError:
        return None


def recipe_defaults(name: str) -> dict[str, Any]:
    """Recipe `name`'s TrainConfig defaults: its base's RECIPE_DEFAULTS, then the `defaults` of the
    classes it derives from and its own (the nearest last); always with `steps` and `warmup_steps`
    (TrainConfig's where none sets them), the schedule a shorter run keeps the warm-up fraction of."""
    cls = recipe_class(name)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {"steps": fields["steps"], "warmup_steps": fields["warmup_steps"]}
    out.update(RECIPE_DEFAULTS.get(getattr(cls, "base", None) or "", {}))
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("defaults") or {})
    return out


# -- a recipe's own settings (its `Options` dataclass) -----------------------------------------------
# flags of `controlfoley train` that are not TrainConfig fields: an option of that name would take them
RESERVED_OPTION_NAMES = frozenset({"config", "config_file", "model", "resume", "stop_at", "print_config", "plugin", "help"})


@dataclass(frozen=True)
class RecipeOption:
    """One field of a recipe's `Options` dataclass, as the command line and TrainConfig use it:
    `types` the ones it accepts (int, float, str, bool, None), `choices` those of a `Literal`,
    `help` the field's `metadata["help"]`, else the comment after it in the source (as for TrainConfig)."""

    name: str
    types: tuple[type, ...]
    choices: tuple[Any, ...] | None
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def type_names(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        return " or ".join(t.__name__ if t is not type(None) else "None" for t in self.types)

    def check(self, recipe: str, value: Any) -> Any:
        """`value` as the option holds it (an int where a float is declared: that float; a numpy
        number: a Python one), or a ConfigError naming the option, its flag and what it takes."""
        ok = is_a(value, self.types) and (self.choices is None or any(value == c and is_a(value, (type(c),)) for c in self.choices))
        if not ok:
            raise ConfigError(
                f"train config: option {self.name} ({self.flag}) of recipe {recipe!r} must be {self.type_names()}, "
                f"got {value!r} ({type(value).__name__})"
            )
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, numbers.Integral) and int in self.types:
            return int(value)
        if isinstance(value, numbers.Real) and float in self.types:
            return float(value)
        return os.fspath(value) if isinstance(value, os.PathLike) else value


def _option_types(annotation: Any) -> tuple[tuple[type, ...], tuple[Any, ...] | None] | None:
    """(types, choices) of an option's annotation: int, float, str, bool, X | None, or a Literal of
    such values; None for anything else (a flag could not take it)."""
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if choices and all(type(c) in (int, float, str, bool) for c in choices):
            return tuple(dict.fromkeys(type(c) for c in choices)), choices
        return None
    want = simple_types(annotation)
    return None if want is None or want == (type(None),) else (want, None)


def option_specs(options: Any, owner: str) -> dict[str, RecipeOption]:
    """The options a recipe's `Options` declares, by name; a RegistryError (raised when the recipe
    is registered, `check_recipe`) naming what a command line could not take: not a dataclass, an
    option without a default or of another type, a name that another flag holds, defaults its own
    `__post_init__` refuses. `owner`: how messages name the class ("recipe 'x' (MyRecipe)")."""
    if options is None:
        return {}
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise RegistryError(
            f"{owner}: Options must be a dataclass of the recipe's settings (@dataclass class Options: label_smoothing: float = 0.1) "
            f"or None, got {options!r}"
        )
    try:
        hints = typing.get_type_hints(options)
    except Exception:  # noqa: BLE001  (a name only imported under TYPE_CHECKING): the annotations as written
        hints = {}
    comments = _option_comments(options)
    taken = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, RecipeOption] = {}
    for f in dataclasses.fields(options):
        if not f.init:
            continue
        what = f"{owner}: option {f.name}"
        if f.name in taken or f.name in RESERVED_OPTION_NAMES:
            held = "a TrainConfig field" if f.name in taken else "an option of the command line"
            raise RegistryError(f"{what} would take the flag --{f.name.replace('_', '-')} of {held}; give the option another name")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise RegistryError(f"{what} has no default; every option needs one (the value of a run that does not set it), e.g. {f.name}: float = 0.1")
        kind = _option_types(hints.get(f.name, f.type))
        if kind is None:
            raise RegistryError(
                f"{what}: {f.type!r} is not a type a flag can take; declare it int, float, str or bool (or X | None), "
                "or a Literal of such values (its choices)"
            )
        spec = RecipeOption(f.name, kind[0], kind[1], default, str(f.metadata.get("help", "")) or comments.get(f.name, ""))
        try:
            out[f.name] = dataclasses.replace(spec, default=spec.check("?", default))
        except ConfigError:
            raise RegistryError(f"{what}: its default {default!r} is not {spec.type_names()}") from None
    try:
        options(**{k: s.default for k, s in out.items()})
    except (ValueError, TypeError) as e:
        raise RegistryError(f"{owner}: Options() refuses its own defaults: {type(e).__name__}: {e}") from None
    return out


def _option_comments(options: type) -> dict[str, str]:
    """The comment after each field of an Options class in its source (empty where there is none),
    also of the fields it inherits (a subclass's Options derived from its parent's: those are
    written in the parent's source, and the nearest class's comment wins)."""
    out: dict[str, str] = {}
    for klass in reversed(options.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):  # defined where no source is kept
            continue
        out.update({m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^=\n]+(?:=[^#\n]*)?#(.*)$", src, re.MULTILINE)})
    return out


_SPECS: dict[tuple[Any, str], dict[str, RecipeOption]] = {}  # option_specs of a class, read once (each TrainConfig.replace checks its options)


def recipe_option_specs(name: str) -> dict[str, RecipeOption]:
    """The options recipe `name` declares (its class's `Options`; {} for none, as the built-ins)."""
    cls = recipe_class(name)
    key = (getattr(cls, "Options", None), f"recipe {name!r} ({cls.__qualname__})")
    if key not in _SPECS:
        _SPECS[key] = option_specs(*key)
    return dict(_SPECS[key])


def _checked_options(recipe: str, given: Any) -> dict[str, Any]:
    """Every option of the recipe: the given values, checked, over the declared defaults; then the
    Options dataclass built from them, so that its own checks (`__post_init__`) refuse a bad value
    here, before any step, rather than in the middle of a run."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"train config: recipe_options must be a dict of the recipe's options, got {type(given).__name__} {given!r}")
    specs = recipe_option_specs(recipe)
    unknown = [k for k in given if k not in specs]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), specs, n=1) for k in unknown}
        hint = "".join(f" ({k!r}: did you mean {c[0]!r}?)" for k, c in close.items() if c)
        declared = ", ".join(f"{s.name} ({s.flag})" for s in specs.values()) or "none (its class declares no Options)"
        raise ConfigError(f"train config: recipe {recipe!r} has no option(s) {unknown}{hint}; its options: {declared}")
    values = {k: s.check(recipe, given.get(k, s.default)) for k, s in specs.items()}
    if specs:
        try:
            recipe_class(recipe).Options(**values)
        except (ValueError, TypeError) as e:
            shown = ", ".join(f"{specs[k].flag} {given[k]!r}" for k in given) or "its defaults"
            raise ConfigError(f"train config: recipe {recipe!r} refuses {shown}: {e}") from None
    return values


# -- where a recipe's code came from (a run's record of its plugins) ------------------------------
class PluginChangedWarning(UserWarning):
    """A resumed run's recipe code is not what the run recorded (a plugin file edited since)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outside_library(module: str) -> bool:
    """Whether code of `module` is a user's (a plugin's, a script's), not the library's or Python's."""
    return bool(module) and module.split(".")[0] not in ("controlfoley", "builtins", "abc")


def user_parts(model: Any) -> list[tuple[str, str, str]]:
    """(registry kind, part name, builder's module) for each registered part of ModelConfig `model`
    whose builder comes from outside the library: what its plugin files provide."""
    out = []
    for field_name, registry in part_registries().items():
        part = getattr(model, field_name, None)
        if isinstance(part, Part) and part.name in registry:
            module = str(getattr(registry.get(part.name), "__module__", "") or "")
            if _outside_library(module):
                out.append((registry.kind, part.name, module))
    return out


def recipe_plugins(name: str, model: Any = None) -> tuple[dict[str, str], ...]:
    """{"path", "sha256"} of each file that defines a class of recipe `name` outside the library
    (its plugin, and the plugins of the recipes it derives from, those first: the order to load
    them); () for the built-ins. A class without a source file (typed at a prompt) adds nothing.
    A module imported by name (`--plugin my_pkg.recipes`, an entry point) also records its
    "module": a resume imports it so (a package module's relative imports fail when it is run
    from its path alone). With `model` (the run's ModelConfig), also the files of the registered
    parts it names that come from outside the library (a plugin's backbone, aligner, guidance
    rule...), which a resume must load before it rebuilds the model."""
    out: list[dict[str, str]] = []
    modules = [klass.__module__ for klass in reversed(recipe_class(name).__mro__)]
    modules += [module for _, _, module in user_parts(model)] if model is not None else []
    for module in modules:
        if not _outside_library(module):
            continue
        file = getattr(sys.modules.get(module), "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if path.is_file() and all(r["path"] != str(path) for r in out):
            record = {"path": str(path), "sha256": _sha256(path)}
            if module != "__main__" and not module.startswith(PLUGIN_MODULE_PREFIX):  # imported by name
                record["module"] = module
            out.append(record)
    return tuple(out)


def plugin_changes(recorded: Any, now: Sequence[Mapping[str, str]]) -> list[str]:
    """How the recipe's code now (`recipe_plugins`) differs from a run's record of it: one phrase
    per recorded file whose contents are not among those loaded now; [] when none (a file moved
    with its contents unchanged is the same code). `recorded`: config.json's "plugins" (any value:
    a config written before the record existed has none, and nothing is said)."""
    if not isinstance(recorded, (list, tuple)):
        return []
    here = {r.get("sha256") for r in now}
    out = []
    for r in recorded:
        if not isinstance(r, Mapping) or r.get("sha256") in here:
            continue
        path, old = r.get("path"), str(r.get("sha256", ""))[:12]
        same_place = [n for n in now if n.get("path") == path]
        if same_place:
            out.append(f"{path} changed since (sha256 {old}... then, {str(same_place[0].get('sha256'))[:12]}... now)")
        else:
            loaded = ", ".join(str(n.get("path")) for n in now) or "the library"
            out.append(f"{path} (sha256 {old}...) is not the code loaded now ({loaded})")
    return out


# the seeds a run takes: it seeds torch generators with (seed x 1,000,003 + step) x 7 + stream
# (`recipes.step_generator`), which must stay within what torch.Generator.manual_seed takes,
# [-2**63, 2**64), for steps up to 2**32: about +-1.3e12 and 2.6e12 (a millisecond timestamp fits)
SEED_MIN = -(2**63 // 7) // 1_000_003 + 1
SEED_MAX = ((2**64 - 1) // 7 - 2**32 - 7) // 1_000_003

DERIVED_KEY = "_derived"  # --print-config: {field: why} for values derived from others (not fields)

# `out` is the run's folder itself, however it is spelled (runs/a, runs/a/, an absolute path, the
# folder after a move): never a conflict
# `plugins` is a record of where the recipe's code is now, not a setting: a resume whose plugin moved
# (or changed: `plugin_changes`, a warning) records the new one
# `grad_accum` splits the global batch (`batch_size`, which may not change), as the number of
# processes does: a job rescheduled on fewer GPUs resumes with more micro-batches per step to fit in
# memory, and the steps are the same up to float rounding (every loss is normalised globally)
# `activation_checkpointing` trades memory for time and computes the same gradients: a job
# rescheduled on a smaller GPU may switch it on
# `ema_decay` and `ema_warmup` are not here: the EMA of the weights is part of the run's state (its
# checkpoints' model.safetensors hold it, and an EMA started at a resume would not be the run's);
# switching it is refused like any setting, with the way to a new run that keeps one (`train.loop`)
RESUME_MUTABLE = frozenset(
    {"out", "data", "val_data", "num_workers", "log_every", "val_every", "ckpt_every", "keep_last", "verify_data", "device", "tensorboard", "progress",
     "plugins", "grad_accum", "activation_checkpointing"}
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    recipe: str  # tokenizer | backbone | controlnet | a recipe a plugin registers (RECIPES)
    preset: str  # model preset (controlfoley list presets) that `model_overrides` (--model) change; or a run folder or checkpoint: the model it records, --model on top (config.json stores its preset and the merged overrides); default: --init's model
    data: str  # dataset folder (controlfoley.data.shards format)
    out: str  # run folder: config.json, metrics.jsonl, checkpoints/
    model_overrides: Mapping[str, Any] = field(default_factory=dict)  # build_model(preset, **model_overrides)
    recipe_options: Mapping[str, Any] = field(default_factory=dict)  # the recipe's own settings (its Options dataclass), each a flag; all of them, defaults filled in
    val_data: str | None = None  # held-out dataset folder; else `val_fraction` of `data`
    val_fraction: float = 0.0  # fixed pseudo-random fraction of `data` held out for validation (when val_data is None)
    val_max_clips: int = 1024  # validation reads at most this many clips
    init: str | None = None  # checkpoint file, checkpoint folder or run folder holding pretrained parts
    init_parts: tuple[str, ...] = ()  # model parts loaded from `init`
    trainable: tuple[str, ...] | None = None  # backbone/controlnet: the parts this run trains instead of the recipe's (e.g. aligner alone, or backbone,controlnet to unfreeze the backbone)
    steps: int = 140_000  # optimizer steps in the whole run (the schedule's length)
    batch_size: int = 64  # global batch: all ranks and accumulation micro-batches together
    grad_accum: int = 1  # micro-batches per optimizer step (per rank); it splits the global batch, so --resume may change it (e.g. on fewer GPUs)
    base_lr: float = 1e-3  # LR at batch lr_reference_batch (sec. 4.2: 1e-3)
    lr_reference_batch: int = 256  # peak LR = base_lr x batch_size / lr_reference_batch
    warmup_steps: int = 2_800  # linear warm-up steps, then cosine (the paper's ControlNet recipe, sec. 4.2: 2.8K of 140K)
    min_lr: float = 0.0  # LR at the end of the cosine
    weight_decay: float = 0.01  # AdamW, on weights of rank >= 2 only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW; each in [0, 1)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.0  # keep an exponential moving average (EMA) of the trained weights with this decay per optimizer step, in [0, 1); 0 = none. With one, validation runs on the EMA, and model.safetensors (the run's and each checkpoint's) holds it, the raw weights beside it in model_raw.safetensors. Cannot change on --resume
    ema_warmup: bool = False  # with --ema-decay: the decay after step t (counted from 0) is min(ema_decay, (1 + t) / (10 + t)), so the EMA follows the first steps closely instead of staying near the initial weights
    uncond_prob: float = 0.9  # backbone/controlnet: probability the CLAP condition is replaced by the unconditional mask
    uncond_per: str = "step"  # backbone/controlnet: "step": one draw per optimizer step; "sample": one per clip
    l1_weight: float = 1.0  # tokenizer: mel reconstruction L1
    l2_weight: float = 0.0  # tokenizer: mel reconstruction L2
    vq_weight: float = 1.0  # tokenizer: codebook + commitment loss
    adv_weight: float = 0.0  # tokenizer: PatchGAN hinge term; 0 = off (the default)
    adv_start_step: int = 0  # tokenizer: step from which the adversarial term is on
    disc_channels: int = 64  # tokenizer: width of the discriminator's first layer
    codebook_restart_every: int = 0  # tokenizer: every N steps, restart the codes no clip of the step (all micro-batches, all ranks) selects; 0 = off
    codebook_restart_until: int = 1_000_000_000  # tokenizer: no restarts from this step on (let codes settle)
    precision: str = "auto"  # auto, fp32 or bf16; auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the training objective
    activation_checkpointing: bool = False  # backbone/controlnet: recompute each transformer block's activations in the backward pass instead of keeping them (less memory, one more forward of the blocks; the same gradients)
    seed: int = 0  # data order, masks and initialisation; from about -1.3e12 to 2.6e12 (a millisecond timestamp fits)
    shuffle: bool = True
    num_workers: int = 2  # DataLoader worker processes
    log_every: int = 10
    val_every: int = 1_000  # 0 disables periodic validation
    ckpt_every: int = 1_000
    keep_last: int = 3  # checkpoints kept on disk
    verify_data: str = "header"  # none | size | header | sha256 (see controlfoley.data.shards)
    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    progress: bool = True  # tqdm progress bar on rank 0; off (--no-progress, batch jobs): a plain line per log step
    plugins: Sequence[Mapping[str, str]] | None = None  # record: {"path", "sha256"} of the files the recipe's code came from (None: those of the recipe registered now)

    def __post_init__(self) -> None:
        _check_types(self)
        if is_checkpoint_source(self.preset):  # a run or checkpoint: the preset and overrides of the model it records, flags on top
            preset, merged = preset_from_checkpoint(self.preset, self.model_overrides, recipe=self.recipe)
            object.__setattr__(self, "preset", preset)
            object.__setattr__(self, "model_overrides", merged)
        try:  # JSON values, as config.json stores them: a tuple given in Python compares equal on resume
            overrides = json.loads(json.dumps(_json_overrides(self.preset, self.model_overrides)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"train config: model_overrides must hold JSON values (numbers, strings, lists, dicts): {e}") from e
        object.__setattr__(self, "model_overrides", overrides)
        object.__setattr__(self, "init_parts", tuple(self.init_parts))
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
            parts = ("tokenizer", "backbone", "control_encoder", "aligner", "controlnet")
            unknown = [p for p in self.trainable if p not in parts]
            if unknown or not self.trainable:
                raise ConfigError(f"train config: trainable names model parts, some of {', '.join(parts)}; got {list(self.trainable)}")
            base = recipe_base(self.recipe)  # a recipe based on a built-in one: that recipe's checks
            if base == "tokenizer":
                raise ConfigError(f"train config: trainable is for the backbone and controlnet recipes; the {self.recipe} recipe trains the tokenizer")
            video = [p for p in self.trainable if p in ("control_encoder", "aligner", "controlnet")]
            if base == "backbone" and video:
                raise ConfigError(
                    f"train config: the {self.recipe} recipe reads no video, so {', '.join(video)} would get no gradient; "
                    "train them with the controlnet recipe"
                )
            if base in ("backbone", "controlnet") and "tokenizer" in self.trainable:
                raise ConfigError(
                    f"train config: the {self.recipe} recipe reads stored tokens, so the tokenizer gets no gradient; drop it from trainable "
                    "(train it with the tokenizer recipe)"
                )
        object.__setattr__(self, "betas", _checked_betas(self.betas))
        recipe_class(self.recipe)  # registered (else RecipeError: the registered names, how to load a plugin)
        if self.activation_checkpointing and recipe_base(self.recipe) == "tokenizer":
            raise ConfigError(
                f"train config: activation_checkpointing (--activation-checkpointing) recomputes the transformer blocks of the backbone "
                f"and ControlNet, for the backbone and controlnet recipes; the {self.recipe} recipe trains the tokenizer, which has none. Drop it"
            )
        object.__setattr__(self, "recipe_options", _checked_options(self.recipe, self.recipe_options))
        object.__setattr__(self, "plugins", _checked_plugins(self.plugins) if self.plugins is not None else recipe_plugins(self.recipe))
        _check_choice("precision", self.precision, PRECISIONS)
        _check_device(self.device)
        _check_choice("uncond_per", self.uncond_per, ("step", "sample"))
        _check_choice("verify_data", self.verify_data, VERIFY_LEVELS)
        for name in ("steps", "batch_size", "grad_accum", "lr_reference_batch", "log_every", "ckpt_every", "keep_last", "val_max_clips"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"train config: warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}; set --warmup-steps")
        if not 0.0 <= self.uncond_prob <= 1.0:
            raise ConfigError(f"train config: uncond_prob (--uncond-prob) must be in [0, 1], got {self.uncond_prob}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"train config: val_fraction (--val-fraction) must be in [0, 1) (some data must be left to train on), got {self.val_fraction}")
        # "not >= 0": NaN compares False with everything, so a NaN clip or weight is named too (it trained on, or made NaN)
        negative = [k for k in ("val_every", "num_workers", "grad_clip", "adv_weight", "adv_start_step") if not getattr(self, k) >= 0]
        negative += [k for k in ("grad_clip", "adv_weight") if k not in negative and not math.isfinite(getattr(self, k))]
        if negative:
            what = ", ".join(f"{k} (--{k.replace('_', '-')}) is {getattr(self, k)}" for k in negative)
            raise ConfigError(f"train config: {what}; {'it' if len(negative) == 1 else 'each'} must be a finite number, 0 or more")
        if self.init is not None and not self.init_parts:
            raise ConfigError(
                f"train config: init={self.init!r} is given but init_parts is empty; name the parts to load, e.g. --init-parts tokenizer,backbone"
            )
        if self.disc_channels < 1:
            raise ConfigError(f"train config: disc_channels must be >= 1, got {self.disc_channels}")
        # the optimiser's numbers, as given (torch would name the scaled LR, or train on with a negative decay)
        for name in ("base_lr", "min_lr", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"train config: {name} (--{name.replace('_', '-')}) must be a finite number >= 0, got {value}")
        if self.min_lr > self.peak_lr:
            raise ConfigError(
                f"train config: min_lr (--min-lr) is {self.min_lr}, above the peak LR {self.peak_lr:g} (base_lr {self.base_lr} x batch_size "
                f"{self.batch_size} / lr_reference_batch {self.lr_reference_batch}) that the cosine decays from; lower --min-lr or raise --base-lr"
            )
        if not 0.0 <= self.ema_decay < 1.0:  # (a NaN fails this too)
            raise ConfigError(
                f"train config: ema_decay (--ema-decay) must be in [0, 1), got {self.ema_decay}: 0 keeps no EMA of the weights; "
                "a decay d averages over about 1 / (1 - d) steps (0.999: about 1,000), e.g. --ema-decay 0.999"
            )
        if self.ema_warmup and self.ema_decay == 0.0:
            raise ConfigError(
                "train config: ema_warmup (--ema-warmup) warms up the decay of the EMA of the weights, and this run keeps none "
                "(ema_decay 0): add --ema-decay (e.g. 0.999), or drop --ema-warmup"
            )
        if not SEED_MIN <= self.seed <= SEED_MAX:
            raise ConfigError(
                f"train config: seed (--seed) must be in [{SEED_MIN}, {SEED_MAX}] (the run seeds torch generators with numbers derived "
                f"from it), got {self.seed}; pick a smaller seed"
            )

    # -- derived values ------------------------------------------------------------------------
    @property
    def peak_lr(self) -> float:
        return scaled_lr(self.base_lr, self.batch_size, self.lr_reference_batch)

    def lr_schedule(self) -> WarmupCosine:
        return WarmupCosine(self.peak_lr, self.warmup_steps, self.steps, self.min_lr)

    # -- construction and JSON -----------------------------------------------------------------
    @classmethod
    def for_recipe(cls, recipe: str, **fields: Any) -> "TrainConfig":
        """The recipe's defaults, overridden by `fields` (which must include preset, data, out). A run
        shorter than the recipe, with no `warmup_steps` given, keeps the recipe's warm-up fraction
        (ControlNet: 2,800 of 140,000 steps, so 20 of 1,000 and 140 of 7,000); longer runs keep its
        warm-up steps. (Scaling only runs shorter than the warm-up itself made a 2,800-step run all
        warm-up while 2,799 steps warmed up for 56.)"""
        defaults = recipe_defaults(recipe)
        steps = fields.get("steps")
        warmup = defaults["warmup_steps"]
        if fields.get("warmup_steps") is None and isinstance(steps, numbers.Integral) and not isinstance(steps, (bool, np.bool_)) and 1 <= int(steps) < defaults["steps"]:
            # a run shorter than the recipe keeps its warm-up fraction (2% for the ControlNet)
            defaults["warmup_steps"] = round(int(steps) * warmup / defaults["steps"])
        fields = {k: v for k, v in fields.items() if not (k == "warmup_steps" and v is None)}
        # `plugins` records the recipe registered now (a --config file printed by another process holds that one's)
        fields.pop("plugins", None)
        return cls.from_dict({**defaults, **fields, "recipe": recipe})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"], d["init_parts"] = list(self.betas), list(self.init_parts)
        d["plugins"] = [dict(r) for r in self.plugins or ()]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != DERIVED_KEY}  # --print-config's note on derived values
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train config field(s) {unknown}; known fields: {sorted(known)}")
        init = d.get("init")
        if d.get("preset") is None and isinstance(init, (str, os.PathLike)) and os.fspath(init).strip():
            # without a preset, the model of what --init loads: a run or checkpoint (a folder named like a preset
            # included, as resolve_model_file reads it), else a preset's name (a shipped one's weights)
            source = os.fspath(init)
            if Path(source).exists() or is_checkpoint_source(source):
                d["preset"], d["model_overrides"] = preset_from_checkpoint(
                    source, dict(d.get("model_overrides") or {}), recipe=d.get("recipe"), flag="--init"
                )
            else:
                d["preset"] = source
        missing = sorted(k for k in ("recipe", "preset", "data", "out") if d.get(k) is None)
        if missing:
            hint = " (or --init RUN alone for the preset: the model that run trained)" if "preset" in missing else ""
            raise ConfigError(f"train config needs {missing} (e.g. --preset, --data, --out on the command line){hint}")
        kw = {k: v.item() if isinstance(v, np.generic) else v for k, v in d.items()}  # numpy scalars: Python numbers
        for name in ("betas", "init_parts"):
            if name in kw and isinstance(kw[name], list):  # JSON's lists; anything else is the field's check's to name
                kw[name] = tuple(kw[name])
        if isinstance(kw.get("init_parts"), str):  # "tokenizer,backbone" as the flag spells it (a str is not split into characters)
            kw["init_parts"] = tuple(x.strip() for x in kw["init_parts"].split(",") if x.strip())
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "TrainConfig":
        return cls.from_dict(json.loads(s))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def resume_conflicts(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Fields (outside RESUME_MUTABLE) whose values differ: {name: (self, other)}; a recipe
        option as "recipe_options.NAME", so that the message names the one that differs."""
        a, b = self.to_dict(), other.to_dict()
        out = {k: (a[k], b[k]) for k in a if k not in RESUME_MUTABLE and k != "recipe_options" and a[k] != b[k]}
        mine, theirs = a["recipe_options"], b["recipe_options"]
        for k in sorted(set(mine) | set(theirs)):
            if mine.get(k) != theirs.get(k):
                out[f"recipe_options.{k}"] = (mine.get(k), theirs.get(k))
        return out


def _check_types(cfg: "TrainConfig") -> None:
    """Scalar fields of the wrong type (`"steps": "3"` in a --config file) are named here, by the
    check the registries apply to builder arguments (`_registry.is_a`); accepted values become
    plain Python ones (an int or a numpy number where a float is expected: that float; a path: str)."""
    for f in dataclasses.fields(cfg):
        want = simple_types(f.type)
        if want is None:
            continue  # containers are checked where they are used
        value = getattr(cfg, f.name)
        if not is_a(value, want):
            names = " or ".join(t.__name__ if t is not type(None) else "None" for t in want)
            raise ConfigError(f"train config: {f.name} must be {names}, got {value!r} ({type(value).__name__})")
        if value is None or isinstance(value, bool):
            continue
        if float in want and isinstance(value, numbers.Real):
            object.__setattr__(cfg, f.name, float(value))
        elif int in want and isinstance(value, numbers.Integral):
            object.__setattr__(cfg, f.name, int(value))
        elif str in want and isinstance(value, os.PathLike):
            object.__setattr__(cfg, f.name, os.fspath(value))


def _checked_betas(betas: Any) -> tuple[float, float]:
    """AdamW's betas as floats: two real numbers, each in [0, 1) (a ConfigError naming --betas otherwise)."""
    values = tuple(betas) if isinstance(betas, (Sequence, np.ndarray)) and not isinstance(betas, (str, bytes)) else ()
    ok = len(values) == 2 and all(isinstance(b, numbers.Real) and not isinstance(b, (bool, np.bool_)) and 0.0 <= float(b) < 1.0 for b in values)
    if not ok:
        raise ConfigError(f"train config: betas (--betas) must be two numbers, each in [0, 1), e.g. --betas 0.9,0.999; got {betas!r}")
    return float(values[0]), float(values[1])


def _checked_plugins(records: Any) -> tuple[dict[str, str], ...]:
    """A plugins record as config.json holds it: a list of {"path": str, "sha256": str} (and
    "module": str for a module imported by name)."""
    ok = isinstance(records, (list, tuple)) and all(
        isinstance(r, Mapping) and isinstance(r.get("path"), str) and isinstance(r.get("sha256"), str)
        and isinstance(r.get("module", ""), str)
        for r in records
    )
    if not ok:
        raise ConfigError(
            f"train config: plugins is a record of the recipe's files, a list of {{\"path\": ..., \"sha256\": ...}}, got {records!r}; "
            "delete it (the run records the plugin it loads)"
        )
    return tuple({k: str(r[k]) for k in ("path", "sha256", "module") if k in r} for r in records)


def _json_overrides(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`model_overrides` in JSON values. A `SamplerConfig` becomes its fields; a `Part(name, kwargs)`,
    which build_model takes as "replace the part whole", becomes the dict that builds the same part
    (`_part_as_dict`): a training config is JSON, and a dict override merges into the preset's part."""
    out = {}
    for key, value in dict(overrides).items():
        if isinstance(value, SamplerConfig):
            value = dataclasses.asdict(value)
        elif isinstance(value, Part):
            value = _part_as_dict(preset, str(key), value)
        out[key] = value
    return out


def _part_as_dict(preset: str, key: str, part: Part) -> dict[str, Any]:
    """{"name": ..., **kwargs}, plus the builder's defaults for the preset's settings of that part
    that the Part leaves out (a dict would keep them; the Part resets them to those defaults)."""
    as_dict = {"name": part.name, **part.kwargs}
    from controlfoley.builder import model_config

    try:
        merged = getattr(model_config(preset, **{key: as_dict}), key)
        registry = part_registries().get(key)
        params = registry.accepted_args(part.name) if registry is not None else {}
    except (ConfigError, RegistryError):  # an unknown preset or part: named when the run builds its model
        return as_dict
    dropped = sorted(k for k in merged.kwargs if k not in part.kwargs)
    defaults = {k: params[k].default for k in dropped if k in params and params[k].default is not inspect.Parameter.empty}
    unset = [k for k in dropped if k not in defaults or not _jsonable(defaults[k])]
    if unset:
        raise ConfigError(
            f"model_overrides[{key!r}]: a training config stores JSON, where Part({part.name!r}, ...) is the dict "
            f"{json.dumps(as_dict)}; but a dict keeps the rest of preset {preset!r}'s {key} settings, here {unset}, which "
            f"your Part drops. Pass the dict, adding the values you want for {unset}: "
            f"model_overrides={{{key!r}: {json.dumps({**as_dict, **dict.fromkeys(unset, '...')})}}}"
        )
    return {"name": part.name, **defaults, **part.kwargs}


# -- a checkpoint as the preset: the model config it records, as a preset name and overrides ---------
_SOURCE_KINDS = "a training run folder, a checkpoint folder or a .safetensors file"


def is_checkpoint_source(preset: str) -> bool:
    """Whether `preset` names a checkpoint rather than a preset: not a registered preset name (a
    registered name is the preset, also where a folder of that name exists, as build_model has it),
    not a .json model config (build_model reads those), and an existing file or folder, or spelled
    as a path (a separator, a .safetensors suffix). Not an empty or blank name (which the preset
    registry refuses, naming the presets; `Path("")` would be the current folder)."""
    from controlfoley._registry import PRESETS  # (its first lookup registers the built-in presets)

    if not preset.strip() or preset in PRESETS:
        return False
    p = Path(preset)
    if p.suffix == ".json" and not _is_run_config(p):
        return False
    return p.exists() or p.suffix == ".safetensors" or "/" in preset or os.sep in preset


def _is_run_config(p: Path) -> bool:
    """A training run's config.json (what `--preset RUN/config.json` means to name: the run)."""
    try:
        d = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(d, dict) and {"recipe", "preset", "data", "out"} <= d.keys()


def preset_from_checkpoint(
    source: str, overrides: Mapping[str, Any], *, recipe: str | None = None, flag: str = "--preset"
) -> tuple[str, dict[str, Any]]:
    """The model config the checkpoint `source` (a run folder, a checkpoint file or folder: what
    `resolve_model_file` takes) records, with `overrides` applied on top, as (preset name, JSON
    overrides of that preset): what a TrainConfig stores, so that the run's config.json builds the
    same model without the checkpoint (a resume does not need it to exist). A ConfigError names a
    source that is neither a preset nor a readable checkpoint, a recorded model whose preset is not
    registered, parts that are not registered (the plugin file each came from, and `--plugin`), and,
    for a recipe based on `controlnet`, a recorded model without video parts (the flags that add them).
    `flag`: how messages name the source (`--init` where the preset defaults to it)."""
    from controlfoley.builder import model_config
    from controlfoley.checkpoint import PARTS_KEY, _plugin_advice, _registered, config_from_metadata, read_metadata
    from controlfoley.errors import ControlFoleyError
    from controlfoley.train.checkpoints import resolve_model_file

    what = f"{flag} {source}" + (" (whose model this run builds, without --preset)" if flag == "--init" else "")
    p = Path(source)
    both = f"give {'--preset ' if flag == '--init' else ''}a preset name (`controlfoley list presets`) or {_SOURCE_KINDS} whose model to build"
    if not p.exists():
        raise ConfigError(f"{what} is neither a registered preset nor a checkpoint: {p} does not exist; {both}")
    if _is_run_config(p):
        raise ConfigError(f"{what} is a training run's config.json, not a model config; give the run's folder, {flag} {p.parent}")
    try:
        file = resolve_model_file(p)
        meta = read_metadata(file)
        recorded = config_from_metadata(meta, file)
    except (ControlFoleyError, OSError) as e:
        raise ConfigError(f"{what} is neither a registered preset nor a readable checkpoint ({e}); {both}") from None
    if not _registered(recorded):
        raise ConfigError(
            f"{what}: its model needs a part that is not registered here ({_unregistered(recorded)})"
            f"{_plugin_advice(meta.get(PARTS_KEY, '{}'))}"
        )
    try:
        cfg = model_config(recorded, **overrides) if overrides else recorded
    except (ConfigError, RegistryError) as e:
        raise ConfigError(f"{what}: the --model override(s) {', '.join(overrides)} do not apply to the model {file} records: {e}") from None
    base = _recorded_preset(cfg, what, file)
    out = _as_overrides(base, cfg, what)
    if recipe is not None:
        _check_video_parts(cfg, recipe, what, base)
    return base, out


def _unregistered(cfg: Any) -> str:
    from controlfoley.checkpoint import _registry_parts

    return ", ".join(f"{registry.kind} {name!r}" for _, name, registry in _registry_parts(cfg) if name not in registry)


def _recorded_preset(cfg: Any, what: str, file: Path) -> str:
    """The registered preset the model config came from (its `name`), or a ConfigError."""
    from controlfoley._registry import PRESETS

    if cfg.name in PRESETS:
        return str(cfg.name)
    fix = "give the model yourself: --preset NAME with the --model flags of its parts (`controlfoley info " + str(file) + "` lists them)"
    if cfg.name in ("custom", "", None):
        raise ConfigError(f"{what}: the model {file} records was not built from a preset (its config is named {cfg.name!r}); {fix}")
    raise ConfigError(
        f"{what}: the model {file} records was built from preset {cfg.name!r}, which is not registered here; load the plugin that "
        f"registers it (--plugin FILE), or {fix}"
    )


def _as_overrides(base: str, cfg: Any, what: str) -> dict[str, Any]:
    """JSON overrides that turn preset `base` into `cfg` (only what differs): each part that differs as
    the dict that builds it (`_part_as_dict`: the builder's defaults for settings of the preset's part
    that cfg's lacks), n_frames, the sampler's fields. Checked: `base` with them builds `cfg`."""
    from controlfoley.builder import model_config

    preset = model_config(base)
    out: dict[str, Any] = {}
    fields = (*part_registries(), "controlnet")  # every part field of a ModelConfig
    for key in fields:
        mine, theirs = getattr(cfg, key), getattr(preset, key)
        if mine != theirs:
            out[key] = None if mine is None else _part_as_dict(base, key, mine)
    if cfg.n_frames != preset.n_frames:
        out["n_frames"] = cfg.n_frames
    if cfg.sampler != preset.sampler:
        out["sampler"] = dataclasses.asdict(cfg.sampler)
    out = json.loads(json.dumps(out))
    rebuilt = model_config(base, **out)
    differ = [key for key in fields if not _same_part(getattr(rebuilt, key), getattr(cfg, key), out.get(key))]
    differ += [key for key in ("n_frames", "sampler") if getattr(rebuilt, key) != getattr(cfg, key)]
    if differ:  # not expected: the overrides' merge rules leave no other case
        raise ConfigError(
            f"{what}: its model cannot be written as preset {base!r} with overrides ({', '.join(differ)} differ); give the model "
            "yourself, --preset NAME with --model flags"
        )
    return out


def _same_part(built: Any, want: Any, override: Any) -> bool:
    """`built` is `want`, up to the builder defaults `_part_as_dict` spelled out in `override`."""
    if built is None or want is None:
        return built is want
    filled = {k: v for k, v in override.items() if k != "name" and k not in want.kwargs} if isinstance(override, dict) else {}
    return bool(built == Part(want.name, {**filled, **want.kwargs}))


def _check_video_parts(cfg: Any, recipe: str, what: str, base: str) -> None:
    """A recipe based on `controlnet` needs the video parts; a model recorded without them (a
    backbone run on a `specmaskgit*` preset) gets the flags that add those of a preset that has them."""
    try:
        needs = recipe_base(recipe) == "controlnet"
    except RecipeError:
        return  # named where the recipe is checked
    if not needs or cfg.controlnet is not None:
        return
    example = _video_example(cfg)
    flags = " ".join(f"--model {k}='{json.dumps(v)}'" for k, v in example[1].items()) if example else ""
    add = (
        f"add them on top with {flags} (those of preset {example[0]!r}; the control encoder's widths must be those of your features)"
        if example else "add them on top with --model control_encoder=... --model aligner=... --model controlnet=..."
    )
    if example and _same_audio_parts(cfg, example[0]):  # the recorded model is that preset's without its video parts
        add = f"give --preset {example[0]} (the same model with them: what --init holds loads into it), or {add}"
    raise ConfigError(
        f"{what}: the model it records (preset {base!r} with its overrides) has no video parts ({', '.join(_OPTIONAL_PARTS)}), and the "
        f"{recipe} recipe trains the ControlNet; {add}"
    )


def _same_audio_parts(cfg: Any, preset: str) -> bool:
    """Whether model config `cfg` has the mel front end, tokenizer, backbone, vocoder and window of
    `preset` (a `specmaskgit_tiny` model and `specmaskfoley_tiny`)."""
    from controlfoley.builder import model_config

    other = model_config(preset)
    return cfg.n_frames == other.n_frames and all(getattr(cfg, k) == getattr(other, k) for k in ("mel", "tokenizer", "backbone", "vocoder"))


def _video_example(cfg: Any) -> tuple[str, dict[str, Any]] | None:
    """(preset, {part: spec}) of the video parts of a registered preset with the same number of mel
    frames (the shortest name first: `specmaskfoley_tiny` for a `specmaskgit_tiny` model)."""
    from controlfoley._registry import PRESETS
    from controlfoley.builder import model_config
    from controlfoley.errors import ControlFoleyError

    for name in sorted(PRESETS.names(), key=lambda n: (len(n), n)):
        try:
            other = model_config(name)
        except (ControlFoleyError, OSError):
            continue
        if other.controlnet is not None and other.n_frames == cfg.n_frames:
            return name, {k: {"name": getattr(other, k).name, **getattr(other, k).kwargs} for k in _OPTIONAL_PARTS}
    return None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _check_device(device: str) -> None:
    """The device's spelling: auto, or a device type with an optional index as torch writes them
    (cuda:1; not cuda:01, CPU or an empty string). Which types torch knows, and whether this machine
    has the device, is checked where each rank picks its device (train.distributed), so a run
    recorded with another type torch takes (xpu, say) still resumes, --device on top."""
    if device != "auto" and not re.fullmatch(r"[a-z][a-z0-9_]*(:(0|[1-9][0-9]{0,3}))?", device):  # without importing torch here
        raise ConfigError(f"train config: device (--device) must be auto, cpu, cuda, cuda:N or mps (or another device torch names); got {device!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"train config: {name} must be one of {choices}, got {value!r}")
