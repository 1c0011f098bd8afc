"""`build_model`: a preset name or `ModelConfig` (with overrides) -> the parts from the registries
-> a `SpecMaskFoley`.

Features
- Values that follow from other parts are wired in, not configured: `n_mels` (tokenizer),
  `vocab_size` and `grid` (backbone), `in_dim`, `out_dim`, `grid` (aligner), `mel` (vocoder); an
  explicit value that contradicts the wired one is a ConfigError.
- Every built part is checked against its contract before the model exists: a builder returns an
  `nn.Module` (a `GuidanceRule` for guidance); a tokenizer has every `Tokenizer` member and a grid
  that matches its `downsample` (frequency rows first); a control encoder has `out_dim` and
  `required_features`; a vocoder's `sample_rate` is the mel front end's. A broken user part fails
  here, named, not deep inside a forward.
"""

import dataclasses
import json
import numbers
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from controlfoley._registry import (
    ALIGNERS,
    BACKBONES,
    CONTROL_ENCODERS,
    GUIDANCE,
    MEL_FRONTENDS,
    TOKENIZERS,
    VOCODERS,
    Registry,
)
from controlfoley.backbones.base import BACKBONE_MEMBERS, CONTROL_MEMBERS
from controlfoley.config import ConfigError, ModelConfig, Part, part_registries
from controlfoley.control.controlnet import ControlNet
from controlfoley.errors import ControlFoleyError, RandomWeightsWarning, ShapeError, check_callable, one_line
from controlfoley.guidance import GuidanceRule, check_rule
from controlfoley.model import SpecMaskFoley
from controlfoley.presets import PRESETS, PRETRAINED, get_preset
from controlfoley.sampling import MaskGITSampler
from controlfoley.tokenizers.base import Tokenizer

__all__ = ["build_model"]


def _build_part(registry: Registry[Any], part: Part, **wired: Any) -> Any:
    """Build `part`, adding the wired values its builder accepts; a conflicting explicit value is an error."""
    accepted = registry.accepted_args(part.name)
    kwargs = dict(part.kwargs)
    for k, v in wired.items():
        if k not in accepted:
            continue
        if k in kwargs and _norm(kwargs[k]) != _norm(v):
            raise ConfigError(f"{registry.kind} {part.name!r}: {k}={kwargs[k]!r} contradicts the value wired from the other parts ({v!r}); drop it from the config")
        kwargs[k] = v
    try:
        built = registry.build(part.name, tuple(k for k in wired if k in accepted), **kwargs)
    except ValueError as e:  # a setting the part cannot take (heads that do not divide the width): name the part
        if isinstance(e, ControlFoleyError) and not isinstance(e, ShapeError):
            raise  # already names its part (config, registry, checkpoint errors)
        given = ", ".join(f"{k}={v!r}" for k, v in part.kwargs.items()) or "its defaults"
        raise ConfigError(f"{registry.kind} {part.name!r} cannot be built with {given}: {one_line(e)}; change the setting it names") from e
    want, label = (GuidanceRule, "controlfoley.guidance.GuidanceRule") if registry is GUIDANCE else (nn.Module, "torch.nn.Module")
    if not isinstance(built, want):
        raise ConfigError(
            f"{registry.kind} {part.name!r}: its builder {getattr(registry.get(part.name), '__qualname__', '?')} returned "
            f"{type(built).__name__}, not a {label}; a builder must return the built part"
        )
    if registry is GUIDANCE and isinstance(built, GuidanceRule):  # (checked just above for the guidance registry)
        check_rule(built, f"guidance {part.name!r}")
    return built


