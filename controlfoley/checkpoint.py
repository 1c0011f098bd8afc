"""The library's checkpoint format: safetensors, with the model config JSON in the file's metadata.

- `save_model` / `load_model`: whole models; a round trip rebuilds the same model with identical logits.
- `load_parts`: load only some parts (tokenizer, backbone, ...) from a file, e.g. a pretrained
  backbone into a fresh SpecMaskFoley; the ControlNet copy is re-synchronised from the new backbone.
- Every mismatch (missing or unexpected keys, shapes) is a CheckpointError that names the keys.
- A part loaded into a model that builds it otherwise than its weights were trained (another builder,
  other settings: `_trained_otherwise`) warns, and the model remembers what the part was trained as
  (`model.trained_as`); a save writes that record (TRAINED_AS_KEY), so loading the saved file warns
  again, until the part is trained as it is built (a training run's checkpoint drops it) or loaded
  into a model built as it was trained.
- A training run that keeps an exponential moving average of its weights (`--ema-decay`) writes the
  averaged weights with EMA_KEY in the metadata (`ema_record`: its decay, warm-up, the steps it
  averaged and the file beside it holding the raw weights; `controlfoley info` says so), and the raw
  weights with RAW_OF_EMA_KEY (the file beside them holding the average).
Writes are atomic (temporary file + rename).
"""

import json
import os
import shlex
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from controlfoley._ckpt_kind import is_torch_pickle
from controlfoley._io import atomic_path, write_failure
from controlfoley._registry import MASK_SCHEDULES, RegistryError
from controlfoley._static import ModelModule
from controlfoley.config import ConfigError, ModelConfig, Part, part_registries
from controlfoley.errors import CheckpointError, user_stacklevel

__all__ = [
    "save_model", "load_model", "load_parts", "save_state_dict", "read_state_dict", "check_state_dict", "trained_parts", "read_metadata",
    "feature_record", "trained_as", "trained_as_lines", "ema_record", "ema_lines",
    "CONFIG_KEY", "TRAINED_KEY", "TRAINED_AS_KEY", "EMA_KEY", "RAW_OF_EMA_KEY",
]  # fmt: skip

CONFIG_KEY = "controlfoley_config"
TRAINED_KEY = "controlfoley_trained"  # JSON list of the parts holding trained weights (absent: unknown)
PARTS_KEY = "controlfoley_user_parts"  # JSON {config field: "module (file)"} of parts registered outside the package
FORMAT_KEY = "controlfoley_format"
DEFAULTS_KEY = "controlfoley_builder_defaults"  # JSON {field: {arg: value}}: builder defaults the config relied on
FEATURES_KEY = "controlfoley_features"  # JSON {feature key: {"extractor", "args", "dim"}}: what the training data's features came from
# JSON {part: {"name", "given", "settings", "blocks" (the ControlNet's), "source", "changed"}}: the trained parts whose
# weights were trained with another builder or other settings than this file's config builds them with (`trained_as`);
# absent: every trained part was trained as the config builds it (as in files from before the record)
TRAINED_AS_KEY = "controlfoley_trained_as"
# JSON {"decay", "warmup", "step", "raw"}: the trained tensors of this file are an exponential moving average (EMA) of a
# training run's weights (`controlfoley train --ema-decay`) over its first `step` optimizer steps; "raw": the name of the
# file beside it holding the raw weights (the frozen parts are the same in both). Absent: the weights as trained.
EMA_KEY = "controlfoley_ema"
# JSON {"ema": name, "step": int}: the other side of EMA_KEY, in the file of the raw weights (the weights as trained,
# which --resume continues from) of a run that keeps an EMA; "ema": the file beside it holding the average.
RAW_OF_EMA_KEY = "controlfoley_raw_of_ema"
FORMAT_VERSION = "1"


