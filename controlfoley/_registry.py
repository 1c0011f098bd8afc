"""Registries: one per kind of part, a plain dict behind a decorator (timm style).

Every entry is a *builder*: a callable taking flat, typed keyword arguments and returning a built
part. Builders never receive config objects. (Two exceptions: MASK_SCHEDULES holds MaskGIT's
mask schedules themselves, functions gamma(r) looked up by `controlfoley.sampling`; RECIPES holds
the training recipes, `controlfoley.train.recipes.Recipe` subclasses, which `TrainConfig.recipe`
and `controlfoley train NAME` name.) Built-in parts register themselves when their module is
imported; the registries import them lazily on first lookup so that `import controlfoley` stays
light. User code registers its own parts with the same decorator and uses them by name::

    from controlfoley import ALIGNERS

    @ALIGNERS.register("my_aligner")
    def my_aligner(*, in_dim: int, out_dim: int, grid: list) -> nn.Module: ...  # grid [F, T], a list

Plugins: the command line (and every torchrun rank, DataLoader worker or subprocess) must import
the module that registers a part before it can use it by name. `load_plugins("my_parts.py")`
does that from Python; on the first lookup of any registry, the modules named in the
`CONTROLFOLEY_PLUGINS` environment variable (module names or .py paths, comma-separated) and the
entry points of group `controlfoley.plugins` of installed packages are imported too; the
`controlfoley --plugin X` option sets that variable. A plugin given as a .py path is imported with
its own folder on sys.path while it runs (as `python FILE.py` has it), so it can import a module
beside it.
"""

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import numbers
import os
import sys
import traceback
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from controlfoley._errorbase import ConfigError, ControlFoleyError

__all__ = [
    "Registry",
    "RegistryError",
    "ArgumentError",
    "TOKENIZERS",
    "BACKBONES",
    "CONTROL_ENCODERS",
    "ALIGNERS",
    "GUIDANCE",
    "VOCODERS",
    "EXTRACTORS",
    "MEL_FRONTENDS",
    "PRESETS",
    "MASK_SCHEDULES",
    "RECIPES",
    "ALL_REGISTRIES",
    "PLUGIN_ENV",
    "PLUGIN_GROUP",
    "PluginError",
    "load_plugins",
]

PLUGIN_ENV = "CONTROLFOLEY_PLUGINS"  # comma-separated module names or .py paths
PLUGIN_GROUP = "controlfoley.plugins"  # entry-point group of installed packages

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
    "controlfoley.sampling",
    "controlfoley.data.extractors",
    "controlfoley.data.real_extractors",
    "controlfoley.data.clap",
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
    from importlib.metadata import entry_points  # here, not at import: it is half of `import controlfoley`'s time

    try:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)
        for ep in entry_points(group=PLUGIN_GROUP):
            _import_plugin(ep.value, f"entry point {ep.name!r} of group {PLUGIN_GROUP!r}")
        load_plugins(*_env_plugins(), source=f"the {PLUGIN_ENV} environment variable")
    except BaseException:
        _builtins_loaded = False
        raise


class PluginError(ControlFoleyError, ImportError):
    """A plugin module (one that registers user parts) could not be imported."""


def _env_plugins() -> list[str]:
    return [p.strip() for p in os.environ.get(PLUGIN_ENV, "").split(",") if p.strip()]


PLUGIN_MODULE_PREFIX = "controlfoley_plugin_"  # the module name a plugin imported from its path gets


def load_plugins(*specs: str, source: str = "load_plugins") -> list[str]:
    """Import the modules that register user parts: each spec is a module name (`my_pkg.parts`,
    importable from sys.path) or a path to a `.py` file. A module already imported is not run
    again. Returns the module names; raises PluginError naming the spec and the fix."""
    _load_builtins()  # built-ins first, so that a plugin's override=True lands on top of them
    return [_import_plugin(spec, source) for spec in specs]


def _loaded_from(path: Path) -> str | None:
    """The name of an imported module whose source is `path` (a plugin also imported by name)."""
    for name, module in list(sys.modules.items()):
        f = getattr(module, "__file__", None)
        if f and not name.startswith("__") and Path(f).resolve() == path:
            return name
    return None


def plugin_path(spec: str) -> Path | None:
    """The file a plugin spec names (a `.py` or a path, `~` expanded, made absolute), or None for a
    module name."""
    spec = spec.strip()
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        return Path(spec).expanduser().resolve()
    return None


