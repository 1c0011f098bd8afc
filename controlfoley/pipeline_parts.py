"""What a FoleyPipeline is built from, and checks once before it runs (controlfoley.pipeline).

- `default_extractors(model)`: the extractors a model was trained with: those its checkpoint records
  (`recorded_extractors`, written by training from the dataset's extraction record), else the
  synthetic world's for a synthetic or tiny model, sized to it.
- `require_control` / `require_trained`: a backbone-only model, or a checkpoint that never trained its
  tokenizer, backbone or ControlNet, is refused (it would follow no video, or make noise).
- `check_extractor_widths`: extractors of a width the model cannot take fail once, at construction.
- `build_vocoder`: a vocoder override (a VOCODERS name, {"name": ..., **kwargs} or a module).
- `checked_prompt` / `prompt_text` / `checked_seed`: prompts checked, as one comma-separated string; seeds checked or drawn.
"""

import logging
import numbers
import os
import secrets
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from torch import nn

from controlfoley._static import ModelModule
from controlfoley.builder import _check_vocoder
from controlfoley.config import ConfigError
from controlfoley.control.encoders import check_widths, control_encoder_of, feature_dims
from controlfoley.data.extractors import PATH_ARGS, ExtractorSpec
from controlfoley.errors import RandomWeightsWarning, user_stacklevel

log = logging.getLogger("controlfoley.pipeline")

__all__ = ["choose_extractors", "default_extractors", "recorded_extractors", "recorded_text_encoder", "require_control", "require_trained", "check_extractor_widths", "build_vocoder", "is_prompt", "checked_prompt", "prompt_text", "checked_seed"]

Prompt = str | Sequence[str]  # "bell, thud" or ["bell", "thud"]
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # the seeds torch.Generator.manual_seed takes (a negative one wraps modulo 2**64)


def require_control(model: Any) -> None:  # a validator: it takes anything
    """A backbone-only model (no ControlNet, no control encoder) cannot follow a video."""
    if not isinstance(model, nn.Module) or not hasattr(model, "has_control"):
        hint = f"FoleyPipeline.from_pretrained({model!r})" if isinstance(model, (str, os.PathLike)) else "FoleyPipeline.from_pretrained(PATH)"
        raise ConfigError(f"FoleyPipeline takes a SpecMaskFoley model, got {type(model).__name__}; to load one by name or path use {hint}")
    if not model.has_control:
        config: Any = model.config  # its ModelConfig (`model` is known here only as an nn.Module)
        raise ConfigError(
            f"model {config.name!r} has no ControlNet/control encoder (a backbone-only checkpoint, e.g. a "
            "'backbone' training run), so it cannot follow a video; use a 'controlnet' training run or a preset "
            "that ships weights (specmaskfoley_synthetic)"
        )


def foley_parts(model: ModelModule) -> list[str]:
    """The parts foley needs trained: the tokenizer, the backbone and the ControlNet, and the control
    encoder and aligner where they have weights (the ControlNet recipe trains them together; one
    left random, e.g. loaded with other settings and strict=False, steers with noise)."""
    parts = ["tokenizer", "backbone", "controlnet"]
    for name in ("control_encoder", "aligner"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module) and any(p.numel() for p in part.parameters()):
            parts.append(name)
    return parts


def require_trained(model: ModelModule, source: object) -> None:
    """A checkpoint that records its trained parts must have trained the tokenizer, the backbone and
    the ControlNet: a tokenizer or backbone run used for foley gives noise (checkpoints that record
    nothing, such as older ones, are taken as they are). A control encoder or aligner with weights
    that is not recorded is warned of (RandomWeightsWarning): left random by a load with other
    settings, it steers with noise, but a --trainable controlnet run from before 2026-11-28 records
    them so too."""
    trained = getattr(model, "trained_parts", None)
    if trained is not None:
        unsure = [p for p in foley_parts(model)[3:] if p not in trained]  # the control encoder, the aligner
        if unsure and all(p in trained for p in ("tokenizer", "backbone", "controlnet")):
            # runs with --trainable controlnet recorded them so before ee62054 (frozen as built: the ControlNet learned from them),
            # as does a file saved after loading them with other settings (strict=False: random for the ControlNet)
            warnings.warn(
                f"{source}: its {', '.join(unsure)} {'is' if len(unsure) == 1 else 'are'} not recorded as trained. Fine for a ControlNet run "
                f"with --trainable controlnet from before 2026-11-28 (the ControlNet learned from them as built); noise where "
                f"{'it was' if len(unsure) == 1 else 'they were'} loaded with other settings than the ControlNet trained with (strict=False)",
                RandomWeightsWarning,
                stacklevel=user_stacklevel(),
            )
    missing = [p for p in ("tokenizer", "backbone", "controlnet") if trained is not None and p not in trained]
    if missing and trained is not None:  # (missing implies a record)
        raise ConfigError(
            f"{source}: its {', '.join(missing)} {'was' if len(missing) == 1 else 'were'} never trained "
            f"(it records trained: {', '.join(sorted(trained)) or 'nothing'}), so it would generate noise; "
            "use a 'controlnet' training run (trained on a trained backbone) or specmaskfoley_synthetic. If you trained "
            f"these weights another way, record it before saving: model.trained_parts = {set(foley_parts(model))!r}"
        )