def save_state_dict(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Atomically write tensors (made contiguous, on CPU) with string metadata (anything else in
    it is a ConfigError naming the key)."""
    _check_metadata(metadata, "metadata")
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={FORMAT_KEY: FORMAT_VERSION, **dict(metadata)})
    except (OSError, SafetensorError) as e:  # a folder that cannot be made or written, a full disk: the target named, not the temporary file
        # (safetensors' own error carries the OS's text, "os error 28", which write_failure reads as a full disk)
        reason = write_failure(path, e, fix="save to a folder you can write to")
        raise CheckpointError(f"{reason} (nothing was written, an existing file there is unchanged)") from e
    return path


def read_state_dict(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = _resolve_file(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from e
    return state, meta


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    """The error for a file safetensors cannot read: a PyTorch pickle is named, with how to load one."""
    if is_torch_pickle(path):
        known = _pickle_kind(path)
        if known is not None:
            # a controlfoley model's state dict (torch.save(model.state_dict(), ...)): its advice converts it
            label = "the state dict of a controlfoley model (torch.save)" if known.key == "controlfoley" else known.label
            return CheckpointError(f"{path} is a PyTorch pickle, not a controlfoley (safetensors) checkpoint: it is {label}; " + known.advice(path))
        return CheckpointError(
            f"{path} is a PyTorch pickle (.ckpt / .pt), not a controlfoley (safetensors) checkpoint. An official SpecVQGAN "
            f"codebook is loaded by the tokenizer's builder, with SpecVQGAN's own mel: build_model(..., mel='specvqgan', "
            f"tokenizer={{'checkpoint': '{path}'}}), on the command line --model 'mel=\"specvqgan\"' "
            f"--model 'tokenizer={{\"checkpoint\": \"{path}\"}}'; HiFi-GAN / MelGAN generators by the "
            "vocoder's (vocoder={'name': 'hifigan', 'checkpoint': ...})"
        )
    return CheckpointError(f"{path} is not a readable safetensors file ({e}). Is it truncated, or another format?")


def _pickle_kind(path: Path) -> Any:
    """What a pickled weights file is (`_ckpt_kind.Kind`), read with weights_only; None if unknown or unreadable."""
    from controlfoley._ckpt_kind import identify_container
    from controlfoley._legacy import load_legacy_checkpoint

    try:
        return identify_container(load_legacy_checkpoint(path, trust=False))
    except Exception:  # noqa: BLE001  only for a better message: the generic one stands
        return None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A checkpoint's metadata alone (the header; no tensor is read)."""
    path = _resolve_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from e


def _resolve_file(path: str | os.PathLike[str]) -> Path:
    """The model file of a .safetensors path, a checkpoint folder, or a training run (its final model;
    a run still in progress, or stopped with --stop-at: its latest checkpoint, with a warning)."""
    p = Path(path)
    if p.is_dir() and not (p / "model.safetensors").is_file():
        from controlfoley.train.checkpoints import resolve_model_file

        try:
            found = resolve_model_file(p)
        except CheckpointError:
            raise CheckpointError(
                f"checkpoint not found: {p / 'model.safetensors'} does not exist, and {p} is not a training run with "
                "checkpoints; give a .safetensors file, a checkpoint folder or a run folder"
            ) from None
        warnings.warn(f"{p} has no final model (a run not finished yet, or stopped with --stop-at): loading its latest checkpoint, {found.parent.name}", stacklevel=user_stacklevel())
        return found
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    from controlfoley.train.checkpoints import refuse_run_config

    refuse_run_config(p)
    return p


_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npz", ".h5")


# the metadata keys save_model writes itself: `extra_metadata` may not replace them (the file would not load)
RESERVED_KEYS = (FORMAT_KEY, CONFIG_KEY, TRAINED_KEY, PARTS_KEY, DEFAULTS_KEY, FEATURES_KEY, TRAINED_AS_KEY)


def _check_metadata(metadata: Any, arg: str) -> None:
    """A ConfigError naming `arg` unless `metadata` is a mapping of strings to strings (safetensors
    stores nothing else): numbers are refused rather than converted, so that what is read back
    (a str) is what was given."""
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"{arg} must be a dict of strings, e.g. {{'epoch': '3'}}, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ConfigError(f"{arg} keys must be strings, got {key!r} ({type(key).__name__}); use {str(key)!r}")
        if not isinstance(value, str):
            raise ConfigError(
                f"{arg}[{key!r}] is {value!r} ({type(value).__name__}); a checkpoint's metadata holds strings: pass one, e.g. "
                f"{{{key!r}: {str(value)!r}}} (json.dumps a list or dict, and json.loads it when read back)"
            )


def _warn_unrecorded_guidance(model: ModelModule) -> None:
    """A rule set on `model.guidance` that its config's guidance does not build: the file records the
    config's (a rule object has no config to record), so the loaded model would sample otherwise."""
    from controlfoley._registry import GUIDANCE
    from controlfoley.builder import _build_part

    try:
        recorded = _build_part(GUIDANCE, model.config.guidance)  # as from_pretrained will build it
    except Exception:  # noqa: BLE001  (a rule the config cannot build here is for the loader to name)
        return
    if type(recorded) is not type(model.guidance) or repr(recorded) != repr(model.guidance):
        warnings.warn(
            f"model.guidance is {model.guidance!r}, but model.config.guidance ({model.config.guidance.name}"
            f"{model.config.guidance.kwargs or ''}) builds {recorded!r}, and the file records the config: the loaded model "
            "samples with that. To save yours, set it through the config, e.g. "
            "model.config = model.config.override(guidance={'name': NAME, 'scale': ...}) (which also sets model.guidance)",
            stacklevel=user_stacklevel(),
        )


def save_model(model: ModelModule, path: str | os.PathLike[str], *, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Save a SpecMaskFoley model: all parameters and persistent buffers, config in metadata, to
    `path` (a .safetensors file) or `path/model.safetensors` (any other path is a folder).
    `extra_metadata`: more str -> str pairs to store (`read_metadata` returns them); a value that is
    not a str (a number: str() or json.dumps it) and a key the library writes itself
    (`RESERVED_KEYS`, e.g. controlfoley_config) are ConfigErrors, before anything is written."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(
            f"save takes a .safetensors file or a folder (a str or os.PathLike, e.g. 'model.safetensors'), got {path!r} ({type(path).__name__})"
        )
    if extra_metadata is not None:
        _check_metadata(extra_metadata, "extra_metadata")
        taken = [k for k in extra_metadata if k in RESERVED_KEYS]
        if taken:
            raise ConfigError(
                f"extra_metadata key(s) {taken} are the library's own (it writes {', '.join(RESERVED_KEYS)}; replacing one makes "
                "a file that does not load); give your key(s) another name"
            )
    path = Path(path)
    if path.suffix.lower() in _OTHER_WEIGHT_SUFFIXES:  # it would become a folder named like a file
        raise CheckpointError(
            f"cannot save to {path}: controlfoley checkpoints are safetensors files; give a .safetensors path, "
            f"or a folder (it gets model.safetensors), e.g. {path.with_suffix('.safetensors')}"
        )
    from controlfoley.quantize import is_quantized

    if is_quantized(model):
        raise CheckpointError(
            "this model's block linears are fp8 (quantize_fp8), a lossy copy for sampling that a checkpoint cannot hold: "
            "save the model before quantizing, and quantize after loading"
        )
    if path.suffix.lower() != ".safetensors":  # any case, as the check above: "Model.SAFETENSORS" is a file, not a folder
        path = path / "model.safetensors"
    _warn_unrecorded_guidance(model)
    meta = {CONFIG_KEY: model.config_as_sampling().to_json(), **dict(extra_metadata or {})}
    trained = getattr(model, "trained_parts", None)
    if trained is not None:
        meta[TRAINED_KEY] = json.dumps(sorted(trained))
        # what parts loaded with other settings were trained as (`trained_as`): only trained parts (another's weights are
        # built ones), and only with a record of what was trained (None: weights from elsewhere, load_state_dict)
        otherwise = {k: v for k, v in (getattr(model, "trained_as", None) or {}).items() if k in trained}
        if otherwise:
            meta[TRAINED_AS_KEY] = json.dumps(otherwise, sort_keys=True)
    features = getattr(model, "feature_record", None)
    if features:
        meta[FEATURES_KEY] = json.dumps(features, sort_keys=True)
    user = _user_parts(model.config)
    if user:
        meta[PARTS_KEY] = json.dumps(user)
    from controlfoley.builder import builder_defaults

    defaults = builder_defaults(model.config)
    if defaults:
        meta[DEFAULTS_KEY] = json.dumps(defaults, sort_keys=True)
    return save_state_dict(path, model.state_dict(), meta)


def _registry_parts(cfg: ModelConfig) -> list[tuple[str, str, Any]]:
    """(config field, part name, its registry) for each part of `cfg` built from a registry, and the
    sampler's mask schedule (a registered name too, maybe a plugin's)."""
    parts = [(field, getattr(cfg, field), registry) for field, registry in part_registries().items()]
    named = [(field, part.name, registry) for field, part, registry in parts if part is not None]
    return [*named, ("sampler.mask_schedule", cfg.sampler.mask_schedule, MASK_SCHEDULES)]


def _registered(cfg: ModelConfig) -> bool:
    """Whether every part name of `cfg` is registered in this process."""
    return all(name in registry for _, name, registry in _registry_parts(cfg))


def feature_record(meta: Mapping[str, str] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{feature key: {"extractor": NAME, "args": {...}, "dim": D}}: the extractors that made the
    features a model was trained on, from a checkpoint's metadata or a dataset's index info
    ("features"); entries without an extractor name (tokens, mel) are left out. {} when none."""
    raw = meta.get(FEATURES_KEY, "{}") if FEATURES_KEY in meta else meta.get("features", {})
    try:
        found = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    if not isinstance(found, Mapping):
        return {}
    return {
        str(k): {"extractor": v["extractor"], "args": dict(v.get("args") or {}), "dim": v.get("dim")}
        for k, v in found.items()
        if isinstance(v, Mapping) and isinstance(v.get("extractor"), str) and isinstance(v.get("args", {}) or {}, Mapping)
    }


def trained_parts(meta: Mapping[str, str]) -> set[str] | None:
    """The parts a checkpoint records as trained; None for a checkpoint that records nothing."""
    return set(json.loads(meta[TRAINED_KEY])) if TRAINED_KEY in meta else None


def trained_as(meta: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """{part: record} of the trained parts whose weights were trained with another builder or other
    settings than the checkpoint's config builds them with (TRAINED_AS_KEY; `model.trained_as` holds
    the same for a loaded model): "name", "given" and "settings" (its builder, the settings it was
    given, the same with the builder's defaults), for the ControlNet "blocks" (the backbone that built
    its copied blocks, alike), "source" (the file the weights came from) and "changed" ("arg: trained
    -> built" lines). {} for a file without the record (older files, and any whose parts are trained
    as built); an entry that does not read is left out, as if trained as built."""
    return {key: entry for key, (_, entry) in _read_trained_as(meta).items()}


def trained_as_lines(record: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per part of a `trained_as` record, for `controlfoley info`: what changed since its
    weights were trained, and what they were trained as."""
    lines = []
    for key, entry in sorted(record.items()):
        old = _TrainedAs.from_json(entry)
        if old is None:
            continue
        changed = [str(c) for c in entry.get("changed") or ()]
        detail = f" ({'; '.join(changed)})" if changed else ""
        lines.append(
            f"trained otherwise: {key} is built otherwise than its weights were trained{detail}; trained as {key}={old.spec()} "
            f"(weights from {entry.get('source', '?')}): it will not behave as trained"
        )
    return lines


def ema_record(meta: Mapping[str, str]) -> dict[str, Any] | None:
    """EMA_KEY read: {"decay": float, "warmup": bool, "step": int, "raw": str} when the file's trained
    weights are an exponential moving average of a run's; None when they are the weights as trained
    (or the record does not read)."""
    try:
        raw = json.loads(meta[EMA_KEY]) if EMA_KEY in meta else None
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("decay"), (int, float)):
        return None
    return {"decay": float(raw["decay"]), "warmup": bool(raw.get("warmup", False)), "step": int(raw.get("step", 0)), "raw": str(raw.get("raw", ""))}


