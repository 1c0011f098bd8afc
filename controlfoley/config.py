"""Model configuration: a frozen tree of (registry name, flat kwargs), with a JSON round trip.

A `ModelConfig` holds only free choices. Values that follow from other parts (the backbone's
vocabulary is the tokenizer's codebook size, the aligner's output width is the backbone's width,
the token grid follows from the window length) are wired in by `controlfoley.builder.build_model`,
so an ablation changes one field without breaking the others.

Overrides (`ModelConfig.override`, and so `build_model(preset, **overrides)`):
- `aligner="plain1d"`: switch the part, keeping the kwargs the new builder also accepts;
- `backbone={"depth": 4}`: merge kwargs (a `"name"` key switches the part as well);
- `aligner=Part("plain1d", {...})`: replace the part whole; `control_encoder=None, aligner=None,
  controlnet=None` (together): remove the optional video parts, leaving the backbone alone (a
  guidance rule that reads video then becomes 'cfg_text' at its scale and schedule, as in the
  backbone-alone presets, unless `guidance=` names another rule in the same call (a dict of
  settings alone, `guidance={"scale": 5.0}`, sets the scale of that 'cfg_text'); a rule given for a
  model without video parts that reads video is warned about, since its generate will refuse it);
- `sampler={"steps": 16}` or `n_frames=512` for the plain fields.
"""

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlfoley._errorbase import ConfigError

__all__ = ["Part", "SamplerConfig", "ModelConfig", "ConfigError", "parse_overrides", "parse_spec"]


def parse_overrides(items: Sequence[str], flag: str = "--model") -> dict[str, Any]:
    """Command-line model overrides `KEY=JSON` (`backbone='{"depth": 2}'`), `KEY=NAME`
    (`aligner=plain1d`) or dotted `PART.SETTING=VALUE` (`backbone.depth=2`, `sampler.steps=16`,
    which is `backbone='{"depth": 2}'`) -> keyword arguments of `build_model` / `ModelConfig.override`.
    Dotted settings of one part merge with each other and with that part's `KEY=` value (a name
    becomes the dict's "name")."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=JSON, KEY=NAME or PART.SETTING=VALUE, e.g. {flag} aligner=plain1d; got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError as e:
            if raw.lstrip().startswith(("{", "[")):  # meant as JSON: never read it as a part name
                raise ConfigError(
                    f"{flag} {item!r}: the value is malformed JSON ({e}); write valid JSON and quote it whole for the shell, "
                    f"e.g. {flag} 'backbone={{\"depth\": 2}}'"
                ) from None
            value = raw  # a bare name, e.g. --model aligner=plain1d
        *path, leaf = key.split(".")
        if any(not k for k in (*path, leaf)):
            raise ConfigError(f"{flag} {item!r}: an empty name in {key!r}; write PART.SETTING=VALUE, e.g. {flag} backbone.depth=2")
        where, trail = out, []
        for k in path:  # backbone.depth=2: out["backbone"]["depth"] = 2
            trail.append(k)
            got = where.get(k)
            if isinstance(got, str):  # backbone=NAME given before: the part's name
                got = where[k] = {"name": got}
            elif got is None and k in where:  # aligner=null (removed) given before: no settings to set
                raise ConfigError(f"{flag} {item!r}: {'.'.join(trail)} was removed (null) by an earlier {flag}; drop one of them")
            elif got is None:
                got = where[k] = {}
            elif not isinstance(got, dict):
                raise ConfigError(f"{flag} {item!r}: {'.'.join(trail)} was given as {got!r}, which has no settings to set")
            where = got
        if path and isinstance(where.get(leaf), dict) and isinstance(value, dict):
            where[leaf] = {**where[leaf], **value}
        elif not path and isinstance(where.get(leaf), dict):  # settings given first, now the whole part
            merged = where[leaf]
            where[leaf] = {**merged, "name": value} if isinstance(value, str) else ({**merged, **value} if isinstance(value, dict) else value)
        else:
            where[leaf] = value
    return out


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME,ARG=VALUE,...' -> (NAME, {ARG: VALUE}); values parsed as JSON when they can be.

    true/false are booleans in any case (True, FALSE), so that a flag never arrives as a truthy string."""
    name, *args = [p.strip() for p in text.split(",")]
    kwargs: dict[str, Any] = {}
    for a in args:
        if "=" not in a:
            raise ValueError(f"{text!r}: expected ARG=VALUE after the name, got {a!r}")
        k, v = a.split("=", 1)
        if v.strip().lower() in ("true", "false"):
            kwargs[k.strip()] = v.strip().lower() == "true"
            continue
        try:
            kwargs[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            kwargs[k.strip()] = v
    if not name:
        raise ValueError(f"{text!r}: a registry name must come first")
    return name, kwargs


def _check_json(value: Any, where: str) -> None:
    try:
        json.dumps(value)
    except TypeError as e:
        raise ConfigError(f"{where}: config values must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from None


class FrozenKwargs(dict):
    """A part's kwargs: a plain dict for reading (JSON, `**kwargs`, pickling), refusing writes.

    `ModelConfig` is frozen, so a part's kwargs must not change under it either (a model built
    from a config would silently stop matching it). To change one, make a new config:
    `cfg.override(backbone={"depth": 4})`.
    """

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigError(
            "a part's kwargs are read-only (the config is frozen); make a new config instead, "
            "e.g. cfg.override(backbone={'depth': 4}) or Part(name, {**part.kwargs, 'depth': 4})"
        )

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True))

    def __reduce__(self) -> tuple[Any, ...]:  # pickle / deepcopy without going through __setitem__
        return (FrozenKwargs, (dict(self),))

    def __repr__(self) -> str:
        return dict.__repr__(self)


