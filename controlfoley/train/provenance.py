"""Where a dataset's tokens came from, against the tokenizer a backbone or ControlNet run holds.

`controlfoley extract` records in index.json's info `tokenizer`: the resolved path of the tokenizer
checkpoint it was given (--tokenizer: a file, checkpoint folder or run folder; for the name of a
preset that ships weights, `train.checkpoints.shipped_preset`, the path of those weights, with the name in
`tokenizer_preset`), else of the weights file the preset's tokenizer is built from (an official
SpecVQGAN codebook), else null: the tokens came from an untrained tokenizer. Older extractions
recorded a preset name as that name under the folder they ran in (no such path): such a record,
like a `tokenizer_preset` one whose weights file is gone (a moved installation), is read as the
preset's shipped weights. A model trained on tokens decodes them with its own tokenizer, so
training on an untrained tokenizer's tokens, or on another tokenizer's, gives a model whose output
is noise, and nothing fails on the way. `warn_token_provenance` says so, once per run
(`TokenProvenanceWarning`, a UserWarning; a warning, since tests and smoke runs do this on purpose).

The run's tokenizer: --init when it loads the tokenizer, else the preset's weights file, else random.
Two sources are the same tokenizer when their paths meet: the path as given, the model file it
resolves to, and, for a run that loaded its tokenizer (config.json: --init with `tokenizer` in
--init-parts, not the tokenizer recipe) or built it from a weights file, where that came from, and
so on back; else when both model files hold equal tokenizer tensors. A path the index records that
no longer exists can only be compared by path, and the warning says so. A dataset whose index
records no `tokenizer` at all (written by ShardWriter directly, as the tests do) is not checked.

`plugin_code(recipe, model_config)` names, for messages about a run's plugin files, what of the run
comes from outside the library: its recipe, its model's registered parts (kind and name), or both.
"""

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from controlfoley.config import ModelConfig
from controlfoley.errors import ControlFoleyError
from controlfoley.train.config import known_base

__all__ = ["TokenProvenanceWarning", "warn_token_provenance", "token_provenance_problems", "same_token_source", "TOKEN_SOURCE_KEYS", "plugin_code"]

_MAX_HOPS = 8  # runs initialised from runs: a chain this long is a loop


class TokenProvenanceWarning(UserWarning):
    """A backbone or ControlNet run trains on tokens of an untrained or another tokenizer."""


def warn_token_provenance(
    cfg: Any, model_config: ModelConfig, datasets: Iterable[Any], *, stacklevel: int = 2, resumed_from: Path | None = None
) -> None:
    """One warning naming every dataset whose tokens do not come from the run's tokenizer.
    `resumed_from`: the checkpoint a resumed run continues from, which holds the tokenizer it trains
    with (compared where the run's recorded --init is not found from here, e.g. a relative path
    resumed from another folder)."""
    seen, problems = set(), []
    for ds in datasets:
        if ds is None or ds.root in seen:
            continue
        seen.add(ds.root)
        problems += token_provenance_problems(cfg, model_config, ds.root, ds.info, resumed_from=resumed_from)
    if problems:
        warnings.warn(" Also: ".join(problems), TokenProvenanceWarning, stacklevel=stacklevel + 1)


def token_provenance_problems(
    cfg: Any, model_config: ModelConfig, root: Path, info: Mapping[str, Any], *, resumed_from: Path | None = None
) -> list[str]:
    """What is wrong with where dataset `root`'s tokens came from, for run config `cfg` (empty: nothing)."""
    if "tokenizer" not in info:
        return []
    (made_by, preset), mine = _recorded(info), _run_tokenizer(cfg, model_config)
    if mine is not None and resumed_from is not None and _model_file(Path(mine)) is None:
        mine = str(resumed_from)  # its --init as recorded is not found from here: the checkpoint holds the tokenizer it loaded
    extract = "`controlfoley extract --tokenizer TOKENIZER_RUN ...` (a run of the tokenizer recipe)"
    if made_by is None:
        also = "" if mine is None else f", not the tokenizer this run loads from {mine}"
        return [
            f"dataset {root}: its tokens came from an untrained tokenizer (its index.json records \"tokenizer\": null: it was "
            f"extracted without --tokenizer{also}), so this {cfg.recipe} run learns codes that decode to noise. Re-extract it "
            f"with {extract} and train with --init TOKENIZER_RUN."
        ]
    origin = f"in {made_by}" if preset is None else f"of preset {preset} (its shipped weights, {made_by})"
    named = made_by if preset is None else preset  # what --init takes for it
    init_fix = f"--init {named}" if known_base(cfg.recipe) == "backbone" else f"--init BACKBONE_RUN, a backbone run trained on these tokens (its tokenizer from {named})"
    if mine is None or _never_trained(mine):
        why = "no --init that loads a tokenizer" if mine is None else f"{mine} records its tokenizer as never trained"
        return [
            f"dataset {root}: its tokens came from the tokenizer {origin}, but this run's tokenizer is random ({why}) "
            f"and its model.safetensors will hold that random tokenizer, which decodes the tokens to noise. Train with {init_fix}."
        ]
    same, how = _same_tokenizer(mine, made_by)
    if same:
        return []
    return [
        f"dataset {root}: its tokens came from the tokenizer {origin}, but this run's tokenizer comes from {mine} "
        f"({how}); a model decodes tokens only with the tokenizer that made them. Train with {init_fix}, or re-extract "
        f"the dataset with `controlfoley extract --tokenizer {mine} ...`."
    ]


TOKEN_SOURCE_KEYS = frozenset({"tokenizer", "tokenizer_preset"})  # the keys of an extraction record that say where its tokens came from