def _import_plugin(spec: str, source: str) -> str:
    spec = spec.strip()
    path = plugin_path(spec)
    if path is not None:
        if not path.is_file():
            raise PluginError(f"plugin {spec!r} (from {source}) is not a file; give a .py path or an importable module name")
        loaded = _loaded_from(path)
        if loaded is not None:  # already imported (by path, or by its module name): not run again
            return loaded
        name = PLUGIN_MODULE_PREFIX + "".join(c if c.isalnum() else "_" for c in str(path))
        loader_spec = importlib.util.spec_from_file_location(name, path)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        folder = str(path.parent)
        added = folder not in sys.path
        if added:  # its own folder, as `python FILE.py` has it: a module beside it imports (`import helpers`)
            sys.path.insert(0, folder)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise PluginError(f"plugin file {str(path)!r} (from {source}) failed to import{_where(e)}: {type(e).__name__}: {e}") from e
        finally:
            if added and folder in sys.path:
                sys.path.remove(folder)
        return name
    module_name = spec.split(":")[0]  # entry points may name an attribute: "pkg.mod:obj"
    try:
        importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(
            f"plugin module {module_name!r} (from {source}) cannot be imported: {e}. Install it, add its folder "
            "to PYTHONPATH, or give the path of its .py file"
        ) from e
    except Exception as e:
        raise PluginError(f"plugin module {module_name!r} (from {source}) failed to import{_where(e)}: {type(e).__name__}: {e}") from e
    return module_name


def _where(e: BaseException) -> str:
    """" at FILE:LINE" of the innermost frame outside Python's import machinery (the failing line)."""
    from controlfoley.errors import _is_wrapper  # (imported late: controlfoley.errors imports this module)

    frames = [
        f for f in traceback.extract_tb(e.__traceback__)
        if "importlib" not in f.filename and not f.filename.startswith("<frozen") and f.filename != __file__ and not _is_wrapper(f.filename)
    ]  # fmt: skip  (a duplicate name is raised in this file, maybe under type-check wrappers: the plugin's line is meant)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