def _check_tokenizer(name: str, tok: Any, n_frames: int, n_mels: int) -> tuple[int, int]:
    """The token grid of a built tokenizer, after checking it keeps the `Tokenizer` contract: a
    broken user tokenizer fails here, naming what is wrong, not deep inside a forward."""
    where = f"tokenizer {name!r} ({type(tok).__name__})"
    if not isinstance(tok, Tokenizer):
        missing = [m for m in ("codebook_size", "n_mels", "downsample", "grid", "encode", "decode", "embed_codes") if getattr(tok, m, None) is None]
        raise ConfigError(f"{where} lacks {', '.join(missing)} of the Tokenizer contract (controlfoley.tokenizers.base.Tokenizer)")
    if int(tok.n_mels) != n_mels:
        raise ConfigError(f"{where} reads {tok.n_mels} mel bins but the mel front end makes {n_mels}; accept n_mels in its builder")
    try:
        grid = tok.grid(n_frames)
    except ValueError as e:  # a window length the tokenizer cannot tile (ShapeError, or a plain ValueError): the fix is the config's n_frames
        raise ConfigError(f"n_frames={n_frames} does not fit {where}: {one_line(e)} (build_model(..., n_frames=N))") from e
    ds = tuple(tok.downsample)
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(g, numbers.Integral) and g > 0 for g in grid)):
        raise ConfigError(f"{where}.grid({n_frames}) must return (F, T), two positive ints, got {grid!r} (a 1-D tokenizer returns (1, T))")
    f, t = int(grid[0]), int(grid[1])
    # F is exact; T may round up (a tokenizer that pads the last frames)
    if len(ds) != 2 or f != n_mels // ds[0] or t not in (n_frames // ds[1], -(-n_frames // ds[1])):
        raise ConfigError(
            f"{where}.grid({n_frames}) = {(f, t)} does not match its downsample {ds}: expected "
            f"(n_mels // {ds[0] if ds else '?'}, n_frames / {ds[1] if len(ds) > 1 else '?'}). Grids are (F, T), "
            "frequency rows first; a 1-D tokenizer has downsample (n_mels, frame factor) and grid (1, T)"
        )
    return f, t


def _check_backbone(name: str, bb: Any, vocab_size: int, control: bool) -> None:
    """A built backbone keeps the `Backbone` contract (controlfoley.backbones.base): its members
    exist (the ControlNet's `blocks` and `new_block` only when the model has video control), its
    widths are positive ints and its vocabulary is the tokenizer's."""
    where = f"backbone {name!r} ({type(bb).__name__})"
    members = BACKBONE_MEMBERS + (CONTROL_MEMBERS if control else ())
    missing = [m for m in members if getattr(bb, m, None) is None]
    if missing:
        raise ConfigError(
            f"{where} lacks {', '.join(missing)} of the Backbone contract (controlfoley.backbones.base.Backbone); "
            "add them, or build it from controlfoley.backbones.specmaskgit's parts"
        )
    for attr in ("vocab_size", "dim", "cond_dim"):
        v = getattr(bb, attr)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{where} has {attr}={v!r}; it must be a positive int")
    if int(bb.vocab_size) != int(vocab_size):
        raise ConfigError(f"{where} has vocab_size {bb.vocab_size} but the tokenizer's codebook has {vocab_size}; accept vocab_size in its builder")
    if control and not (isinstance(bb.blocks, nn.ModuleList) and len(bb.blocks) > 0):
        raise ConfigError(f"{where}.blocks must be a non-empty nn.ModuleList (the ControlNet copies its first blocks), got {type(bb.blocks).__name__}")
    # called as the model calls them (controlfoley.backbones.base.Backbone): a wrong signature is named now, not mid-training
    check_callable(bb.embed, f"{where}.embed", "embed(codes, mask, cond, cond_on)", None, None, None, None)
    check_callable(bb.forward_blocks, f"{where}.forward_blocks", "forward_blocks(x, residuals)", None, None)
    check_callable(bb.logits, f"{where}.logits", "logits(h, index)", None, None)