def same_token_source(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two extraction records (index.json infos) name the same tokenizer weights: equal
    records, or a shipped preset recorded the old way (its name as a path under the folder the
    extraction ran in) and the new (its weights file, with `tokenizer_preset`)."""
    if "tokenizer" not in a or "tokenizer" not in b:
        return "tokenizer" not in a and "tokenizer" not in b
    return _recorded(a) == _recorded(b)


def _recorded(info: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the path a dataset's tokens are recorded to come from, the preset whose shipped weights
    those are or None); None, None: an untrained tokenizer."""
    from controlfoley.presets import PRETRAINED, pretrained_path

    made_by = info["tokenizer"]
    if made_by is None:
        return None, None
    made_by, preset = str(made_by), info.get("tokenizer_preset")
    if not (isinstance(preset, str) and preset in PRETRAINED):
        old = Path(made_by)  # an older extraction's `--tokenizer PRESET`: PRESET under the folder it ran in
        preset = old.name if old.name in PRETRAINED and not old.exists() else None
    if preset is not None and _model_file(Path(made_by)) is None:  # that record, or the weights moved
        shipped = pretrained_path(preset)
        made_by = made_by if shipped is None else str(shipped.resolve())
    return made_by, preset


def _run_tokenizer(cfg: Any, model_config: ModelConfig) -> str | None:
    """Where this run's tokenizer weights come from; None: random."""
    from controlfoley.builder import weight_file

    if cfg.init is not None and "tokenizer" in cfg.init_parts:
        return str(cfg.init)
    source = weight_file(model_config, "tokenizer")
    return None if source is None else str(source)


def _never_trained(source: str) -> bool:
    """A controlfoley checkpoint that records its trained parts, without the tokenizer."""
    from controlfoley.checkpoint import read_metadata, trained_parts

    model = _model_file(Path(source))
    try:
        trained = None if model is None else trained_parts(read_metadata(model))
    except (ControlFoleyError, ValueError, OSError):
        return False
    return trained is not None and "tokenizer" not in trained


def _same_tokenizer(a: str, b: str) -> tuple[bool, str]:
    """(same?, how it was decided: for the warning)."""
    if _origins(Path(a)) & _origins(Path(b)):
        return True, "same path"
    fa, fb = _model_file(Path(a)), _model_file(Path(b))
    if fa is None or fb is None:
        gone = b if fb is None else a
        return False, f"compared by path only: {gone} no longer holds a model, so the weights could not be compared"
    if fa.suffix == ".safetensors" and fb.suffix == ".safetensors" and _equal_tokenizers(fa, fb):
        return True, "equal weights"
    return False, "other paths, and other tokenizer weights"


def _origins(path: Path, hops: int = 0) -> set[Path]:
    """Paths naming the tokenizer `path` holds: itself, its model file, and where a run got it."""
    out = {path.expanduser().resolve()}
    model = _model_file(path)
    if model is None or hops >= _MAX_HOPS:
        return out
    out.add(model)
    cfg = _run_config(model)
    if cfg is not None and known_base(cfg.get("recipe")) != "tokenizer":  # a tokenizer run's tokenizer is its own
        if cfg.get("init") and "tokenizer" in (cfg.get("init_parts") or ()):
            out |= _origins(Path(cfg["init"]), hops + 1)
        else:
            built = _built_from(model)
            if built is not None:
                out |= _origins(Path(built), hops + 1)
    return out


def _model_file(path: Path) -> Path | None:
    from controlfoley.train.checkpoints import resolve_model_file

    try:
        return resolve_model_file(path.expanduser()).resolve()
    except (ControlFoleyError, OSError):
        return None


def _run_config(model: Path) -> dict[str, Any] | None:
    """config.json of the run holding `model` (RUN/model.safetensors or RUN/checkpoints/step-N/model.safetensors)."""
    from controlfoley.train.checkpoints import RunDir

    for run in (RunDir(model.parent), RunDir(model.parent.parent.parent)):
        if run.config_path.is_file() and run.ckpt_root.is_dir():
            try:
                cfg = json.loads(run.config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return cfg if isinstance(cfg, dict) else None
    return None


def _built_from(model: Path) -> str | None:
    """The weights file a checkpoint's tokenizer was built from (its saved model config names it)."""
    from controlfoley.builder import weight_file
    from controlfoley.checkpoint import config_from_metadata, read_metadata

    try:
        source = weight_file(config_from_metadata(read_metadata(model), model), "tokenizer")
    except (ControlFoleyError, ValueError, OSError):
        return None
    return None if source is None else str(source)


def _equal_tokenizers(a: Path, b: Path) -> bool:
    """Both checkpoints hold the same `tokenizer.*` tensors (read alone, memory-mapped)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
            keys = sorted(k for k in fa.keys() if k.startswith("tokenizer."))
            if not keys or keys != sorted(k for k in fb.keys() if k.startswith("tokenizer.")):
                return False
            return all(_equal(fa.get_tensor(k), fb.get_tensor(k)) for k in keys)
    except (SafetensorError, OSError, RuntimeError):  # unreadable: not comparable
        return False


def _equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def plugin_code(recipe: str, model_config: ModelConfig | None = None) -> str:
    """What of a run the plugin code loaded now provides, for messages: "recipe 'x'", "guidance
    'y'" (a part of `model_config` registered outside the library), or both joined by "and";
    "recipe 'x'" when nothing does (the library's own code)."""
    from controlfoley.train.config import recipe_plugins, user_parts

    what = [f"recipe {recipe!r}"] if recipe_plugins(recipe) else []
    what += [f"{kind} {name!r}" for kind, name, _ in (user_parts(model_config) if model_config is not None else [])]
    return " and ".join(what) or f"recipe {recipe!r}"
