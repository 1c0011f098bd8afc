"""Guidance rules and CFG scale schedules.

A rule declares the *condition sets* whose logits it needs; a condition set says whether the
ControlNet runs (video) and whether the mask is the CLAP-conditional one (text). The sampler
evaluates every set a rule needs in ONE batched forward per step, then the rule combines them.

- `none`: one condition set, no guidance.
- `cfg` (+ aliases `cfg_video`, `cfg_text`, `cfg_text_video`): classifier-free guidance on one
  condition, l = l_u + s (l_c - l_u) (Ho & Salimans 2022).
- `multi`: SpecMaskFoley eq. 1 (after StemGen): l = l_u + s[(l_tv - l_u) + (l_v - l_u)], where l_u
  is the backbone alone with the unconditional mask and no ControlNet.

A rule lists its fully conditioned set LAST: `generate(guidance_every=N)` runs that set alone at
the steps between full ones and reuses the others' offsets from it (controlfoley.fast.GuidedStep).

Scale schedules map step k of K to a scale: `linear` rises from 0 at the first step to `scale` at
the last (the paper's "CFG scale linearly increasing from 0 to 3 across the 12 steps"), `constant`.
A rule of one's own may override `scale_at(step, n_steps)` for another schedule; it reads
`self.scale`, which `generate(cfg_scale=...)` replaces (the sampler calls it on a copy of the rule
holding that scale). A step whose scale is 0 runs the unconditional rows alone (`prune_rows`).
"""

import copy
import inspect
import math
import numbers
import warnings
from collections.abc import Iterable
from typing import NamedTuple

from controlfoley._registry import GUIDANCE
from controlfoley.errors import ConfigError, check_callable, user_stacklevel
from controlfoley.typing import Float, Tensor

__all__ = [
    "Condition",
    "UNCOND",
    "TEXT",
    "VIDEO",
    "TEXT_VIDEO",
    "GuidanceRule",
    "NoGuidance",
    "ignores_scale",
    "with_scale",
    "CFG",
    "MultiCFG",
    "scale_at",
    "SCALE_SCHEDULES",
    "check_rule",
]


class Condition(NamedTuple):
    """One condition set: run the ControlNet (`video`)? use the CLAP conditional mask (`text`)?"""

    video: bool
    text: bool

    @property
    def label(self) -> str:
        return {(False, False): "uncond", (False, True): "text", (True, False): "video", (True, True): "text_video"}[self]


UNCOND = Condition(video=False, text=False)
TEXT = Condition(video=False, text=True)
VIDEO = Condition(video=True, text=False)
TEXT_VIDEO = Condition(video=True, text=True)
_BY_LABEL = {c.label: c for c in (UNCOND, TEXT, VIDEO, TEXT_VIDEO)}

SCALE_SCHEDULES = ("linear", "constant")


def scale_at(step: int, n_steps: int, scale: float, schedule: str) -> float:
    """CFG scale at `step` (0-based) of `n_steps`."""
    if schedule == "constant":
        return float(scale)
    if schedule == "linear":
        return float(scale) if n_steps == 1 else float(scale) * step / (n_steps - 1)
    raise ConfigError(f"unknown CFG scale schedule {schedule!r}; choose one of {SCALE_SCHEDULES}")


def _own_scale_at(rule: object) -> bool:
    """Whether `rule`'s class overrides GuidanceRule.scale_at (then its schedule is its own name)."""
    return getattr(type(rule), "scale_at", None) is not GuidanceRule.scale_at


_UNSHOWN_WARNED: set[type] = set()


def _kept(rule: object, name: str) -> bool:
    """Whether `rule` keeps an attribute `name` of its own (an nn.Module rule keeps its submodules,
    parameters and buffers outside vars(), where getattr finds them)."""
    if name in vars(rule):
        return True
    return any(name in (getattr(rule, store, None) or {}) for store in ("_modules", "_parameters", "_buffers"))