def ema_lines(meta: Mapping[str, str], path: str | os.PathLike[str]) -> list[str]:
    """`controlfoley info`'s line for the file at `path` whose metadata is `meta`: that its trained
    weights are an EMA (decay, warm-up, steps) and where the raw weights are; [] for weights as trained."""
    record = ema_record(meta)
    if record is None:
        return _raw_of_ema_lines(meta, path)
    warmup = ", warmed up as min(decay, (1 + step) / (10 + step))" if record["warmup"] else ""
    raw = Path(path).parent / record["raw"] if record["raw"] else None
    where = "" if raw is None else f"; the raw weights: {raw}{'' if raw.is_file() else ' (not there)'}"
    return [
        f"weights: an exponential moving average (EMA) of the trained weights, decay {record['decay']:g}{warmup}, over "
        f"{record['step']} optimizer steps (frozen parts as they are){where}"
    ]


def _raw_of_ema_lines(meta: Mapping[str, str], path: str | os.PathLike[str]) -> list[str]:
    """ema_lines for the raw-weights file of a run that keeps an EMA (RAW_OF_EMA_KEY); [] otherwise."""
    try:
        raw = json.loads(meta[RAW_OF_EMA_KEY]) if RAW_OF_EMA_KEY in meta else None
    except ValueError:
        return []
    if not isinstance(raw, dict) or not isinstance(raw.get("ema"), str):
        return []
    ema = Path(path).parent / raw["ema"]
    step = raw.get("step")
    after = f" after {step} optimizer steps" if isinstance(step, int) else ""
    return [
        f"weights: as trained{after}, not averaged (what --resume continues from); the run's exponential moving average "
        f"(EMA) of them, what it validates and ships: {ema}{'' if ema.is_file() else ' (not there)'}"
    ]


def _read_trained_as(meta: Mapping[str, str]) -> dict[str, tuple["_TrainedAs", dict[str, Any]]]:
    """TRAINED_AS_KEY read: {part: (what it was trained as, its record entry)}; {} when absent or unreadable."""
    try:
        raw = json.loads(meta[TRAINED_AS_KEY]) if TRAINED_AS_KEY in meta else {}
    except ValueError:
        return {}
    out = {}
    for key, entry in (raw.items() if isinstance(raw, dict) else ()):
        old = _TrainedAs.from_json(entry)
        if old is not None and isinstance(key, str):
            out[key] = (old, dict(entry))
    return out


def _user_parts(cfg: ModelConfig) -> dict[str, str]:
    """Config fields whose builder lives outside the package: where it came from, so that loading
    the checkpoint elsewhere can say which module to load."""
    out = {}
    for field, name, registry in _registry_parts(cfg):
        if name not in registry:
            continue
        fn = registry.get(name)
        module = getattr(fn, "__module__", "") or ""
        if not module.startswith("controlfoley.") and module != "controlfoley":
            code = getattr(fn, "__code__", None)
            if code is not None and module.startswith("controlfoley_plugin_"):  # a plugin loaded by path: its name is made up
                out[field] = f"the plugin file {code.co_filename}"
            else:
                out[field] = f"{module} ({code.co_filename})" if code is not None else module
    return out