class RegistryError(ControlFoleyError, KeyError):
    """Unknown or duplicate registry name, or bad builder arguments. The message lists what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it plainly
        return str(self.args[0]) if self.args else ""


class ArgumentError(RegistryError, ConfigError):
    """A builder argument that is unknown, missing or of the wrong type: a setting the part refuses,
    so a ConfigError (ValueError), and a RegistryError (KeyError) as before."""


class Registry(Generic[T]):
    """A named collection of builders for one kind of part.

    `modules`: this registry's own built-in modules, imported on its first lookup (after the shared
    ones): entries that other lookups need not load (the training recipes). `check(name, entry)`:
    raises a RegistryError naming what is wrong when `entry` cannot be registered under `name`
    (instead of the default check, that it is callable)."""

    def __init__(self, kind: str, attr: str, *, modules: tuple[str, ...] = (), check: Callable[[str, Any], None] | None = None) -> None:
        self.kind = kind
        self.attr = attr  # the name users import, for error messages
        self._entries: dict[str, Callable[..., T]] = {}
        self._modules = tuple(modules)
        self._modules_loaded = not self._modules
        self._check = check

    def _load(self) -> None:
        """The built-in entries (and the plugins of the environment) before any lookup."""
        _load_builtins()
        if self._modules_loaded:
            return
        self._modules_loaded = True  # set first: the modules register (and may look up) while they import
        try:
            for mod in self._modules:
                importlib.import_module(mod)
        except BaseException:
            self._modules_loaded = False
            raise

    # -- registration ------------------------------------------------------------------------
    def register(self, name: str, *, override: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering `fn` under `name`. A second registration of a name is an error
        unless `override=True` (which is how a user deliberately replaces a built-in) or it is the
        same definition again (same function name, file and line: a re-run notebook cell)."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")

        if override:
            self._load()  # an override replaces the built-in, which must be registered first

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if self._check is not None:
                try:
                    self._check(name, fn)
                except RegistryError as e:  # raised again here: a plugin's import error names its own line (`_where`)
                    raise type(e)(*e.args) from None
            elif not callable(fn):
                raise RegistryError(f"{self.kind} {name!r}: register a builder (a function or class returning the part), got {type(fn).__name__} {fn!r}")
            if not str(getattr(fn, "__module__", "")).startswith("controlfoley."):
                # a user part: the built-ins first, so a name they hold is refused here, named; before,
                # the user's part took the name and the built-in's own registration then failed inside
                # every later build_model, blaming the library. (A built-in registering itself while
                # its module imports must not load the others: that import would be circular.)
                self._load()
            if name in self._entries and not override and not _same_definition(self._entries[name], fn):
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
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {', '.join(self.names()) or '(none)'}. "
                f"Register your own with @controlfoley.{self.attr}.register(name); on the command line, load the "
                f"module that registers it with `controlfoley --plugin my_parts.py ...` (or {PLUGIN_ENV}=my_parts.py)."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style wildcard (`"*_tiny"`)."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def signature(self, name: str) -> inspect.Signature:
        """Entry `name`'s builder signature, string annotations evaluated where they can be."""
        return _signature(self.get(name))

    def accepted_args(self, name: str) -> dict[str, inspect.Parameter]:
        return _keyword_args(_signature(self.get(name)))

    def takes(self, name: str, arg: str) -> bool:
        """Whether entry `name`'s builder takes keyword `arg`: by name, or through **kwargs."""
        return arg in self.accepted_args(name) or any(p.kind == p.VAR_KEYWORD for p in self.signature(name).parameters.values())

    def check_args(self, name: str, kwargs: Mapping[str, Any], wired: Collection[str] = ()) -> None:
        """What `build` checks before it calls the builder, without building: an unknown or mistyped
        argument is an ArgumentError naming it (missing ones are not checked here: build_model fills
        some in from the other parts). For a config that is written, not built (--print-config)."""
        self._checked(name, dict(kwargs), wired, missing=False)

    def build(self, name: str, wired: Collection[str] = (), /, **kwargs: Any) -> T:
        """Build entry `name` with keyword arguments; an unknown, missing or mistyped argument is an
        ArgumentError naming it. `wired`: arguments the caller fills in from other parts (build_model's
        n_mels, grid, ...), left out of the settings the error lists as accepted."""
        return self.get(name)(**self._checked(name, kwargs, wired, missing=True))

    def _checked(self, name: str, kwargs: dict[str, Any], wired: Collection[str], *, missing: bool) -> dict[str, Any]:
        fn = self.get(name)
        sig = _signature(fn)
        takes_var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        if not takes_var_kw:
            accepted = _keyword_args(sig)
            bad = sorted(set(kwargs) - set(accepted))
            if bad:
                settable = [k for k in accepted if k not in wired]
                close = {b: difflib.get_close_matches(b, settable, n=1) for b in bad}
                hint = "; ".join(f"{b!r}: did you mean {c[0]!r}?" for b, c in close.items() if c)
                filled = f" ({', '.join(k for k in accepted if k in wired)} filled in from the other parts)" if len(settable) < len(accepted) else ""
                raise ArgumentError(
                    f"{self.kind} {name!r} got unknown argument(s) {bad}{' (' + hint + ')' if hint else ''}. "
                    f"It accepts: {', '.join(settable) or '(none)'}{filled}"
                )
            absent = [k for k, p in accepted.items() if p.default is p.empty and k not in kwargs]
            if absent and missing:
                raise ArgumentError(f"{self.kind} {name!r} is missing required argument(s) {absent}")
            for k, v in list(kwargs.items()):
                want = simple_types(accepted[k].annotation)
                if want is not None and not is_a(v, want):
                    names = " or ".join(sorted(t.__name__ if t is not type(None) else "None" for t in want))
                    raise ArgumentError(f"{self.kind} {name!r}: {k}={v!r} must be {names} (the annotation of its builder)")
                if want is not None and float in want and int not in want and isinstance(v, numbers.Integral) and not isinstance(v, bool):
                    kwargs[k] = float(v)  # `scale=5` from a command line or JSON: the builder gets the float it declares
        return kwargs

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The builder's signature with string annotations (a plugin written with `from __future__ import
    annotations`) evaluated where they can be, so their types are checked and converted too."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001  (a name only imported under TYPE_CHECKING, ...): the annotations as written
        return inspect.signature(fn)


def _keyword_args(sig: inspect.Signature) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


_SIMPLE = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}


def simple_types(annotation: Any) -> tuple[type, ...] | None:
    """The types of an annotation made only of int, float, str, bool and None (also as strings,
    e.g. under `from __future__ import annotations`); None for anything else (left unchecked)."""
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
        return tuple(_SIMPLE[p] for p in parts) if all(p in _SIMPLE for p in parts) else None
    if annotation in _SIMPLE.values() or annotation is None:
        return (type(None),) if annotation is None else (annotation,)
    args = getattr(annotation, "__args__", None)
    if type(annotation) is types.UnionType or getattr(annotation, "__origin__", None) is typing.Union:
        return tuple(args) if args and all(a in _SIMPLE.values() for a in args) else None
    return None


def is_a(value: Any, want: tuple[type, ...]) -> bool:
    """Lenient where Python is: paths for str, numpy numbers for int/float, an int for a float."""
    if isinstance(value, bool):
        return bool in want
    if isinstance(value, numbers.Integral):
        return int in want or float in want
    if isinstance(value, numbers.Real):
        return float in want
    if isinstance(value, os.PathLike):
        return str in want
    return isinstance(value, want)


def _same_definition(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """One builder defined twice at the same place (a notebook cell run again, a module imported
    under two names): registering it again replaces it instead of failing."""
    if a is b:
        return True
    if isinstance(a, type) and isinstance(b, type):  # a class (a recipe): its source file and line
        site_a, site_b = _class_site(a), _class_site(b)
        return site_a is not None and site_a == site_b and a.__qualname__ == b.__qualname__
    ca, cb = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        ca is not None and cb is not None and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and ca.co_filename == cb.co_filename and ca.co_firstlineno == cb.co_firstlineno
    )  # fmt: skip


def _class_site(cls: type) -> tuple[str, int] | None:
    try:
        return str(Path(inspect.getsourcefile(cls) or "").resolve()), inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):  # defined where no source is kept (an interactive prompt)
        return None


def _qualname(fn: Callable[..., Any]) -> str:
    """Where a builder is defined, for messages: module.name, or for a plugin file loaded by path
    (its module name is made up) or code with no module (exec, a notebook cell), its file."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    code = getattr(fn, "__code__", None)  # a function's; a class has none, its module's file stands in
    file = code.co_filename if code is not None else getattr(sys.modules.get(str(module)), "__file__", None)
    if (module is None or str(module).startswith("controlfoley_plugin_")) and file:
        return f"{name} in {file}"
    return f"{module or '?'}.{name}"


TOKENIZERS: Registry[Any] = Registry("tokenizer", "TOKENIZERS")
BACKBONES: Registry[Any] = Registry("backbone", "BACKBONES")
CONTROL_ENCODERS: Registry[Any] = Registry("control_encoder", "CONTROL_ENCODERS")
ALIGNERS: Registry[Any] = Registry("aligner", "ALIGNERS")
GUIDANCE: Registry[Any] = Registry("guidance", "GUIDANCE")
VOCODERS: Registry[Any] = Registry("vocoder", "VOCODERS")
EXTRACTORS: Registry[Any] = Registry("extractor", "EXTRACTORS")
MEL_FRONTENDS: Registry[Any] = Registry("mel_frontend", "MEL_FRONTENDS")
PRESETS: Registry[Any] = Registry("preset", "PRESETS")
# MaskGIT mask schedules: entries are the functions gamma(r) themselves (a float or a Tensor of
# progress r in [0, 1] -> the fraction of tokens still masked), not builders (controlfoley.sampling)
MASK_SCHEDULES: Registry[Any] = Registry("mask_schedule", "MASK_SCHEDULES")


def _check_recipe(name: str, entry: Any) -> None:
    from controlfoley.train.recipes import check_recipe  # (here: the recipes import torch)

    check_recipe(name, entry)


# Training recipes: entries are `controlfoley.train.recipes.Recipe` subclasses (checked when
# registered), not builders; their module loads on the first lookup of this registry only
RECIPES: Registry[Any] = Registry("recipe", "RECIPES", modules=("controlfoley.train.recipes",), check=_check_recipe)

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    r.kind: r
    for r in (TOKENIZERS, BACKBONES, CONTROL_ENCODERS, ALIGNERS, GUIDANCE, VOCODERS, EXTRACTORS, MEL_FRONTENDS, PRESETS, MASK_SCHEDULES, RECIPES)
}
