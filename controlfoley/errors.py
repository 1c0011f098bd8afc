"""Exceptions a user can cause. Each message names the problem and the fix."""

import importlib
import os
import re
from types import ModuleType

from controlfoley._errorbase import ControlFoleyError
from controlfoley._registry import ArgumentError, PluginError, RegistryError
from controlfoley.config import ConfigError

__all__ = [
    "ControlFoleyError",
    "ShapeError",
    "SampleRateError",
    "CheckpointError",
    "MissingDependencyError",
    "MediaError",
    "DataError",
    "TrainingError",
    "ConfigError",
    "RegistryError",
    "ArgumentError",
    "PluginError",
    "RandomWeightsWarning",
    "require",
    "strip_ansi",
    "leading_line",
    "check_callable",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes (torch bolds parts of some messages)


def strip_ansi(text: str) -> str:
    """A message without terminal colour codes, for one-line error output."""
    return _ANSI.sub("", text)


_REPORTED_BY = "controlfoley_reported_by"  # attribute of an exception: the rank that prints it


def mark_reported(error: BaseException, rank: int) -> BaseException:
    """Mark `error` as printed by rank `rank` of a torchrun job (which hit it too); returns it."""
    setattr(error, _REPORTED_BY, rank)
    return error


def reported_by(error: BaseException) -> int | None:
    """The rank that prints `error` when another rank than this one does; None: this rank prints it."""
    return getattr(error, _REPORTED_BY, None)


def leading_line(e: BaseException) -> str:
    """A library error's first line, with the next where the first only introduces it (torch's
    "Error(s) in loading state_dict for CLIP:"), no terminal codes; its type's name if it says nothing."""
    lines = [line.strip() for line in strip_ansi(str(e)).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def one_line(e: BaseException) -> str:
    """An error as the CLIs print it: one line, no terminal codes (its type's name if it says nothing)."""
    return " ".join((strip_ansi(str(e)).strip() or type(e).__name__).split())


class ShapeError(ControlFoleyError, ValueError):
    """A tensor whose shape, dtype or values do not fit (wrong grid, NaN features, token out of range)."""


class SampleRateError(ShapeError, ConfigError):
    """A sample rate that is not a positive whole number of Hz (the one rule of every reader, writer
    and metric: `controlfoley.audio.io._checked_rate`): a ConfigError, an argument's value, and a
    ShapeError, as the metrics raised for one before the rule was shared."""


class CheckpointError(ControlFoleyError, ValueError):
    """A checkpoint that cannot be loaded into the model it is meant for (names the keys)."""


class MediaError(ControlFoleyError, ValueError):
    """An audio or video file that cannot be read or written (missing, corrupt, no stream, codec)."""


class DataError(ControlFoleyError, ValueError):
    """A dataset shard that is missing, corrupt, empty or disagrees with the preset."""


class TrainingError(ControlFoleyError, RuntimeError):
    """Training cannot go on (non-finite loss, resume from a mismatching checkpoint)."""


class RandomWeightsWarning(UserWarning):
    """A part that needs trained weights (a GAN vocoder) was built without them: its output is noise."""


def user_stacklevel() -> int:
    """The `stacklevel` that points a warning at the first frame outside this package: the user's
    own line (`train(cfg)` in their script), however deep inside the library it is issued. Call
    it in the function that calls `warnings.warn`."""
    import inspect

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    caller = inspect.currentframe()
    caller = caller.f_back if caller is not None else None  # past this function's own frame...
    while caller is not None and _is_wrapper(caller.f_code.co_filename):  # ...and the type checks' wrappers of it
        caller = caller.f_back
    if caller is None:
        return 1
    # warn(stacklevel=1) names `caller`; each frame outward adds one, up to the first outside the package
    frame, level = caller.f_back, 2
    while frame is not None and (_is_wrapper(frame.f_code.co_filename) or os.path.abspath(frame.f_code.co_filename).startswith(package)):
        frame, level = frame.f_back, level + 1
    return level


def _is_wrapper(filename: str) -> bool:
    """A frame of a decorator's wrapper between two of the package's frames: the runtime type checks'
    (jaxtyping, beartype's generated code), torch.no_grad's, contextlib's, functools'."""
    if filename.startswith("<@beartype"):
        return True
    path = os.path.normpath(filename)
    parts = path.split(os.sep)
    return (
        "jaxtyping" in parts or "beartype" in parts or os.path.basename(path) in ("contextlib.py", "functools.py")
        or path.endswith(os.path.join("torch", "utils", "_contextlib.py"))
    )  # fmt: skip


def warn_random_weights(kind: str, name: str, arg: str) -> None:
    import warnings

    warnings.warn(
        f"{kind} {name!r} built without {arg}=: its weights are random (it outputs noise until trained weights "
        f"are loaded into it); pass {arg}=PATH (CLI: --{kind} {name},{arg}=PATH)",
        RandomWeightsWarning,
        stacklevel=3,
    )


class MissingDependencyError(ControlFoleyError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import an optional dependency or raise MissingDependencyError naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = f"controlfoley[{extra}]" if extra else module
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(f"{module} is needed{what} but is not installed ({e}). Install it: pip install '{pkg}'") from e


def check_callable(fn: object, where: str, contract: str, *args: object, **kwargs: object) -> None:
    """A ConfigError when `fn` cannot be called as the contract calls it (`args` positionally,
    `kwargs` by name: stand-in values, only bound to the signature, never called): a user part's `forward(x, grid)` or
    `combine(logits)` is named when the model is built, not as a TypeError mid-training. A callable
    whose signature cannot be read (a builtin) passes."""
    import inspect

    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{where} takes {sig} but is called as {contract} ({e}); give it that signature") from None