class GuidanceRule:
    """Base of guidance rules: `conditions` in a fixed order, `combine` their logits."""

    conditions: tuple[Condition, ...] = ()

    def __init__(self, scale: float = 3.0, schedule: str = "linear") -> None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ConfigError(f"a guidance rule's scale must be a finite number, got {scale!r}")
        if _own_scale_at(self):  # its own scale_at reads the schedule: any name it gives itself
            if not isinstance(schedule, str) or not schedule:
                raise ConfigError(f"{type(self).__name__}: schedule must be a non-empty name, got {schedule!r}")
        else:
            scale_at(0, 2, scale, schedule)  # validate the schedule name now, not mid-sampling
        self.scale: float = float(scale)
        self.schedule: str = schedule

    @property
    def needs_text(self) -> bool:
        return any(c.text for c in self.conditions)

    @property
    def needs_video(self) -> bool:
        return any(c.video for c in self.conditions)

    def scale_at(self, step: int, n_steps: int) -> float:
        return scale_at(step, n_steps, self.scale, self.schedule)

    def combine(self, logits: tuple[Tensor, ...], scale: float) -> Float[Tensor, "b l v"]:
        raise NotImplementedError  # abstract

    def without_text(self) -> "GuidanceRule":
        """The rule `FoleyPipeline` samples with when this model rule needs text and no prompt is
        given: video-only CFG at the same scale and schedule (the paper's "CFG w/o l_tv"). A rule
        of one's own may return another; it must not need text. A rule with its own scale_at and a
        schedule of its own naming must return its own (CFG knows linear and constant only)."""
        if self.schedule not in SCALE_SCHEDULES:
            raise ConfigError(
                f"{type(self).__name__} has its own schedule {self.schedule!r} (its scale_at), which the video-only CFG it falls back "
                "to without a prompt cannot follow: define without_text(self) returning the rule to sample with when no prompt is "
                "given (one that needs no text)"
            )
        return CFG("video", self.scale, self.schedule)

    def __repr__(self) -> str:
        """Its class, scale, schedule, conditions and the other arguments of its class's __init__
        that it keeps as attributes of the same name (`generate --skip-existing` compares rules by
        this; state it sets while sampling is left out). Tensors and modules show as a digest of
        their values, so different weights never read alike and a large one stays one line."""
        conds = ", ".join(c.label for c in self.conditions)
        try:
            params = inspect.signature(type(self).__init__).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in ("self", "scale", "schedule", "conditions")]
        own = "".join(f", {n}={fingerprint(getattr(self, n))}" for n in named if _kept(self, n))
        return f"{type(self).__name__}(scale={self.scale}, schedule={self.schedule!r}, conditions=[{conds}]{own})"