def _check_control_encoder(name: str, enc: Any) -> int:
    """The feature width a built control encoder gives the aligner, after checking its contract: an
    int `out_dim`, `required_features`, the feature keys it reads (a collection of strings), and an
    optional `feature_dims` mapping some of those keys to their widths."""
    where = f"control_encoder {name!r} ({type(enc).__name__})"
    out_dim = getattr(enc, "out_dim", None)
    if not isinstance(out_dim, numbers.Integral) or isinstance(out_dim, bool) or out_dim <= 0:
        got = "has none" if out_dim is None else f"has {out_dim!r}"
        raise ConfigError(f"{where} needs an int attribute out_dim > 0, the width of its output features [b, t, out_dim] ({got}); set self.out_dim in it")
    keys = getattr(enc, "required_features", None)
    if isinstance(keys, str) or not isinstance(keys, (tuple, list, set, frozenset)) or not keys or not all(isinstance(k, str) for k in keys):
        got = "has none" if keys is None else f"has {keys!r}"
        raise ConfigError(
            f"{where} needs an attribute required_features, a non-empty tuple of the feature keys it reads, "
            f"e.g. ('sync', 'clip') ({got}); set self.required_features in it"
        )
    dims = getattr(enc, "feature_dims", None)
    if dims is not None and not (
        isinstance(dims, Mapping)
        and set(dims) <= set(keys)
        and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) > 0 for d in dims.values())
    ):
        raise ConfigError(
            f"{where} has feature_dims {dims!r}; it must map some of its required_features {tuple(keys)} to "
            "their widths (positive ints), e.g. {'sync': 768}, or be left out"
        )
    return int(out_dim)


def _check_mel(name: str, mel: Any) -> None:
    """A mel front end has the attributes the other parts are sized and timed from: positive int
    `n_mels` (the tokenizer's input), `sample_rate` (the vocoder's and the model's) and
    `hop_length` (samples per mel frame: the window's length in samples)."""
    where = f"mel_frontend {name!r} ({type(mel).__name__})"
    bad = {}
    for attr in ("n_mels", "sample_rate", "hop_length"):
        v = getattr(mel, attr, None)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
            bad[attr] = "none" if v is None else repr(v)
    if bad:
        got = ", ".join(f"{k}: {v}" for k, v in bad.items())
        raise ConfigError(
            f"{where} needs positive int attributes n_mels, sample_rate and hop_length (mel bins, Hz, samples per frame), "
            f"which the tokenizer, the vocoder and the window length are built from ({got}); set them in it"
        )


