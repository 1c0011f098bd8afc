"""Shape-annotated tensor aliases and the runtime type-checking switch.

Dimension names used everywhere: b batch, f frequency tokens, t time tokens or frames,
l = f*t tokens, d model width, v vocabulary, m mel bins, n mel frames, s samples, c condition width.

Runtime checking (jaxtyping + beartype) is on under pytest (see `addopts` in pyproject.toml) and
opt-in elsewhere with `CONTROLFOLEY_TYPECHECK=1`, which `controlfoley/__init__.py` reads (without
importing torch) to install jaxtyping's import hook before the package's modules load. Off by default: no wrappers sit in the hot path.
"""

from jaxtyping import Bool, Float, Int, Integer, Shaped
from torch import Tensor

__all__ = ["Bool", "Float", "Int", "Integer", "Shaped", "Tensor", "TYPECHECKER", "install_typecheck_hook"]

# jaxtyping's checker, as the expression it evaluates (also in pyproject.toml's pytest addopts):
# beartype with PEP 484's numeric tower, so an int passes where a float is annotated
# (`generate(cfg_scale=3)`), as static type checkers allow
TYPECHECKER = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"


def install_typecheck_hook() -> None:
    """Install jaxtyping's import hook for controlfoley modules imported after this call."""
    from jaxtyping import install_import_hook

    install_import_hook("controlfoley", TYPECHECKER)
