"""The base of every error the library raises on purpose (`controlfoley.errors` re-exports it).

Its own module so that the lowest-level modules (`_registry`, `config`) can derive their errors
from it without importing `controlfoley.errors`, which imports them."""

__all__ = ["ControlFoleyError", "ConfigError"]


class ControlFoleyError(Exception):
    """Base of the library's own errors: `except ControlFoleyError` catches every mistake the
    library names (config, registry, shape, media, checkpoint, data, training). Each also derives
    from the builtin it refines (ValueError, KeyError, RuntimeError, ImportError), so older `except` clauses hold."""


class ConfigError(ControlFoleyError, ValueError):
    """A configuration that cannot be built; the message says which field and how to fix it.
    (Defined here so that the registries can raise it; `controlfoley.config` and `controlfoley`
    export it.)"""