def _check_vocoder(name: str, vocoder: Any, mel: Any) -> None:
    """A vocoder keeps the `Vocoder` contract (controlfoley.audio.vocoders): a `sample_rate` equal
    to the mel front end's (the model's waveforms are read, written and timed at that rate)."""
    where = f"vocoder {name!r} ({type(vocoder).__name__})"
    rate = getattr(vocoder, "sample_rate", None)
    if not isinstance(rate, numbers.Integral) or isinstance(rate, bool):
        got = "has none" if rate is None else f"has {rate!r}"
        raise ConfigError(
            f"{where} needs an int attribute sample_rate, the rate in Hz of the waveforms it returns ({got}); "
            f"set self.sample_rate = mel.sample_rate in it (the Vocoder protocol, controlfoley.audio.vocoders)"
        )
    if rate != mel.sample_rate:
        raise ConfigError(
            f"{where} has sample_rate {rate} but the mel front end runs at {mel.sample_rate} Hz; use a vocoder for "
            f"{mel.sample_rate} Hz (or a mel front end at {rate} Hz), or set sample_rate = mel.sample_rate in it"
        )
    # called as vocoder(mel) only: a forward(mel, lengths) was a raw TypeError at the first vocode (generate: "a bug")
    check_callable(getattr(vocoder, "forward", vocoder), f"{where}.forward", "vocoder(mel) (mel: [batch, n_mels, frames] normalised)", None)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def build_model(
    config: "str | os.PathLike[str] | Mapping[str, Any] | ModelConfig", /, *, pretrained: bool = False, **overrides: Any
) -> SpecMaskFoley:
    """Build an untrained model from a preset name (`controlfoley list presets`), a `ModelConfig`,
    its dict (`config.to_dict()`) or a `.json` file of it (`config.to_json()`, what a checkpoint's
    metadata holds). `pretrained=True` (timm's spelling) loads a preset's shipped weights instead:
    `from_pretrained(name, **overrides)` (`list_presets(pretrained=True)` names those presets).

    Each override names a config field (mel, tokenizer, backbone, control_encoder, aligner,
    controlnet, guidance, vocoder, sampler, n_frames):
    - a part name string switches that part's builder, keeping the old settings the new builder
      also accepts (kernel sizes, widths; the same name keeps them all);
    - a dict changes settings and keeps the others; a "name" key switches the builder as well;
    - a `Part(name, kwargs)` replaces the part whole; None removes the optional video parts
      (control_encoder, aligner and controlnet together: the backbone alone; a guidance rule
      reading video becomes 'cfg_text' at its scale, unless guidance= names a rule too: one that
      reads video is then warned about, as for any model without video parts);
    - `sampler` takes a dict of `SamplerConfig` fields (steps, temperature, mask_schedule) and
      `n_frames` an int (mel frames per window).
    Values that follow from other parts (vocabulary, widths, token grid, the vocoder's mel) are
    wired in; a part that breaks its contract fails here with a ConfigError naming it.

    >>> m = build_model("specmaskfoley_tiny", aligner="plain1d", guidance="cfg_video")  # kernel_size 3 kept
    >>> m = build_model("specmaskfoley_tiny", backbone={"depth": 4}, sampler={"steps": 16})
    >>> m = build_model("specmaskfoley_tiny", guidance={"name": "cfg", "condition": "text_video", "scale": 2.0})
    >>> m = build_model("specmaskfoley_tiny", aligner=Part("plain1d", {"kernel_size": 5}), n_frames=256)
    >>> m = build_model("specmaskfoley_tiny", control_encoder=None, aligner=None, controlnet=None)  # backbone alone
    """
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained is True or False, got {pretrained!r}")
    if pretrained:
        if not (isinstance(config, str) and config in PRETRAINED):
            shipped = ", ".join(sorted(PRETRAINED)) or "none"
            raise ConfigError(
                f"build_model({config!r}, pretrained=True): no weights ship for it (presets with weights: {shipped}); "
                "build it untrained (pretrained=False), or load a checkpoint file with controlfoley.from_pretrained(PATH)"
            )
        from controlfoley.model import from_pretrained

        return from_pretrained(config, **overrides)
    cfg = model_config(config, **overrides)
    s = cfg.sampler
    sampler = MaskGITSampler(s.steps, s.temperature, s.mask_schedule)  # first: an unknown or broken schedule fails before the parts build
    mel = _build_part(MEL_FRONTENDS, cfg.mel)
    _check_mel(cfg.mel.name, mel)
    tokenizer = _build_part(TOKENIZERS, cfg.tokenizer, n_mels=mel.n_mels)
    grid = _check_tokenizer(cfg.tokenizer.name, tokenizer, cfg.n_frames, mel.n_mels)
    own_mel = getattr(TOKENIZERS.get(cfg.tokenizer.name), "weights_mel", None)  # the mel its weights file was trained on
    if own_mel is not None and own_mel != cfg.mel.name and "tokenizer" in weight_file_parts(cfg):
        warnings.warn(
            f"tokenizer {cfg.tokenizer.name!r} loads weights trained on the {own_mel!r} mel, but the model's mel front-end is "
            f"{cfg.mel.name!r}: its tokens will not mean what they were trained to; build with mel={own_mel!r} (unless this "
            "file was trained on this mel)",
            stacklevel=2,
        )
    backbone = _build_part(BACKBONES, cfg.backbone, vocab_size=tokenizer.codebook_size, grid=list(grid))
    _check_backbone(cfg.backbone.name, backbone, tokenizer.codebook_size, cfg.has_control)
    parts: dict[str, Any] = {}
    enc_part, aligner_part, controlnet_part = cfg.control_encoder, cfg.aligner, cfg.controlnet
    if enc_part is not None and aligner_part is not None and controlnet_part is not None:  # cfg.has_control: ModelConfig gives all three or none
        enc = _build_part(CONTROL_ENCODERS, enc_part)
        enc_dim = _check_control_encoder(enc_part.name, enc)
        parts["control_encoder"] = enc
        check_callable(getattr(enc, "forward", enc), f"control_encoder {enc_part.name!r} ({type(enc).__name__}).forward", "forward(features) (a dict of [b, t, d] streams)", {})
        parts["aligner"] = _build_part(ALIGNERS, aligner_part, in_dim=enc_dim, out_dim=backbone.dim, grid=list(grid))
        check_callable(
            getattr(parts["aligner"], "forward", parts["aligner"]), f"aligner {aligner_part.name!r} ({type(parts['aligner']).__name__}).forward",
            "forward(x) ([b, t, d] features; the grid is a builder argument)", None,
        )
        parts["controlnet"] = ControlNet.from_backbone(backbone, **_controlnet_kwargs(controlnet_part))
    vocoder = _build_part(VOCODERS, cfg.vocoder, mel=mel)
    _check_vocoder(cfg.vocoder.name, vocoder, mel)
    model = SpecMaskFoley(
        config=cfg,
        mel=mel,
        tokenizer=tokenizer,
        backbone=backbone,
        guidance=_build_part(GUIDANCE, cfg.guidance),
        sampler=sampler,
        vocoder=vocoder,
        **parts,
    )
    # built: only the parts made from a weights file (an official codebook) are trained; a checkpoint
    # saved from it says so, and the pipeline / CLI refuse it for foley (loaders set their own record)
    model.trained_parts = set(weight_file_parts(cfg))
    if isinstance(config, str) and config in PRETRAINED:  # the name of shipped weights: say they are not loaded
        warnings.warn(
            f"build_model({config!r}) builds the architecture with random weights; its trained weights load with "
            f"build_model({config!r}, pretrained=True) or controlfoley.from_pretrained({config!r}) (or FoleyPipeline.from_pretrained({config!r}))",
            RandomWeightsWarning,
            stacklevel=2,
        )
    return model