def recorded_extractors(model: ModelModule, given: Collection[str] = ()) -> tuple[dict[str, ExtractorSpec], ExtractorSpec | None]:
    """(extractors by feature key, text encoder) from the record a trained checkpoint keeps of the
    extractors that made its training features (`model.feature_record`); ({}, None) without one.
    Keys in `given` (the caller's own extractors) are left out. A feature precomputed for the
    training clips (a builder marked `precomputed`) cannot be a default for new videos, nor can an
    extractor whose recorded file is not here: a ConfigError names the feature, what the checkpoint
    records and the flag that replaces it. The CLAP audio tower (the training prompt) becomes the
    text tower of its folder."""
    from controlfoley._registry import EXTRACTORS

    record = getattr(model, "feature_record", None) or {}
    extractors: dict[str, ExtractorSpec] = {}
    problems, flags = [], []
    for key in control_encoder_of(model).required_features:
        rec = record.get(key)
        if rec is None or key in given:
            continue
        name, args = rec["extractor"], _portable(rec["args"])
        builder = EXTRACTORS.get(name) if name in EXTRACTORS else None
        if getattr(builder, "precomputed", "precomputed" in name):
            root = args.get("root")
            problems.append(f"'{key}' features precomputed by {name}" + (f" (root={root})" if root else "") + " for its training clips, not for new videos")
            flags.append(f"--extractor {key}={name},root=DIR")
            continue
        missing = [(a, v) for a, v in args.items() if a in PATH_ARGS and isinstance(v, str) and not os.path.exists(v)]
        if missing:
            problems.append(f"'{key}' from {name} with {', '.join(f'{a}={v}' for a, v in missing)}, which is not on this machine")
            flags.append(f"--extractor {key}={name},{missing[0][0]}=PATH")
            continue
        extractors[key] = (name, args)
    if problems:
        raise ConfigError(
            f"the checkpoint records {'; '.join(problems)}: give these videos' extractors ({' '.join(flags)}; in Python extractors={{...}})"
        )
    return extractors, recorded_text_encoder(model)


def recorded_text_encoder(model: ModelModule) -> ExtractorSpec | None:
    """The text encoder of the CLAP embeddings a checkpoint records its training data had (None
    without a record): the same extractor, or for the CLAP audio tower (the paper's training
    prompt) the text tower of the same folder."""
    text = (getattr(model, "feature_record", None) or {}).get("clap")
    if text is None:
        return None
    if text["extractor"] == "clap_audio_transformers":  # trained on audio prompts: prompts go through the same folder's text tower
        return ("clap_transformers", {k: v for k, v in text["args"].items() if k == "folder"})
    return (text["extractor"], _portable(text["args"]))


def _portable(args: dict[str, Any]) -> dict[str, Any]:
    """Recorded extractor arguments less the device the extraction ran on (the pipeline places its
    parts on its own device: `pipe.to(...)`)."""
    return {k: v for k, v in args.items() if k != "device"}


def default_extractors(model: ModelModule, given: Collection[str] = ()) -> tuple[dict[str, ExtractorSpec], ExtractorSpec | None]:
    """(extractors by feature key, text encoder) a model was trained with, sized to the model: the
    checkpoint's record of its training features where it keeps one (`recorded_extractors`), else,
    for the synthetic and tiny presets, the synthetic world's extractors. Keys in `given` (the
    caller's own extractors) are neither chosen nor checked."""
    require_control(model)
    recorded, recorded_text = recorded_extractors(model, given)
    if recorded and set(recorded) | set(given) >= set(control_encoder_of(model).required_features):
        return recorded, recorded_text
    name = model.config.name
    if "synthetic" not in name and "tiny" not in name:
        raise ConfigError(
            f"no default feature extractors for model {name!r}: real video needs Synchformer and CLIP features. "
            "Pass extractors={'sync': ('synchformer_precomputed', {'root': DIR}), 'clip': ('clip_openclip', {'weights': FILE})}"
        )
    dims = feature_dims(control_encoder_of(model))
    roles = {"sync": "synthetic_sync", "clip": "synthetic_clip"}
    extractors = {k: (roles[k], {"dim": dims[k]} if k in dims else {}) for k in control_encoder_of(model).required_features if k in roles}
    return {**extractors, **recorded}, recorded_text or ("synthetic_clap", {"dim": int(model.backbone.cond_dim)})