@dataclass(frozen=True)
class Part:
    """One part: the registry name of its builder and the flat keyword arguments it is built with."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Part name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError(f"part {self.name!r}: kwargs must be a dict of builder arguments, got {type(self.kwargs).__name__}")
        _check_json(dict(self.kwargs), f"part {self.name!r}")
        # JSON values, as a saved config holds them: a tuple given in Python equals its reloaded list
        object.__setattr__(self, "kwargs", FrozenKwargs(json.loads(json.dumps(dict(self.kwargs)))))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": json.loads(json.dumps(self.kwargs))}  # a copy the caller may edit

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Part":
        if not isinstance(d, Mapping) or "name" not in d or set(d) - {"name", "kwargs"}:
            extra = sorted(set(d) - {"name", "kwargs"}) if isinstance(d, Mapping) else None
            raise ConfigError(
                f"a part is {{'name': NAME, 'kwargs': {{...}}}}, got {d!r}" + (f" (unknown key(s) {extra})" if extra else "")
            )
        return cls(d["name"], d.get("kwargs", {}))


@dataclass(frozen=True)
class SamplerConfig:
    """MaskGIT decoding (docs/DESIGN.md section 1; google-research/maskgit)."""

    steps: int = 12  # the paper's default; FAD and DeSync saturate after 12 (Fig. 3)
    temperature: float = 9.0  # Gumbel "choice" temperature, annealed linearly to 0 over the steps
    mask_schedule: str = "cosine"  # fraction still masked after step k: cos(pi/2 * (k+1)/K); a MASK_SCHEDULES name

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise ConfigError(f"sampler.steps must be an int, got {self.steps!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ConfigError(f"sampler.temperature must be a number, got {self.temperature!r}")
        if not (1 <= int(self.steps) <= 1024):
            raise ConfigError(f"sampler.steps must be in [1, 1024], got {self.steps}")
        if not math.isfinite(self.temperature) or self.temperature < 0:  # NaN compares False
            raise ConfigError(f"sampler.temperature must be a finite number >= 0 (0: greedy choice), got {self.temperature}")
        if not isinstance(self.mask_schedule, str) or not self.mask_schedule:
            # the name itself is looked up in MASK_SCHEDULES when the sampler is built (build_model), so a
            # schedule a plugin registers after this config is made works, and an unknown one lists them all
            raise ConfigError(
                f"sampler.mask_schedule must be the name of a registered mask schedule (controlfoley.MASK_SCHEDULES: "
                f"cosine, linear, square, cubic or your own), got {self.mask_schedule!r}"
            )

    @classmethod
    def from_dict(cls, d: Any) -> "SamplerConfig":  # a validator: it takes any JSON value
        """A SamplerConfig from {steps, temperature, mask_schedule} (missing ones: the defaults)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"sampler must be an object of steps, temperature, mask_schedule, got {d!r}")
        bad = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if bad:
            raise ConfigError(f"unknown sampler field(s) {bad}; known: steps, temperature, mask_schedule")
        return cls(**dict(d))


_PART_FIELDS = ("mel", "tokenizer", "backbone", "control_encoder", "aligner", "controlnet", "guidance", "vocoder")