def _plugin_advice(recorded: str) -> str:
    """Where a checkpoint's unregistered parts came from (`_user_parts`' record, grouped by origin)
    and how to load them: the plugin file by name, `(gone)` where it no longer exists; a part
    registered in a script run as __main__ cannot be loaded by running that script again."""
    try:
        user = json.loads(recorded)
    except ValueError:
        user = {}
    by_origin: dict[str, list[str]] = {}
    for field, origin in (user.items() if isinstance(user, dict) else ()):
        by_origin.setdefault(str(origin), []).append(str(field))
    generic = "Load the module that registers it: `controlfoley --plugin FILE ...` on the command line, `import` it or controlfoley.load_plugins(FILE) in Python"
    if not by_origin:
        return ". " + generic
    said, fixes = [], []
    for origin, fields in by_origin.items():
        file = origin.removeprefix("the plugin file ")
        if origin.startswith("__main__ (") and origin.endswith(")"):
            file = origin[len("__main__ (") : -1]
            said.append(f"its {', '.join(fields)} came from the script {file}, run as __main__")
            fixes.append(
                f"move the registration of its {', '.join(fields)} out of {file} into a module of its own and load that "
                "(`controlfoley --plugin MODULE.py ...`, or import it; loading the script itself would run it), or guard the "
                "script's body with `if __name__ == \"__main__\":`"
            )
            continue
        gone = " (gone)" if origin.startswith("the plugin file ") and not Path(file).is_file() else ""
        said.append(f"its {', '.join(fields)} came from {origin}{gone}")
        if origin.startswith("the plugin file "):
            fixes.append(
                f"`controlfoley --plugin {file} ...` (Python: controlfoley.load_plugins({file!r}))" if not gone
                else "give the file's new place: `controlfoley --plugin NEW/PATH.py ...` (Python: controlfoley.load_plugins('NEW/PATH.py'))"
            )
        else:  # "module (its file)": the command line imports a module by name only where it is on sys.path
            module = origin.split(" (")[0]
            source = origin[len(module) + 2 : -1] if origin.endswith(")") and " (" in origin else ""
            depth = module.count(".") + (1 if Path(source).name == "__init__.py" else 0)
            if source and Path(source).is_file() and depth == 0:  # a module of its own: its file loads by path
                by_file = f"`controlfoley --plugin {shlex.quote(source)} ...`"
            elif source and Path(source).is_file():  # inside a package (relative imports): by name, its package's folder on the path
                root = Path(source).parents[depth]
                by_file = f"`PYTHONPATH={shlex.quote(str(root))} controlfoley --plugin {module} ...`"
            else:
                by_file = f"`controlfoley --plugin {module} ...` with it importable"
            fixes.append(f"import {module} in Python (or controlfoley.load_plugins); on the command line {by_file}")
    return "; when it was saved, " + "; ".join(said) + ". Load it: " + "; ".join(fixes)


def config_from_metadata(meta: Mapping[str, str], path: Path) -> ModelConfig:
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path} has no controlfoley config in its metadata; it was not written by controlfoley.save")
    try:
        saved = json.loads(meta[CONFIG_KEY])
    except ValueError as e:
        raise CheckpointError(
            f"{path}: its controlfoley config (metadata {CONFIG_KEY!r}) is not valid JSON ({e}); the file was edited or damaged: "
            "save the model again, or give the config yourself (build_model(CONFIG) then load_state_dict)"
        ) from None
    return ModelConfig.from_dict(saved)


def check_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], what: str, own: Mapping[str, torch.Tensor] | None = None, fix: str | None = None
) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys (strict loading);
    `own`: the module's keys to check against (default: all of its state dict); `fix`: the last
    line's advice (default: build from the checkpoint's own config)."""
    own = module.state_dict() if own is None else own
    missing, unexpected, mis_shaped = _mismatch(own, state)
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}" for k in mis_shaped]
    if missing or unexpected or shapes:
        msg = [f"{what} does not match the model:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                msg.append(f"  {label} ({len(items)}): {', '.join(items[:8])}{more}")
        msg.append(fix or "  Was it saved from another preset or config? Build the model from the checkpoint's own config (from_pretrained).")
        raise CheckpointError("\n".join(msg))


def _mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of `state` against the model's `own`, sorted."""
    shared = sorted(set(own) & set(state))
    return sorted(set(own) - set(state)), sorted(set(state) - set(own)), [k for k in shared if own[k].shape != state[k].shape]


