"""The datasets of a run, opened and checked before its first step (used by `loop.Trainer`).

- `open_datasets(cfg, recipe, model)`: --data, and --val-data or a fixed pseudo-random
  `val_fraction` of --data (the split does not change with the training seed); a file given where
  a dataset folder belongs is named as such; each dataset is checked against the recipe and model.
- `check_same_data(cfg, run_root, train_ds, val_ds, resume)`: the datasets' fingerprints (index
  contents, not paths: data may move, not change); on resume, data that changed is refused.
  Returns the record to write as data.json once every check passed (None: keep the run's).
- `check_batch_fits(cfg, train_ds, val_ds)`: one global batch must fit in the training clips; the
  error says how many the validation split took.
- `check_batch_split(cfg, world_size, resuming)`: the global batch must split evenly over the
  processes and micro-batches; on resume (where --batch-size is the run's) the error names the
  --grad-accum values, or else the process counts, that split it.
"""

import json
import warnings
from pathlib import Path
from typing import Any

from controlfoley.data.dataset import ShardDataset, epoch_permutation
from controlfoley.errors import DataError, TrainingError, user_stacklevel
from controlfoley.model import SpecMaskFoley
from controlfoley.train.config import TrainConfig
from controlfoley.train.recipes import Recipe

__all__ = ["open_datasets", "check_same_data", "check_batch_fits", "check_batch_split", "warn_shared_clips", "DATA_RECORD"]

VAL_SPLIT_SEED = 20_240_917  # fixed, so the held-out clips do not change with the training seed
DATA_RECORD = "data.json"


def open_datasets(cfg: TrainConfig, recipe: Recipe, model: SpecMaskFoley) -> tuple[ShardDataset, ShardDataset | None]:
    full = _open(cfg, recipe, model, cfg.data, "--data")
    if cfg.val_data is not None:  # validation reads what training reads
        return full, _open(cfg, recipe, model, cfg.val_data, "--val-data").with_keys(full.keys)
    if cfg.val_fraction <= 0:
        return full, None
    order = epoch_permutation(len(full), VAL_SPLIT_SEED, 0).tolist()
    n_val = max(1, int(len(full) * cfg.val_fraction))
    return full.subset(sorted(order[n_val:])), full.subset(sorted(order[:n_val]))


def warn_shared_clips(train_ds: ShardDataset, val_ds: ShardDataset) -> None:
    """Warn when --val-data holds clips of --data, whose validation loss measures memorisation. Two
    datasets of tokens from one tokenizer are compared by content (identical tokens: the same audio,
    whatever the clips' names: lists in two folders can both say `a.mp4` for different videos);
    others by clip id (the path as the list wrote it)."""
    t_spec, v_spec = train_ds.index.features.get("tokens"), val_ds.index.features.get("tokens")
    by_audio = t_spec is not None and t_spec == v_spec and train_ds.info.get("tokenizer") == val_ds.info.get("tokenizer")
    train_ids, val_ids = train_ds.clip_ids(), val_ds.clip_ids()
    train_keys = train_ds.row_digests("tokens") if by_audio else train_ids
    val_keys = val_ds.row_digests("tokens") if by_audio else val_ids
    first = dict(zip(reversed(train_keys), reversed(train_ids)))  # key -> the first train clip with it
    shared = [i for i, k in enumerate(val_keys) if k in first]
    if not shared:
        return
    if by_audio:
        how, shown = "the same audio (identical tokens) as clips of --data", [f"{val_ids[i]!r} = {first[val_keys[i]]!r}" for i in shared[:3]]
    else:
        how, shown = "the same clip ids (paths as the lists wrote them) as clips of --data", [repr(val_ids[i]) for i in shared[:3]]
    warnings.warn(
        f"--val-data {val_ds.root}: {len(shared)} of its {len(val_ds)} clips have {how}, e.g. {', '.join(shown)}"
        f"{f' and {len(shared) - 3} more' if len(shared) > 3 else ''}. Validation on clips the model trains on measures memorisation, not how it does "
        f"on new videos; extract the validation videos from a list that leaves out the training ones (or drop --val-data "
        f"for a --val-fraction split of --data {train_ds.root})",
        stacklevel=user_stacklevel(),
    )


