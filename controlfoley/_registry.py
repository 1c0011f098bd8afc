"""Registries: one per kind of part, a plain dict behind a decorator (timm style).

Every entry is a *builder*: a callable taking flat, typed keyword arguments and returning a built
part. Builders never receive config objects. Built-in parts register themselves when their module
is imported; the registries import them lazily on first lookup so that `import controlfoley` stays
light. User code registers its own parts with the same decorator and uses them by name::

    from controlfoley import ALIGNERS

    @ALIGNERS.register("my_aligner")
    def my_aligner(*, in_dim: int, out_dim: int, grid: tuple[int, int]) -> nn.Module: ...
"""

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = [
    "Registry",
    "RegistryError",
    "TOKENIZERS",
    "BACKBONES",
    "CONTROL_ENCODERS",
    "ALIGNERS",
    "GUIDANCE",
    "VOCODERS",
    "EXTRACTORS",
    "MEL_FRONTENDS",
    "PRESETS",
    "ALL_REGISTRIES",
]

T = TypeVar("T")

# Modules holding the built-in entries; imported once, on the first lookup of any registry.
_BUILTIN_MODULES = (
    "controlfoley.audio.mel",
    "controlfoley.audio.vocoders",
    "controlfoley.tokenizers.specvqgan",
    "controlfoley.backbones.specmaskgit",
    "controlfoley.control.encoders",
    "controlfoley.control.aligners",
    "controlfoley.guidance",
    "controlfoley.data.extractors",
    "controlfoley.data.real_extractors",
    "controlfoley.presets",
)
_builtins_loaded = False


def _load_builtins() -> None:
    # Set before importing: the built-in modules look registries up while they load (re-entry).
    # Reset on failure, so a later lookup retries and reports the real import error again.
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)
    except BaseException:
        _builtins_loaded = False
        raise


class RegistryError(KeyError):
    """Unknown or duplicate registry name, or bad builder arguments. The message lists what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named collection of builders for one kind of part."""

    def __init__(self, kind: str, attr: str) -> None:
        self.kind = kind
        self.attr = attr  # the name users import, for error messages
        self._entries: dict[str, Callable[..., T]] = {}

    # -- registration ------------------------------------------------------------------------
    def register(self, name: str, *, override: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering `fn` under `name`. A second registration of a name is an error
        unless `override=True` (which is how a user deliberately replaces a built-in)."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and not override and self._entries[name] is not fn:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {_qualname(self._entries[name])}). "
                    f"Choose another name or pass override=True. Registered: {', '.join(self.names())}"
                )
            self._entries[name] = fn
            return fn

        return deco

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._entries[name]

    # -- lookup ------------------------------------------------------------------------------
    def get(self, name: str) -> Callable[..., T]:
        _load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {', '.join(self.names()) or '(none)'}. "
                f"Register your own with @controlfoley.{self.attr}.register(name)."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style wildcard (`"*_tiny"`)."""
        _load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def accepted_args(self, name: str) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(self.get(name))
        return {k: p for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def build(self, name: str, /, **kwargs: Any) -> T:
        """Build entry `name` with keyword arguments; unknown arguments are named in the error."""
        fn = self.get(name)
        sig = inspect.signature(fn)
        takes_var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        if not takes_var_kw:
            accepted = self.accepted_args(name)
            bad = sorted(set(kwargs) - set(accepted))
            if bad:
                raise RegistryError(
                    f"{self.kind} {name!r} got unknown argument(s) {bad}. It accepts: {', '.join(accepted) or '(none)'}"
                )
            missing = [k for k, p in accepted.items() if p.default is p.empty and k not in kwargs]
            if missing:
                raise RegistryError(f"{self.kind} {name!r} is missing required argument(s) {missing}")
        return fn(**kwargs)

    def __contains__(self, name: object) -> bool:
        _load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        _load_builtins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


TOKENIZERS: Registry[Any] = Registry("tokenizer", "TOKENIZERS")
BACKBONES: Registry[Any] = Registry("backbone", "BACKBONES")
CONTROL_ENCODERS: Registry[Any] = Registry("control_encoder", "CONTROL_ENCODERS")
ALIGNERS: Registry[Any] = Registry("aligner", "ALIGNERS")
GUIDANCE: Registry[Any] = Registry("guidance", "GUIDANCE")
VOCODERS: Registry[Any] = Registry("vocoder", "VOCODERS")
EXTRACTORS: Registry[Any] = Registry("extractor", "EXTRACTORS")
MEL_FRONTENDS: Registry[Any] = Registry("mel_frontend", "MEL_FRONTENDS")
PRESETS: Registry[Any] = Registry("preset", "PRESETS")

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    r.kind: r
    for r in (TOKENIZERS, BACKBONES, CONTROL_ENCODERS, ALIGNERS, GUIDANCE, VOCODERS, EXTRACTORS, MEL_FRONTENDS, PRESETS)
}