def choose_extractors(
    model: ModelModule, given: Mapping[str, ExtractorSpec], source: object, text_given: bool = False
) -> tuple[dict[str, ExtractorSpec], ExtractorSpec | None]:
    """(extractors, default text encoder) for a pipeline around `model`: `given` by key, the rest
    the model's defaults (`default_extractors`). Synthetic stand-ins chosen for a model that is not
    a synthetic one are warned about (a model trained on real video features would get noise);
    `source` names the model in that warning, `text_given` says the caller has its own text encoder."""
    try:
        defaults, default_text = default_extractors(model, given=set(given))
    except ConfigError:
        if set(given) != set(control_encoder_of(model).required_features):
            raise
        defaults, default_text = {}, recorded_text_encoder(model)
    recorded = getattr(model, "feature_record", None) or {}
    stand_ins = sorted(k for k in set(defaults) - set(given) if k not in recorded)
    stand_ins += ["text"] if not text_given and default_text is not None and "clap" not in recorded else []
    if stand_ins and "synthetic" not in model.config.name:  # chosen by the name: say so, a real-data model would get noise
        log.warning(
            "%s: no extractor given for %s, so the synthetic world's stand-ins are used (what this repository's tiny models "
            "are trained on). A model trained on real video features needs those extractors: --extractor KEY=NAME,... / "
            "FoleyPipeline.from_pretrained(..., extractors={...}, text_encoder=...)",
            source, ", ".join(stand_ins),
        )
    return {**defaults, **given}, default_text


def checked_seed(seed: Any, arg: str = "seed") -> int:
    """A seed checked (a validator: it takes anything), or a fresh one for None; `arg` names it in
    the error (the command line's "--seed")."""
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"{arg} must be an int (or None for a fresh one), got {seed!r}")
    if not SEED_MIN <= int(seed) <= SEED_MAX:
        raise ConfigError(f"{arg} must be in [-2**63, 2**64 - 1] (what torch.Generator.manual_seed takes), got {int(seed)}; pick a smaller seed")
    return int(seed)


def is_prompt(value: Any) -> bool:  # a validator: it takes anything
    """Whether `value` is a prompt: a string, or a list/tuple of tag strings."""
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value))


def checked_prompt(prompt: Any, arg: str = "prompt") -> Any:  # a validator: it takes anything
    """`prompt` as given where it is one (a string, a list/tuple of tag strings, or None), else a
    ConfigError naming `arg`."""
    if prompt is None or is_prompt(prompt):
        return prompt
    raise ConfigError(f"{arg}: a prompt is a comma-separated string, a list of tag strings or None, got {prompt!r}")


def prompt_text(prompt: Prompt | None, arg: str = "prompt") -> str | None:
    """A prompt as one comma-separated string: ["bell", "thud"] -> "bell, thud"; a string unchanged.
    Anything else is a ConfigError naming `arg`."""
    prompt = checked_prompt(prompt, arg)
    if prompt is None or isinstance(prompt, str):
        return prompt
    return ", ".join(t.strip() for t in prompt if t.strip())


def check_extractor_widths(model: ModelModule, extractors: Mapping[str, Any], text_encoder: Any | None) -> None:
    """Extractors of a width the model cannot take fail here, once, instead of at every video (user
    extractors without an int `dim` are checked when the encoder reads their features)."""

    def declared(e: Any) -> tuple[str, int] | None:
        dim = getattr(e, "dim", None)
        return (getattr(e, "name", type(e).__name__), dim) if isinstance(dim, int) else None

    video = {k: d for k, e in extractors.items() if (d := declared(e)) is not None}
    check_widths(model, video, declared(text_encoder), taker="the model", error=ConfigError)


def build_vocoder(spec: str | Mapping[str, Any] | nn.Module | None, model: ModelModule) -> nn.Module | None:
    """A vocoder override: a module as is; a name or {"name": ..., **kwargs} built on the model's mel,
    on the model's device.
    Naming the model's own vocoder merges: its config kwargs (e.g. inverse="pinv"), then the given ones."""
    if spec is None:
        return spec
    if isinstance(spec, nn.Module):
        # its waveform is timed, cut and written at the model's rate: another rate would play at the wrong pitch and length
        _check_vocoder("override", spec, model.mel)
        return spec
    from controlfoley._registry import VOCODERS

    kwargs = {"name": spec} if isinstance(spec, str) else dict(spec)
    if "name" not in kwargs:
        raise ConfigError(f"vocoder override {dict(kwargs)!r} has no 'name'; give {{'name': 'griffinlim', ...}} or a VOCODERS name")
    name = kwargs.pop("name")
    own = model.config.vocoder
    if name == own.name:
        kwargs = {**own.kwargs, **kwargs}
    VOCODERS.get(name)  # an unknown name: the registry's error, listing the registered ones
    # the model's mel is wired in (as build_model does) where the builder takes one, and not offered as a setting in errors
    wired = {"mel": model.mel} if VOCODERS.takes(name, "mel") else {}
    built = VOCODERS.build(name, tuple(wired), **wired, **kwargs)
    _check_vocoder(name, built, model.mel)
    return built.to(model.device)  # beside the model it decodes for