def _blamed_overrides(overrides: Mapping[str, Any], state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """The overrides behind a mismatch: a part whose keys are among the missing, unexpected or
    mis-shaped ones, or a field that sizes several parts (n_frames, mel) when anything mismatches."""
    bad = [k for keys in _mismatch(own, state) for k in keys]
    if not bad:
        return []
    parts = {k.split(".")[0] for k in bad}
    return sorted(k for k in overrides if k in parts or k in ("n_frames", "mel"))


def _part_config_hint(meta: Mapping[str, str], model: ModelModule, parts: Sequence[str]) -> str:
    """Where parts' weights do not fit because the checkpoint built them differently: each one's
    builder and settings there and here, and the flags that build all of them like the checkpoint
    did (one message for every part, not one part per attempt)."""
    try:
        cfg = config_from_metadata(meta, Path("?"))
    except (CheckpointError, ValueError):
        return ""
    lines, flags, kwargs = [], [], []
    for part in parts:
        theirs, ours = getattr(cfg, part, None), getattr(getattr(model, "config", None), part, None)
        if theirs is None or theirs == ours:
            continue
        spec = json.dumps({"name": theirs.name, **theirs.kwargs})
        lines.append(
            f"\n  The checkpoint's {part} is {theirs.name!r} {theirs.kwargs}, this model's is {getattr(ours, 'name', None)!r} {getattr(ours, 'kwargs', {})}."
        )
        flags.append(f"--model {part}='{spec}'")
        kwargs.append(f"{part}={spec}")
    if not lines:
        return ""
    what = "it" if len(lines) == 1 else "them"
    return "".join(lines) + (
        f"\n  Build {what} like the checkpoint: {' '.join(flags)} on the command line, build_model(..., {', '.join(kwargs)}) in Python"
        " (controlfoley train: --preset CHECKPOINT builds the whole model as the checkpoint records it)."
    )


def _saved_defaults(meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The builder defaults a checkpoint recorded at save time ({field: {arg: value}}); None when it
    records none (older files) or the record does not read."""
    try:
        saved = json.loads(meta[DEFAULTS_KEY]) if DEFAULTS_KEY in meta else None
    except ValueError:
        return None
    return saved if isinstance(saved, dict) else None


def _with_saved_defaults(cfg: ModelConfig, meta: Mapping[str, str], where: Path) -> ModelConfig:
    """`cfg` with the builder defaults recorded at save time made explicit where a builder's default
    has changed since (a plugin edited, a library update): the checkpoint's model is rebuilt, and a
    warning names each change. Parts whose builder is not registered are left to the loader's error."""
    from controlfoley.builder import builder_defaults

    saved = _saved_defaults(meta)
    if not saved:
        return cfg
    if not _registered(cfg):
        return cfg
    now = builder_defaults(cfg)
    changes: dict[str, dict[str, Any]] = {}
    for field_name, args in saved.items():
        part = getattr(cfg, field_name, None)
        if part is None or not isinstance(args, dict):
            continue
        current = now.get(field_name, {})
        changed = {a: v for a, v in args.items() if a in current and current[a] != v}  # (builder_defaults leaves out set arguments)
        if changed:
            changes[field_name] = changed
            told = ", ".join(f"{a}={current[a]!r} (saved with {v!r})" for a, v in changed.items())
            warnings.warn(
                f"{where}: the {field_name} builder {part.name!r} now defaults to {told}; the checkpoint's model is built with "
                f"the saved values (pass {field_name}={{...}} to from_pretrained to choose others)",
                stacklevel=4,
            )
    return cfg.override(**changes) if changes else cfg


def load_model(
    path_or_preset: str | os.PathLike[str], *, strict: bool = True, map_location: str | torch.device = "cpu", **overrides: Any
) -> ModelModule:
    from controlfoley.builder import build_without_weight_files
    from controlfoley.presets import pretrained_path

    if not isinstance(path_or_preset, (str, os.PathLike)):
        raise CheckpointError(f"from_pretrained takes a checkpoint path or the name of a preset that ships weights, got {type(path_or_preset).__name__}")
    p = Path(path_or_preset)
    if not p.exists():
        bundled = pretrained_path(str(path_or_preset))
        if bundled is None:
            from controlfoley._registry import PRESETS
            from controlfoley.presets import PRETRAINED

            name = str(path_or_preset)
            hint = f"; build_model({name!r}) gives that preset untrained" if name in PRESETS else ""
            if name not in PRESETS and (p.suffix or os.sep in name or "/" in name):  # meant as a path: say which is missing
                near = sorted(q.name for q in p.parent.glob("*.safetensors"))[:5] if p.parent.is_dir() else []
                where = f"; {p.parent} holds {', '.join(near)}" if near else ("" if p.parent.is_dir() else f"; its folder {p.parent} does not exist either")
                raise CheckpointError(f"checkpoint not found: {p} does not exist{where}")
            raise CheckpointError(
                f"{name} is neither a checkpoint file/folder nor a preset that ships weights ({', '.join(sorted(PRETRAINED))}){hint}"
            )
        p = bundled
    weights = _resolve_file(p)  # the file read (a run's latest checkpoint, once): what loaded_from records
    state, meta = read_state_dict(weights, map_location)
    cfg = _with_saved_defaults(config_from_metadata(meta, p), meta, p)
    # built without reading the parts' weights files (this file holds their weights), except the
    # parts (`fresh`) given a new weights file by the overrides: those keep that file's weights
    try:
        model, fresh = build_without_weight_files(cfg, overrides)
    except RegistryError as e:
        if _registered(cfg):  # a bad argument, not a missing plugin
            raise
        raise CheckpointError(
            f"{p} needs a part that is not registered here ({str(e).split('. Register your own')[0]}){_plugin_advice(meta.get(PARTS_KEY, '{}'))}"
        ) from e
    except ConfigError as e:
        if not overrides:
            raise
        # the advice of a build error (set another part to fit) would build parts the weights do not fit either
        raise ConfigError(
            f"{p}: the override(s) {', '.join(overrides)} cannot build a model for this checkpoint ({e}). Its weights fit the "
            "parts it was saved with: drop the override(s) to load it as saved, or build the variant with build_model and "
            "load the parts that fit with controlfoley.checkpoint.load_parts"
        ) from e
    state = {k: v for k, v in state.items() if k.split(".")[0] not in fresh}
    own = {k: v for k, v in model.state_dict().items() if k.split(".")[0] not in fresh}
    if strict:
        blamed = _blamed_overrides(overrides, state, own)
        fix = None
        if blamed:  # the user's own overrides changed the shapes: building from the file's config is not the fix
            fix = (
                f"  The override(s) {', '.join(blamed)} build parts the checkpoint's weights do not fit: drop them to load it "
                "as saved, or pass strict=False to load what fits and keep the rest as built"
            )
        else:
            fix = _partial_file_advice(p, state, own)
        check_state_dict(model, state, str(p), own=own, fix=fix)
        fits = state
    else:  # the weights that fit: names and shapes
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    found: list[_Otherwise] = []
    if overrides or TRAINED_AS_KEY in meta:  # a part built otherwise (another builder, other settings) whose weights still fit by names and shapes
        loaded = {k.split(".")[0] for k in fits}
        found = _trained_otherwise(meta, cfg, model.config, [f for f in _PART_FIELDS if f in loaded and f not in fresh])
    if not strict:  # what keeps its built weights: for a part built otherwise in its own warning (one per part), the rest here
        told = {f.key for f in found}
        rest = _loose_counts(state, fits, own, lambda part: part not in told)
        if rest:
            warnings.warn(f"{p} loaded with strict=False: {rest}", stacklevel=user_stacklevel())
    _warn_trained_otherwise(
        f"from_pretrained({p})", found, _retrain_or_override, loose=None if strict else lambda parts: _loose_counts(state, fits, own, parts.__contains__)
    )
    state = fits
    model.load_state_dict(state, strict=False)  # every key was checked above (strict), or chosen (loose)
    _recopy_controlnet(model, {k.split(".")[0] for k in state})
    recorded = trained_parts(meta)
    # a part built otherwise but holding all of its trained weights stays recorded as trained (the
    # warning above says what changed): the record says trained or built weights, which generate's and
    # training's checks read ("never trained", "random weights", a ControlNet whose output layers are zero)
    if recorded is not None:  # a part with any key left at its built weights is not the checkpoint's trained one
        kept = {k.split(".")[0] for k in own if k not in state}
        recorded = (set(recorded) - kept) | set(fresh)
    model.trained_parts = recorded
    # what each part built otherwise was trained as (`trained_as`): a save writes it, so the file warns when loaded
    # too; not for a part that is not trained (kept built weights): what it was trained as no longer matters
    _set_trained_as(model, {f.key: f.entry(str(weights)) for f in found if recorded is None or f.key in recorded})
    model.feature_record = feature_record(meta)
    model.loaded_from = str(weights)  # the file whose weights these are (a folder's model file, as read), even one that records no trained parts
    return model.to(map_location).eval()  # for inference, as loaded models are (call .train() to fine-tune)


_PART_FIELDS = (*part_registries(), "controlnet")  # the config fields that are parts (the ControlNet has no registry)
# settings that choose how a part computes, not what its weights mean: a change is not "trained otherwise"
_KERNEL_ONLY_ARGS = frozenset({"fused_attn"})  # the backbone's attention kernel (SDPA or the math path: the same function)
# backbone settings that do not reach its blocks (`new_block()`, which also builds the ControlNet's copies): how many
# blocks it stacks, the width of the text condition it projects; any other (heads, ffn_dim, a plugin's own) is taken to
# shape the blocks, so that a ControlNet whose copied blocks change with it is named with the backbone
_NOT_BLOCK_ARGS = frozenset({"depth", "cond_dim"})
_MISSING: Any = object()  # a setting one side does not have


@dataclass(frozen=True)
class _TrainedAs:
    """A part as a config builds it, or as its weights were trained: its builder, the settings it is
    given (less its builder's weight-file arguments: a checkpoint holds those weights) and the same with
    the builder's defaults filled in (what is compared, so that a default spelled out is no change);
    for the ControlNet, `blocks`: the backbone whose `new_block()` builds its copied blocks (their head
    split and widths are the backbone's settings, not the ControlNet's own)."""

    name: str
    given: dict[str, Any]
    settings: dict[str, Any]
    blocks: "_TrainedAs | None" = None

    def spec(self) -> str:
        """The part as the JSON that builds it (a --model value, a build_model keyword)."""
        return json.dumps({"name": self.name, **self.given})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "given": self.given, "settings": self.settings}
        if self.blocks is not None:
            out["blocks"] = self.blocks.to_json()
        return out

    @classmethod
    def from_json(cls, d: Any) -> "_TrainedAs | None":
        """A record entry read back; None for one that does not read (edited, damaged)."""
        if not (isinstance(d, Mapping) and isinstance(d.get("name"), str) and isinstance(d.get("given"), dict) and isinstance(d.get("settings"), dict)):
            return None
        blocks = cls.from_json(d["blocks"]) if d.get("blocks") is not None else None
        if d.get("blocks") is not None and blocks is None:
            return None
        return cls(d["name"], dict(d["given"]), dict(d["settings"]), blocks)


class _Otherwise(NamedTuple):
    """A loaded part that the model builds otherwise than its weights were trained (`_trained_otherwise`)."""

    key: str  # its config field
    old: _TrainedAs  # what its weights were trained as
    new: _TrainedAs  # what the model builds
    changed: list[tuple[str, Any, Any]]  # (setting, trained, built) of its own settings
    blocks: list[tuple[str, Any, Any]]  # the ControlNet's copied blocks: the backbone's settings that shape them
    recorded: str | None  # the file the checkpoint's record names (TRAINED_AS_KEY); None: its own config trained it

    @property
    def switched(self) -> bool:
        return self.old.name != self.new.name

    def lines(self) -> list[str]:
        """Each change as "setting: trained -> built" (the ControlNet's copied blocks named as such)."""
        own = [_change(c) for c in self.changed]
        if self.blocks:
            own.append(f"its copied blocks, which the backbone builds: {', '.join(_change(c) for c in self.blocks)}")
        return own

    def entry(self, source: str) -> dict[str, Any]:
        """Its TRAINED_AS_KEY record: what it was trained as, the file the weights came from (`source`,
        or the one an earlier record named), and what changed."""
        return {**self.old.to_json(), "source": self.recorded or source, "changed": self.lines()}


def _change(c: tuple[str, Any, Any]) -> str:
    return f"{c[0]}: {_shown(c[1])} -> {_shown(c[2])}"


def _shown(value: Any) -> str:
    return "(default)" if value is _MISSING else repr(value)


def _built_as(cfg: ModelConfig, key: str, defaults: Mapping[str, Any]) -> _TrainedAs | None:
    """Part `key` of `cfg` as a `_TrainedAs` (`defaults`: the builders' defaults, {field: {arg: value}});
    None where `cfg` has no such part."""
    part = getattr(cfg, key, None)
    if not isinstance(part, Part):
        return None
    skip = _weight_file_args(key, part)
    given = {k: v for k, v in part.kwargs.items() if k not in skip}
    blocks = _built_as(cfg, "backbone", defaults) if key == "controlnet" else None
    return _TrainedAs(part.name, given, _settings(key, part, defaults.get(key) or {}), blocks)


def _changes(old: _TrainedAs, new: _TrainedAs, skip: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """(setting, old, new) for each setting that differs, but `skip` and `_KERNEL_ONLY_ARGS`: with the
    defaults filled in for one builder; only what was given for another (its defaults are not comparable)."""
    a, b = (old.given, new.given) if old.name != new.name else (old.settings, new.settings)
    return [
        (arg, a.get(arg, _MISSING), b.get(arg, _MISSING))
        for arg in sorted(set(a) | set(b))
        if a.get(arg, _MISSING) != b.get(arg, _MISSING) and arg not in _KERNEL_ONLY_ARGS and arg not in skip
    ]


def _block_changes(old: _TrainedAs, new: _TrainedAs) -> list[tuple[str, Any, Any]]:
    """What changed in the backbone settings that shape the ControlNet's copied blocks (another
    backbone builder: that alone)."""
    if old.blocks is None or new.blocks is None:
        return []
    if old.blocks.name != new.blocks.name:
        return [("backbone", old.blocks.name, new.blocks.name)]
    return _changes(old.blocks, new.blocks, skip=_NOT_BLOCK_ARGS)


def _trained_otherwise(meta: Mapping[str, str], theirs: ModelConfig, ours: ModelConfig, fields: Iterable[str]) -> list[_Otherwise]:
    """Each of `fields` (parts whose weights load from the checkpoint) that the model builds with
    another builder or other settings than its weights were trained with: what the checkpoint's
    record (TRAINED_AS_KEY) says for the part, else the checkpoint's config. Settings are compared
    with the builders' defaults filled in (the checkpoint's recorded ones for its side), so that a
    default spelled out is no change; a builder's weight-file arguments (`weight_args`: the checkpoint
    holds those weights) are not compared, nor `_KERNEL_ONLY_ARGS` (which kernel computes the same
    function). Any other difference counts (guidance and sampler, the sampling-time choices, hold no
    weights). The ControlNet also counts the backbone settings that shape its copied blocks."""
    from controlfoley.builder import builder_defaults

    recorded = _saved_defaults(meta)
    their_defaults = recorded if recorded is not None else builder_defaults(theirs)
    our_defaults = builder_defaults(ours)
    record = _read_trained_as(meta)
    out = []
    for key in fields:
        new = _built_as(ours, key, our_defaults)
        old: _TrainedAs | None
        if key in record:  # loaded into a part built otherwise and saved: the record says what it was trained as
            old, entry = record[key]
            source: str | None = str(entry.get("source") or "an earlier checkpoint")
        else:
            old, source = _built_as(theirs, key, their_defaults), None
        if old is None or new is None:
            continue
        found = _Otherwise(key, old, new, _changes(old, new), _block_changes(old, new), source)
        if found.switched or found.changed or found.blocks:
            out.append(found)
    return out


def _weight_file_args(key: str, part: Part) -> tuple[str, ...]:
    """The arguments of `part`'s builder that name a weights file (`builder.weight_args`): a
    checkpoint holds those weights, so they are not settings of what it trained."""
    from controlfoley.builder import weight_args

    registry = part_registries().get(key)
    return weight_args(registry, part) if registry is not None else ()


def _settings(key: str, part: Part, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`part`'s settings over `defaults`, less its builder's weight-file arguments; the ControlNet's
    as its builder resolves them."""
    from controlfoley.builder import _controlnet_kwargs

    if key == "controlnet":
        try:
            return _controlnet_kwargs(part)
        except ConfigError:
            return dict(part.kwargs)
    skip = _weight_file_args(key, part)
    return {k: v for k, v in {**defaults, **part.kwargs}.items() if k not in skip}


def _warning_groups(found: Sequence[_Otherwise]) -> list[list[_Otherwise]]:
    """The parts of `found` as they are warned of: one warning per part, except a ControlNet whose only
    change is its copied blocks' (the backbone's settings), named in the backbone's warning when that
    part is also found, by the same source (both from the checkpoint's config, or both by its record)."""
    backbone = next((f for f in found if f.key == "backbone"), None)

    def follows(f: _Otherwise) -> bool:
        return f.key == "controlnet" and not f.switched and not f.changed and backbone is not None and backbone.recorded == f.recorded

    followers = [f for f in found if follows(f)]
    return [[f, *(followers if f.key == "backbone" else [])] for f in found if not follows(f)]


def _warn_trained_otherwise(
    label: str,
    found: Sequence[_Otherwise],
    fix: Callable[[Sequence[_Otherwise]], str],
    loose: Callable[[set[str]], str | None] | None = None,
) -> None:
    """One warning per part of `_trained_otherwise` (a ControlNet that follows the backbone's changed
    settings in the backbone's: `_warning_groups`), at the user's call: what its weights were trained as
    (naming the file whose record says so), what changed, `loose(parts)` (a strict=False load: what of
    them keeps its built weights, in the same warning rather than a second one) and `fix(group)`."""
    for group in _warning_groups(found):
        head = group[0]
        what = _said(head)
        for f in group[1:]:  # the ControlNet, whose copied blocks follow the backbone's settings
            detail = f" ({', '.join(_change(c) for c in f.blocks)})" if set(map(_change, f.blocks)) - set(map(_change, head.changed)) else ""
            what += f", as are the controlnet's copied blocks, which the backbone builds{detail}"
        if head.recorded is not None:
            what += (
                f"; the checkpoint records this: {'its' if len(group) == 1 else 'their'} weights came from {head.recorded} and were "
                "loaded with other settings before it was saved"
            )
        counts = loose({f.key for f in group}) if loose is not None else None
        if counts:
            what += f"; loaded with strict=False: {counts}"
        if len(group) > 1:
            where = "their weights load into the parts"
        else:
            where = f"its weights load into the {'new ' if head.switched else ''}part"
        warnings.warn(
            f"{label}: {what}; {where} where names and shapes agree, which may not mean the same thing (the model will not behave "
            f"as trained): {fix(group)}",
            stacklevel=user_stacklevel(),
        )


def _said(f: _Otherwise) -> str:
    """What changed in part `f` since its weights were trained."""
    detail = f" ({'; '.join(f.lines())})" if f.lines() else ""
    if f.recorded is None:
        if f.switched:
            return f"{f.key} is now {f.new.name!r} but the checkpoint trained {f.old.name!r}{detail}"
        return f"{f.key} is {f.new.name!r} with other settings than the checkpoint trained it with{detail}"
    if f.switched:
        return f"{f.key} is now {f.new.name!r} but its weights were trained as {f.old.name!r}{detail}"
    return f"{f.key} is {f.new.name!r} with other settings than its weights were trained with{detail}"


def _plural(group: Sequence[_Otherwise]) -> tuple[str, str, str]:
    """(the parts' names, "it is" / "they are", "it" / "them")."""
    names = " and ".join(f.key for f in group)
    return (names, "it is", "it") if len(group) == 1 else (names, "they are", "them")


def _restoring(group: Sequence[_Otherwise]) -> dict[str, dict[str, Any]]:
    """{field: override} that builds `group`'s parts as their weights were trained: the trained values
    of what changed (the whole part for another builder; the backbone's for the ControlNet's blocks).
    A setting the trained part did not have cannot be given back this way and is left out."""
    out: dict[str, dict[str, Any]] = {}
    for f in group:
        for key, old, new, changes in ((f.key, f.old, f.new, f.changed), ("backbone", f.old.blocks, f.new.blocks, f.blocks)):
            if old is None or new is None or not changes:
                continue
            if old.name != new.name:
                out[key] = {"name": old.name, **old.given}
            else:
                out.setdefault(key, {}).update({arg: was for arg, was, _ in changes if was is not _MISSING})
    return out


def _retrain_or_override(group: Sequence[_Otherwise]) -> str:
    """from_pretrained's fix: retrain, or drop the override(s) that changed the parts (build them as the
    checkpoint's record says they were trained, where it is the record that says so)."""
    names, are, them = _plural(group)
    if all(f.recorded is None for f in group):
        blamed = sorted({f.key for f in group if f.switched or f.changed} | {"backbone" for f in group if f.blocks})
        return f"retrain {names} as {are} now, or drop the {' and '.join(blamed)} override{'s' if len(blamed) > 1 else ''} to use {them} as trained"
    given = ", ".join(f"{key}={value!r}" for key, value in _restoring(group).items())
    trained = "it was" if len(group) == 1 else "they were"
    return f"retrain {names} as {are} now, or load {them} with {given} (the settings {trained} trained with) to use {them} as trained"


def _train_or_build(group: Sequence[_Otherwise]) -> str:
    """load_parts' / --init's fix: train the parts as they are, or build them as their weights were trained."""
    names, are, them = _plural(group)
    specs: dict[str, str] = {}
    for f in group:
        if f.switched or f.changed:
            specs[f.key] = f.old.spec()
        if f.blocks and f.old.blocks is not None:
            specs["backbone"] = f.old.blocks.spec()
    built = "it" if list(specs) == [group[0].key] and len(group) == 1 else " and ".join(f"the {key}" for key in specs)
    how = "as the checkpoint did" if all(f.recorded is None for f in group) else f"as {'its' if len(group) == 1 else 'their'} weights were trained"
    keywords = ", ".join(f"{key}={spec}" for key, spec in specs.items())
    flags = " ".join(f"--model {key}='{spec}'" for key, spec in specs.items())
    return (
        f"train {names} as {are} now (this load only starts {them} from those weights), or build {built} {how}, {keywords} "
        f"({flags} on the command line, or controlfoley train --preset CHECKPOINT), to load {them} as trained"
    )


def _partial_file_advice(path: Path, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str | None:
    """A file that holds some of the model's parts whole and none of the others (a tokenizer run
    writes mel and tokenizer alone): the parts it holds, and how to load those; None otherwise
    (check_state_dict's own advice stands)."""
    held = sorted({k.split(".")[0] for k in state})
    absent = sorted({k.split(".")[0] for k in own} - set(held))
    if not held or not absent:
        return None
    wanted = [part for part in held if any(k.split(".")[0] == part for k in own)] or held
    fix = (
        f"  {path} holds only the part(s) {', '.join(held)}, not {', '.join(absent)}, so it is no whole model"
        f"{' (a tokenizer run writes its tokenizer alone)' if 'tokenizer' in held else ''}: load what it holds into a model you build, "
        f"model = build_model(PRESET); controlfoley.checkpoint.load_parts(model, {str(path)!r}, {wanted!r})"
    )
    if "tokenizer" in held:
        fix += (
            f"; for extraction, controlfoley extract --tokenizer {path} "
            f"(Python: controlfoley.data.extract.Extraction(PRESET, tokenizer={str(path)!r}))"
        )
    return fix + f"; to train from it, --init {path} --init-parts {','.join(wanted)}"


def _loose_counts(
    state: Mapping[str, torch.Tensor], fits: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], include: Callable[[str], bool]
) -> str | None:
    """strict=False, for the parts `include` takes (by top-level name): how many tensors of `state`
    load (`fits`), which of the model's `own` keep their built weights (missing or mis-shaped keys) and
    which of the checkpoint's are not used; None when all of theirs load and none keeps built weights."""
    kept = sorted(k for k in own if k not in fits and include(k.split(".")[0]))
    unused = sorted(k for k in state if k not in fits and include(k.split(".")[0]))
    if not kept and not unused:
        return None
    loaded = sum(1 for k in fits if include(k.split(".")[0]))
    parts = sorted({k.split(".")[0] for k in kept})
    said = [f"{loaded} tensors loaded"]
    if kept:
        said.append(f"{len(kept)} of the model's keep their built (untrained) weights (in {', '.join(parts)}), e.g. {', '.join(kept[:3])}")
    if unused:
        said.append(f"{len(unused)} of the checkpoint's are not used, e.g. {', '.join(unused[:3])}")
    return "; ".join(said)


def _set_trained_as(model: Any, record: Mapping[str, Mapping[str, Any]]) -> None:
    """`model.trained_as`: {part: TRAINED_AS_KEY record entry} of the parts it holds trained weights of
    that it builds otherwise than they were trained (save_model writes it)."""
    model.trained_as = {key: dict(entry) for key, entry in sorted(record.items())}


def load_parts(model: ModelModule, path: str | os.PathLike[str], parts: str | Iterable[str], *, label: str | None = None) -> list[str]:
    """Load the named parts (top-level submodules such as 'tokenizer', 'backbone') from a checkpoint;
    `parts` is a list of names, or one name as a str ("backbone" is ["backbone"]).

    Each part must match strictly. If the backbone is loaded and the ControlNet is not, the
    ControlNet is re-copied from the new backbone (it must start as a copy of the *pretrained* blocks).
    A part that the model builds otherwise than the checkpoint did (another builder, or other
    settings) but whose weights fit warns, as from_pretrained's overrides do; `label` names the
    load in that warning (default "load_parts(PATH)"; training passes "--init PATH"). Such a part
    stays recorded as trained (`trained_parts`): its weights are trained ones, not built ones; what it
    was trained as goes into `model.trained_as` (a save writes it, and loading that file warns again),
    as does a record the checkpoint holds for a part that this model still builds otherwise.
    """
    state, meta = read_state_dict(path)
    parts = [parts] if isinstance(parts, str) else list(parts)
    checked, failed = [], []
    for part in parts:  # every part checked before any loads: a mismatch leaves the model as it was
        sub = getattr(model, part, None)
        if not isinstance(sub, nn.Module):
            have = [n for n, _ in model.named_children()]
            raise CheckpointError(f"model has no part {part!r}; its parts are {', '.join(have)} (e.g. --init-parts tokenizer,backbone)")
        prefix = part + "."
        sub_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub_state:
            raise CheckpointError(f"{path} holds no weights for part {part!r}; it holds: {sorted({k.split('.')[0] for k in state})}")
        try:
            check_state_dict(sub, sub_state, f"{part} in {path}")
        except CheckpointError as e:
            failed.append((part, e))
        checked.append((sub, sub_state))
    if failed:
        others = f" (and {', '.join(p for p, _ in failed[1:])}, which do not fit either)" if len(failed) > 1 else ""
        raise CheckpointError(f"{failed[0][1]}{others}{_part_config_hint(meta, model, [p for p, _ in failed])}") from None
    try:  # a part built otherwise than the checkpoint's (another builder, other settings) whose weights fit by names and shapes
        theirs: ModelConfig | None = config_from_metadata(meta, Path(path))
    except (CheckpointError, ValueError):  # no (readable) config recorded: nothing to compare
        theirs = None
    ours = getattr(model, "config", None)
    found: list[_Otherwise] = []
    if theirs is not None and isinstance(ours, ModelConfig):
        found = _trained_otherwise(meta, theirs, ours, [p for p in parts if p in _PART_FIELDS])
        _warn_trained_otherwise(label or f"load_parts({path})", found, _train_or_build)
    for sub, sub_state in checked:
        sub.load_state_dict(sub_state, strict=True)
    src = trained_parts(meta)
    # a checkpoint that records nothing (older ones, converted official weights) is taken as trained
    loaded = set(parts) if src is None else src & set(parts)
    model.trained_parts = set(getattr(model, "trained_parts", None) or ()) | loaded
    # what the loaded parts were trained as, where the model builds them otherwise (a save writes it); an
    # earlier record of a part whose weights this load replaced is gone (the ControlNet's too, when re-copied)
    record = {k: v for k, v in (getattr(model, "trained_as", None) or {}).items() if k not in parts}
    if "backbone" in parts and "controlnet" not in parts:
        record.pop("controlnet", None)
    _set_trained_as(model, {**record, **{f.key: f.entry(str(Path(path))) for f in found if f.key in loaded}})
    _recopy_controlnet(model, set(parts))
    return parts


def _recopy_controlnet(model: ModelModule, loaded: set[str]) -> None:
    """A backbone loaded without its ControlNet: the ControlNet was copied from the built (random)
    backbone and must start as a copy of the loaded one (its zero-initialised linears keep the
    model's output unchanged until it trains)."""
    controlnet = getattr(model, "controlnet", None)
    if "backbone" in loaded and "controlnet" not in loaded and controlnet is not None:
        controlnet.copy_from(model.backbone)