def part_registries() -> dict[str, Any]:
    """Config field -> the registry its part is built from (every part field but `controlnet`)."""
    from controlfoley._registry import ALIGNERS, BACKBONES, CONTROL_ENCODERS, GUIDANCE, MEL_FRONTENDS, TOKENIZERS, VOCODERS

    return {
        "mel": MEL_FRONTENDS, "tokenizer": TOKENIZERS, "backbone": BACKBONES, "control_encoder": CONTROL_ENCODERS,
        "aligner": ALIGNERS, "guidance": GUIDANCE, "vocoder": VOCODERS,
    }
_OPTIONAL_PARTS = ("control_encoder", "aligner", "controlnet")


@dataclass(frozen=True)
class ModelConfig:
    """The whole composite model. The video parts (control_encoder, aligner, controlnet) are all set
    or all None; None gives the backbone alone (SpecMaskGIT)."""

    n_frames: int  # mel frames in one window: 848 = 9.85 s at 22.05 kHz / hop 256 (10 s cropped to a multiple of 16)
    mel: Part
    tokenizer: Part
    backbone: Part
    guidance: Part
    vocoder: Part
    control_encoder: Part | None = None
    aligner: Part | None = None
    controlnet: Part | None = None  # kwargs: n_blocks (copied from the start), injection rule
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    name: str = "custom"  # preset it came from, for display only

    def __post_init__(self) -> None:
        if isinstance(self.n_frames, bool) or not isinstance(self.n_frames, int) or self.n_frames <= 0:
            raise ConfigError(f"n_frames must be a positive int (mel frames per window), got {self.n_frames!r}")
        has = [getattr(self, f) is not None for f in _OPTIONAL_PARTS]
        if any(has) and not all(has):
            raise ConfigError(
                "control_encoder, aligner and controlnet come together: give all three (a video-controlled model) "
                f"or none (the backbone alone). Got: {dict(zip(_OPTIONAL_PARTS, has))}"
            )

    @property
    def has_control(self) -> bool:
        return self.controlnet is not None

    # -- JSON round trip -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n_frames": self.n_frames, "name": self.name}
        for f in _PART_FIELDS:
            p = getattr(self, f)
            d[f] = None if p is None else p.to_dict()
        d["sampler"] = dataclasses.asdict(self.sampler)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ModelConfig":  # a validator: it takes any JSON value
        if not isinstance(d, Mapping):
            raise ConfigError(f"a model config is a JSON object (what ModelConfig.to_dict() writes), got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        missing = sorted({"n_frames", "mel", "tokenizer", "backbone", "guidance", "vocoder"} - {k for k in d if d[k] is not None})
        if missing:
            raise ConfigError(f"model config lacks {missing}; a whole config is what ModelConfig.to_dict() writes")
        kw: dict[str, Any] = {"n_frames": d["n_frames"], "name": d.get("name", "custom")}
        for f in _PART_FIELDS:
            if d.get(f) is not None:
                kw[f] = Part.from_dict(d[f])
        kw["sampler"] = SamplerConfig.from_dict({} if d.get("sampler") is None else d["sampler"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))

    # -- overrides -----------------------------------------------------------------------------
    def override(self, **overrides: Any) -> "ModelConfig":
        """A new config with `overrides` applied (rules in the module docstring)."""
        registries = part_registries()
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in _PART_FIELDS:
                old: Part | None = getattr(self, key)
                changes[key] = _override_part(key, old, value, registries.get(key))
            elif key == "sampler":
                if isinstance(value, SamplerConfig):
                    changes[key] = value
                elif isinstance(value, Mapping):
                    changes[key] = SamplerConfig.from_dict({**dataclasses.asdict(self.sampler), **value})  # unknown fields named
                else:
                    raise ConfigError(f"sampler override must be a dict or SamplerConfig, got {type(value).__name__}")
            elif key in ("n_frames", "name"):
                changes[key] = value
            else:
                fields = sorted((*_PART_FIELDS, "sampler", "n_frames", "name"))
                close = difflib.get_close_matches(str(key), fields, n=1)
                raise ConfigError(
                    f"unknown override {key!r}{f' (did you mean {close[0]!r}?)' if close else ''}; fields you can override: {fields}"
                )
        removed = [f for f in _OPTIONAL_PARTS if f in changes and changes[f] is None]
        if removed and len(removed) < len(_OPTIONAL_PARTS) and all(getattr(self, f) is not None for f in _OPTIONAL_PARTS):
            rest = ", ".join(f"{f}=None" for f in _OPTIONAL_PARTS if f not in removed)
            raise ConfigError(
                f"{', '.join(removed)} removed alone: control_encoder, aligner and controlnet come together; for the backbone alone "
                f"remove all three (add {rest}: build_model(..., control_encoder=None, aligner=None, controlnet=None))"
            )
        given = overrides.get("guidance")
        settings_only = isinstance(given, Mapping) and "name" not in given  # {"scale": 5.0}: the rule's settings, not a rule
        if removed and ("guidance" not in overrides or settings_only) and self.has_control:
            changes["guidance"] = _guidance_without_video(changes.get("guidance", self.guidance), registries.get("guidance"))
        result = dataclasses.replace(self, **changes)
        if "guidance" in overrides and not result.has_control:
            _warn_guidance_without_video(result.guidance, registries.get("guidance"), removed=bool(removed))
        return result


def _guidance_without_video(part: Part, registry: Any) -> Part:
    """The guidance of a config whose video parts were just removed: the same part where its rule
    reads no video; text-only CFG at the rule's scale and schedule where it does (multi-CFG,
    cfg_video: the backbone-alone presets' rule), and 'none' on the text condition for an unguided
    rule, since a model without a ControlNet cannot sample those."""
    try:
        rule = registry.build(part.name, **part.kwargs)
    except Exception:  # noqa: BLE001  a broken rule fails, named, when the model is built
        return part
    if not getattr(rule, "needs_video", False):
        return part
    from controlfoley.guidance import NoGuidance

    if isinstance(rule, NoGuidance):  # unguided stays unguided, on the condition left (text)
        return Part("none", {"condition": "text"})
    from controlfoley.guidance import SCALE_SCHEDULES

    if rule.schedule not in SCALE_SCHEDULES:  # its own scale_at's schedule, which text-only CFG cannot follow
        raise ConfigError(
            f"guidance {part.name!r} ({type(rule).__name__}) reads video and has its own schedule {rule.schedule!r}: without the video "
            f"parts the model samples text-only CFG, which knows {SCALE_SCHEDULES}; give the model a rule too (guidance=...)"
        )
    return Part("cfg_text", {"scale": float(rule.scale), "schedule": str(rule.schedule)})  # the built rule's, defaults included


def _warn_guidance_without_video(part: Part, registry: Any, *, removed: bool) -> None:
    """A guidance rule given for a model without video parts that reads video: said where the choice
    is made, since every `generate` of that model will refuse it. A warning, not an error: such a
    model still trains (the backbone recipe never samples), and a run recorded with it resumes."""
    try:
        rule = registry.build(part.name, **part.kwargs)
    except Exception:  # noqa: BLE001  a broken rule fails, named, when the model is built
        return
    if getattr(rule, "needs_video", False):
        import warnings

        from controlfoley.errors import user_stacklevel

        why = "this override removes the video parts" if removed else "this model has no video parts (a backbone alone)"
        warnings.warn(
            f"guidance {part.name!r} reads video features, but {why}: the model builds and trains, but its generate will refuse "
            "that rule; give a rule without video ('cfg_text', or 'none' with condition='text' or 'uncond'), or leave guidance= out"
            + (" (it then becomes 'cfg_text' at the rule's scale; guidance={'scale': ...} sets that scale)" if removed else ""),
            stacklevel=user_stacklevel(),
        )


def _override_part(key: str, old: Part | None, value: Any, registry: Any) -> Part | None:
    if value is None:
        if key not in _OPTIONAL_PARTS:
            raise ConfigError(f"{key} is required and cannot be removed")
        return None
    if isinstance(value, Part):
        return value
    if isinstance(value, str):
        if old is None or value == old.name:
            return Part(value, {} if old is None else old.kwargs)
        # A new part: keep the old kwargs the new builder also accepts (widths, kernel sizes, ...).
        accepted = registry.accepted_args(value) if registry is not None else {}
        return Part(value, {k: v for k, v in old.kwargs.items() if k in accepted})
    if isinstance(value, Mapping):
        value = dict(value)
        name = value.pop("name", None)
        base = old if (name is None or (old is not None and name == old.name)) else _override_part(key, old, name, registry)
        if base is None:
            raise ConfigError(f"{key} is absent in this config; give a name: {key}={{'name': ..., ...}}")
        return Part(base.name, {**base.kwargs, **value})
    raise ConfigError(f"override {key}= must be a name, a dict of kwargs, a Part or None; got {type(value).__name__}")