def weight_args(registry: Any, part: Part) -> tuple[str, ...]:
    """The builder's `weight_args`: its weights-file argument first (e.g. "checkpoint"), then the
    arguments that only matter while reading it ("trust_checkpoint"); () if it declares none."""
    return tuple(getattr(registry.get(part.name), "weight_args", ())) if part.name in registry else ()


# config field -> the arguments build_model sets in that part's builder from the other parts (the
# same names in another part's builder, e.g. a control encoder's own out_dim, are that part's settings)
WIRED_ARGS: Mapping[str, frozenset[str]] = {
    "tokenizer": frozenset({"n_mels"}),
    "backbone": frozenset({"vocab_size", "grid"}),
    "aligner": frozenset({"in_dim", "out_dim", "grid"}),
    "vocoder": frozenset({"mel"}),
}


def builder_defaults(cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """Config field -> {argument: default} of the arguments its builder takes that the config
    leaves to the builder's defaults (JSON values only; wired and weight-file arguments left out).
    A checkpoint records them, so a builder whose defaults change later still rebuilds the saved
    model (checkpoint.load_model)."""
    out: dict[str, dict[str, Any]] = {}
    for field_name, registry in part_registries().items():
        part = getattr(cfg, field_name, None)
        if part is None or part.name not in registry:
            continue
        skip = WIRED_ARGS.get(field_name, frozenset()) | set(part.kwargs) | set(weight_args(registry, part))
        try:
            params = registry.accepted_args(part.name).values()
        except (TypeError, ValueError):  # a builder without a signature
            continue
        found = {}
        for prm in params:
            if prm.name in skip or prm.default is prm.empty:
                continue
            try:
                found[prm.name] = json.loads(json.dumps(prm.default))
            except (TypeError, ValueError):
                continue  # an object default: not recorded
        if found:
            out[field_name] = found
    return out


def _weight_parts(cfg: ModelConfig) -> Iterator[tuple[str, Part, tuple[str, ...]]]:
    """(config field, part, its builder's weight_args) for each part whose builder declares some."""
    for field_name, registry in part_registries().items():
        part = getattr(cfg, field_name, None)
        args = () if part is None else weight_args(registry, part)
        if part is not None and args:
            yield field_name, part, args


def weight_file_parts(cfg: ModelConfig) -> list[str]:
    """Config fields whose part is built from a weights file: its builder declares `weight_args`
    and the part's kwargs give a file (not None) for the first of them."""
    return [f for f, part, args in _weight_parts(cfg) if part.kwargs.get(args[0]) is not None]


def weight_file(cfg: ModelConfig, field_name: str) -> Any | None:
    """The weights file the part in `field_name` is built from (e.g. an official SpecVQGAN codebook), or None."""
    return next((part.kwargs.get(args[0]) for f, part, args in _weight_parts(cfg) if f == field_name), None)


def build_without_weight_files(cfg: ModelConfig, overrides: Mapping[str, Any] | None = None) -> tuple[SpecMaskFoley, list[str]]:
    """The model of `cfg` (plus `overrides`) built without reading its parts' weights files, its
    config still naming them: for loading weights that a checkpoint holds (from_pretrained,
    resume). Returns it and the fields whose override gives a new weights file: those parts are
    built from that file, with their other saved settings (trust_checkpoint...)."""
    overrides = dict(overrides or {})
    merged = cfg.override(**overrides) if overrides else cfg
    fresh = []
    for f, part, args in _weight_parts(merged):
        given = overrides.get(f)
        given = given.kwargs if isinstance(given, Part) else given if isinstance(given, Mapping) else {}
        if given.get(args[0]) is not None:
            fresh.append(f)
    stripped: dict[str, Any] = {  # field -> Part, for dataclasses.replace
        f: Part(part.name, {k: v for k, v in part.kwargs.items() if k not in args})
        for f, part, args in _weight_parts(cfg)
        if f not in fresh and any(a in part.kwargs for a in args)
    }
    with warnings.catch_warnings():  # a GAN vocoder built without its file gets its weights from the caller's
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = build_model(dataclasses.replace(cfg, **stripped), **overrides)
    kept = {f: getattr(cfg, f) for f in stripped if f not in overrides}  # the config still names the files
    if kept:
        model.config = dataclasses.replace(model.config, **kept)
    return model, fresh


def _controlnet_kwargs(part: Part) -> dict[str, Any]:
    if part.name != "copy":
        raise ConfigError(f"unknown controlnet {part.name!r}; the ControlNet is built as 'copy' of the first backbone blocks")
    bad = sorted(set(part.kwargs) - {"n_blocks", "injection"})
    if bad:
        raise ConfigError(f"controlnet got unknown argument(s) {bad}; it accepts n_blocks, injection")
    n_blocks, injection = part.kwargs.get("n_blocks", 12), part.kwargs.get("injection", "aligned")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not isinstance(injection, str):
        raise ConfigError(f"controlnet: n_blocks must be an int and injection a string, got n_blocks={n_blocks!r}, injection={injection!r}")
    return {"n_blocks": n_blocks, "injection": injection}


def model_config(config: "str | os.PathLike[str] | Mapping[str, Any] | ModelConfig", /, **overrides: Any) -> ModelConfig:
    """The config `build_model(config, **overrides)` builds, without building it."""
    cfg = _resolve_config(config)
    return cfg.override(**overrides) if overrides else cfg


def _resolve_config(config: "str | os.PathLike[str] | Mapping[str, Any] | ModelConfig") -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping):
        return ModelConfig.from_dict(config)
    if isinstance(config, str) and config in PRESETS:  # a registered name is the preset, also where a folder of that name exists
        return get_preset(config)
    if isinstance(config, str) and not config.strip():  # not the current folder, which Path("") is
        raise ConfigError(
            f"build_model({config!r}): the preset name is empty; give one of {', '.join(PRESETS.names())} (controlfoley.list_presets() "
            "in Python, `controlfoley list presets` on the command line), a .json config file, a config dict or a ModelConfig"
        )
    path = Path(config) if isinstance(config, (str, os.PathLike)) else None
    if path is not None and path.suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"model config {path}: cannot read it ({e.strerror or e})") from e
        try:
            return ModelConfig.from_json(text)
        except ValueError as e:  # ConfigError is one; so is a JSONDecodeError
            raise ConfigError(f"model config {path}: {e}") from e
    if path is not None and (path.suffix == ".safetensors" or path.is_dir() or path.is_file()):
        raise ConfigError(
            f"build_model({str(config)!r}): that is a file or folder, not a preset or a .json config; build_model builds an "
            "untrained model, to load a checkpoint's weights use controlfoley.from_pretrained(path)"
        )
    if isinstance(config, str):
        return get_preset(config)
    raise ConfigError(f"build_model takes a preset name, a .json config file, a config dict or a ModelConfig, got {type(config).__name__}")