def tensor_digest(tensors: Iterable[Tensor]) -> str:
    """16 hex digits of a SHA-256 over the tensors' dtypes, shapes and bytes, in order."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(value: object) -> str:
    """A setting as one short line that tells values apart: its repr, or for a tensor, a module or
    a long repr, its kind and shape with a SHA-256 digest of its values (torch elides the middle of
    a large tensor's repr, so two different ones could read the same)."""
    import hashlib

    import torch
    from torch import nn

    if isinstance(value, torch.Tensor):
        return f"tensor({list(value.shape)}, {value.dtype}, sha256:{tensor_digest([value])})"
    if isinstance(value, nn.Module):
        return f"{type(value).__name__}(sha256:{tensor_digest(value.state_dict().values())})"
    text = repr(value)
    if len(text) > 200 or "\n" in text:
        return f"{type(value).__name__}(sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]})"
    return text


def check_rule(rule: GuidanceRule, where: str) -> None:
    """A guidance rule keeps the `GuidanceRule` contract, or a ConfigError naming `where` (e.g.
    "guidance 'my_rule'") and what is wrong: `conditions` a non-empty tuple of `Condition`s,
    `combine` overridden, a finite `scale` and a known `schedule` (set by `GuidanceRule.__init__`).
    Checked when a model is built and when `generate` is given a rule, so that a broken user rule
    fails there, named, not inside the first sampling step (an AttributeError on a string
    condition, the base class's combine raising with no message, or torch.cat of no rows)."""
    where = f"{where} ({type(rule).__name__})"
    conds = getattr(rule, "conditions", None)
    if not isinstance(conds, (tuple, list)) or not conds or not all(isinstance(c, Condition) for c in conds):
        bad = next((c for c in conds if not isinstance(c, Condition)), None) if isinstance(conds, (tuple, list)) else None
        got = f"holds {bad!r}" if bad is not None else f"is {conds!r}"
        raise ConfigError(
            f"{where}: conditions must be a non-empty tuple of controlfoley.Condition (UNCOND, TEXT, VIDEO, TEXT_VIDEO from "
            f"controlfoley.guidance), the fully conditioned set last; it {got}"
        )
    if getattr(type(rule), "combine", None) is GuidanceRule.combine:
        raise ConfigError(f"{where} does not define combine(logits, scale): the logits of its {len(conds)} condition set(s), in order, -> guided logits")
    check_callable(rule.combine, f"{where}.combine", "combine(logits, scale)", None, None)
    if getattr(type(rule), "scale_at", GuidanceRule.scale_at) is not GuidanceRule.scale_at:
        check_callable(rule.scale_at, f"{where}.scale_at", "scale_at(step, n_steps)", None, None)
    scale, schedule = getattr(rule, "scale", None), getattr(rule, "schedule", None)
    known = (isinstance(schedule, str) and bool(schedule)) if _own_scale_at(rule) else schedule in SCALE_SCHEDULES
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or not known:
        raise ConfigError(
            f"{where} has scale={scale!r}, schedule={schedule!r}; it needs a finite scale and a schedule in {SCALE_SCHEDULES} "
            "(any name where it defines its own scale_at): call GuidanceRule.__init__(self, scale, schedule) in its __init__ "
            "(super().__init__(scale, schedule))"
        )
    _warn_unshown_settings(rule, where)


def _warn_unshown_settings(rule: GuidanceRule, where: str) -> None:
    """Once per class: __init__ arguments the rule keeps under no attribute of their name, which its
    repr (what `generate --skip-existing` compares, and generate.json records) cannot show."""
    cls = type(rule)
    if cls in _UNSHOWN_WARNED:
        return
    _UNSHOWN_WARNED.add(cls)
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    skip = ("self", "scale", "schedule", "conditions", "condition")  # the repr shows the conditions an argument picks
    unshown = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in skip and not _kept(rule, n)]
    if unshown:
        names = ", ".join(unshown)
        warnings.warn(
            f"{where} keeps its argument(s) {names} under no attribute of the same name, so its repr, which generate.json records "
            f"and generate --skip-existing compares, does not show them (outputs made with other values would be kept): "
            f"store them as {', '.join(f'self.{n}' for n in unshown)}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


class NoGuidance(GuidanceRule):
    def __init__(self, condition: str = "text_video") -> None:
        super().__init__(0.0, "constant")
        self.conditions = (_condition(condition),)

    def combine(self, logits: tuple[Tensor, ...], scale: float) -> Float[Tensor, "b l v"]:
        return logits[0]

    def without_text(self) -> GuidanceRule:
        return NoGuidance("video")  # unguided stays unguided, on the video condition



def ignores_scale(rule: GuidanceRule) -> bool:
    """Whether `rule` combines as `none` does (one condition set's logits, unguided), so that no CFG
    scale changes what it samples: `generate(cfg_scale=...)` says so, and records keep its scale."""
    return getattr(type(rule), "combine", None) is NoGuidance.combine


def with_scale(rule: GuidanceRule, scale: float, what: str = "cfg_scale") -> GuidanceRule:
    """`rule` at `scale`: itself when already at it, else a copy holding `scale` (what a sampler
    reads through `scale_at`, and what a record's repr shows). A rule whose `scale` cannot be set
    (a read-only property) is a ConfigError naming `what`, the setting that asked for the scale."""
    if scale == rule.scale:
        return rule
    own = copy.copy(rule)
    try:
        own.scale = float(scale)
    except AttributeError:  # a read-only property (or __slots__ without it)
        raise ConfigError(
            f"guidance {rule!r}: its scale cannot be set (a read-only attribute of {type(rule).__name__}), so {what} {scale:g} "
            f"cannot replace its {rule.scale:g}; leave {what} out, or give {type(rule).__name__} a settable scale"
        ) from None
    return own


class CFG(GuidanceRule):
    """Single-condition CFG: l_u + s (l_c - l_u)."""

    def __init__(self, condition: str = "video", scale: float = 3.0, schedule: str = "linear") -> None:
        super().__init__(scale, schedule)
        cond = _condition(condition)
        if cond == UNCOND:
            raise ConfigError("cfg needs a condition other than 'uncond' (video, text or text_video)")
        self.conditions = (UNCOND, cond)

    def combine(self, logits: tuple[Tensor, ...], scale: float) -> Float[Tensor, "b l v"]:
        l_u, l_c = logits
        return l_u + scale * (l_c - l_u)


class MultiCFG(GuidanceRule):
    """SpecMaskFoley eq. 1: l_u + s[(l_tv - l_u) + (l_v - l_u)]."""

    conditions = (UNCOND, VIDEO, TEXT_VIDEO)

    def combine(self, logits: tuple[Tensor, ...], scale: float) -> Float[Tensor, "b l v"]:
        l_u, l_v, l_tv = logits
        return l_u + scale * ((l_tv - l_u) + (l_v - l_u))


def _condition(label: str) -> Condition:
    if label not in _BY_LABEL:
        raise ConfigError(f"unknown condition {label!r}; choose one of {sorted(_BY_LABEL)}")
    return _BY_LABEL[label]


@GUIDANCE.register("none")
def none(*, condition: str = "text_video") -> NoGuidance:
    """No guidance: the logits of one condition set."""
    return NoGuidance(condition)


@GUIDANCE.register("cfg")
def cfg(*, condition: str = "video", scale: float = 3.0, schedule: str = "linear") -> CFG:
    """Single-condition classifier-free guidance on any one condition set."""
    return CFG(condition, scale, schedule)


@GUIDANCE.register("cfg_video")
def cfg_video(*, scale: float = 3.0, schedule: str = "linear") -> CFG:
    """CFG on video alone (the paper's "CFG w/o l_text&video" ablation)."""
    return CFG("video", scale, schedule)


@GUIDANCE.register("cfg_text_video")
def cfg_text_video(*, scale: float = 3.0, schedule: str = "linear") -> CFG:
    """CFG on text+video (the paper's "CFG w/o l_video" ablation)."""
    return CFG("text_video", scale, schedule)


@GUIDANCE.register("cfg_text")
def cfg_text(*, scale: float = 3.0, schedule: str = "linear") -> CFG:
    """CFG on the CLAP prompt alone (SpecMaskGIT, the backbone without ControlNet)."""
    return CFG("text", scale, schedule)


@GUIDANCE.register("multi")
def multi(*, scale: float = 3.0, schedule: str = "linear") -> MultiCFG:
    """Multi-condition CFG of SpecMaskFoley eq. 1 (the paper's default)."""
    return MultiCFG(scale, schedule)