def _open(cfg: TrainConfig, recipe: Recipe, model: SpecMaskFoley, root: str, flag: str) -> ShardDataset:
    path = Path(root)
    if path.is_file():
        which = f"; give its folder: {flag} {path.parent}" if path.name == "index.json" else ""
        raise DataError(
            f"{flag} {root} is a file, not a dataset folder{which}. {flag} names a dataset folder written by "
            "`controlfoley extract --out FOLDER` (the folder that holds index.json and the shards)"
        )
    ds = ShardDataset(root, verify=cfg.verify_data)
    recipe.check_data(model, ds)
    return ds.with_keys(recipe.needed_keys(model, ds))


def check_same_data(cfg: TrainConfig, run_root: Path, train_ds: ShardDataset, val_ds: ShardDataset | None, resume: bool) -> dict[str, Any] | None:
    """The sample order, the validation split and the schedule all depend on the data: on resume
    refuse data that changed since the run started."""
    path = run_root / DATA_RECORD
    now = {"data": train_ds.index.fingerprint()}  # views share their dataset's loaded index
    if cfg.val_data is not None and val_ds is not None:
        now["val_data"] = val_ds.index.fingerprint()
    if resume and path.is_file():
        then = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        if changed:
            what = ", ".join(f"--{k.replace('_', '-')} (fingerprint {then.get(k)} when the run started, {now.get(k)} now)" for k in changed)
            raise TrainingError(
                f"--resume: the data is not the data this run trained on: {what}. Point the flags at the original "
                f"dataset (it may have moved; its contents may not change), or start a new --out. To continue on "
                f"the new data on purpose, delete {path}."
            )
        return None
    return now


def check_batch_fits(cfg: TrainConfig, train_ds: ShardDataset, val_ds: ShardDataset | None) -> None:
    n = len(train_ds)
    if n >= cfg.batch_size:
        return
    if cfg.val_data is None and val_ds is not None:
        n_val = len(val_ds)
        raise DataError(
            f"dataset {cfg.data} has {n + n_val} clips and --val-fraction {cfg.val_fraction} holds {n_val} of them out for "
            f"validation, which leaves {n} to train on, fewer than one global batch of {cfg.batch_size}; lower --val-fraction "
            "(or give a separate --val-data), lower --batch-size, or add data"
        )
    raise DataError(f"dataset {cfg.data} has {n} clips, fewer than one global batch of {cfg.batch_size}; lower --batch-size or add data")


def check_batch_split(cfg: TrainConfig, world_size: int, resuming: bool) -> None:
    """A DataError unless the global batch (`batch_size`) splits into `world_size` processes x
    `grad_accum` micro-batches of equal size. A resumed run keeps its batch size (the schedule and
    the data order depend on it) but may change both factors: the error names those that fit."""
    b, a, w = cfg.batch_size, cfg.grad_accum, world_size
    if b % (w * a) == 0:
        return
    procs = "process" if w == 1 else "processes"
    if not resuming:
        raise DataError(
            f"--batch-size {b} (the global batch: all processes and micro-batches together) does not split over {w} {procs} x "
            f"--grad-accum {a} = {w * a}; change --batch-size or --grad-accum (or the number of processes)"
        )
    fits = [k for k in range(1, b // w + 1) if b % (w * k) == 0] if b % w == 0 else []
    if fits:
        shown = ", ".join(str(k) for k in fits[:6]) + (", ..." if len(fits) > 6 else "")
        fix = f"resume with --grad-accum {shown} (a larger one: smaller micro-batches, less memory), or another number of processes"
    else:
        counts = [n for n in range(1, b + 1) if b % n == 0]
        fix = f"no --grad-accum does with {w} {procs}: resume with a number of processes that divides {b} ({', '.join(map(str, counts[:8]))}{', ...' if len(counts) > 8 else ''})"
    raise DataError(
        f"--resume: this run's global batch of {b} clips (--batch-size, fixed for the run) does not split over {w} {procs} x "
        f"--grad-accum {a} = {w * a}; {fix}. The steps stay the same: the data order and random masks follow the step, not the split"
    )
