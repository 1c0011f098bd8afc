"""Reading precomputed datasets (format: `controlfoley.data.shards`, docs/DATA.md) for training.

Features
- `ShardDataset(dir)`: a map-style torch Dataset over all clips of a dataset folder. Shards are
  opened lazily with `safetensors.safe_open` (memory-mapped) and only the rows asked for are read,
  so VGGSound-scale data (~180K clips, Synchformer features ~240 x 768 per clip) never sits in RAM.
  The index is verified when the dataset is opened (`verify=`), so a missing, truncated or corrupt
  shard is a DataError before any training step. `subset(indices)` gives a view (e.g. a held-out split).
- `require_features(ds, {...})`: the per-clip shapes a recipe needs, checked against the index; a
  mismatch (grid or feature width of another preset) is a DataError naming both shapes and the fix.
- `ShardedSampler`: a per-rank batch sampler that is a pure function of (seed, step): global batch
  `step` is a slice of the permutation of epoch `step // steps_per_epoch` (seeded by
  seed * 1_000_003 + epoch: `epoch_permutation`), and rank r takes rows r, r + W, r + 2W, ... of it,
  split into micro-batches.
  The union over ranks is the single-process batch, and resuming at step k needs no saved state.
- `collate`: stacks clips into a batch of tensors, keys unchanged.
"""

import bisect
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset, Sampler

from controlfoley.data.shards import ShardIndex, check_unique_ids, parse_clip_ids
from controlfoley.errors import DataError

__all__ = ["ShardDataset", "ShardedSampler", "collate", "require_features", "epoch_permutation"]

_OPEN_SHARDS = 32  # handles kept open per process; each is one mmap, so this bounds file descriptors


class ShardDataset(Dataset[dict[str, torch.Tensor]]):
    """All clips of a dataset folder; `ds[i]` is a dict of per-clip tensors in their stored dtypes."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keys: Sequence[str] | None = None,
        verify: str = "header",
        indices: Sequence[int] | None = None,
    ) -> None:
        self.index = ShardIndex.load(root)
        self.index.verify(verify)
        self.root = self.index.root
        if self.index.n_clips == 0:
            raise DataError(f"dataset {self.root} holds no clips; re-run `controlfoley extract` with some inputs")
        self.keys = tuple(self.index.features)
        self._starts = [0]
        for s in self.index.shards:
            self._starts.append(self._starts[-1] + s.n_clips)
        self._rows = list(range(self.index.n_clips)) if indices is None else _checked_rows(indices, self.index.n_clips, self.root)
        self._handles: OrderedDict[int, Any] = OrderedDict()
        if keys is not None:
            self.keys = self.with_keys(keys).keys

    @property
    def features(self) -> dict[str, Any]:
        return {k: self.index.features[k] for k in self.keys}

    @property
    def info(self) -> dict[str, Any]:
        return self.index.info

    def __len__(self) -> int:
        return len(self._rows)

    def subset(self, indices: Sequence[int]) -> "ShardDataset":
        """A view on some clips (indices into this view: 0 .. len - 1, no negative ones), sharing no open handles."""
        view = self._view()
        view._rows = [self._rows[i] for i in _checked_rows(indices, len(self), self.root)]
        return view

    def with_keys(self, keys: Sequence[str]) -> "ShardDataset":
        """A view that reads only the features `keys`."""
        missing = sorted(set(keys) - set(self.index.features))
        if missing:
            raise DataError(f"dataset {self.root} lacks feature(s) {missing}; it holds {sorted(self.index.features)}. Extract them first.")
        view = self._view()
        view.keys = tuple(keys)
        return view

    def _view(self) -> "ShardDataset":
        view = object.__new__(ShardDataset)
        view.__dict__.update(self.__dict__)
        view._handles = OrderedDict()
        return view

    def _locate(self, i: int) -> tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip index {i} out of range for a dataset of {len(self)} clips")
        row = self._rows[i]
        shard = bisect.bisect_right(self._starts, row) - 1
        return shard, row - self._starts[shard]

    def _handle(self, shard: int) -> Any:
        h = self._handles.get(shard)
        if h is not None:
            self._handles.move_to_end(shard)
            return h
        path = self.root / self.index.shards[shard].file
        try:
            h = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"cannot open shard {path} ({e}); it is missing or corrupt. Re-extract it.") from e
        self._handles[shard] = h
        if len(self._handles) > _OPEN_SHARDS:
            self._handles.popitem(last=False)
        return h

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        shard, row = self._locate(int(i))
        h = self._handle(shard)
        try:
            item = {k: h.get_slice(k)[row : row + 1][0] for k in self.keys}
        except (SafetensorError, OSError, ValueError) as e:
            path = self.root / self.index.shards[shard].file
            raise DataError(f"cannot read clip {row} of shard {path} ({e}); the shard is corrupt. Re-extract it.") from e
        self._check_values(item, i, shard, row)
        return item

    def _check_values(self, item: dict[str, torch.Tensor], i: int, shard: int, row: int) -> None:
        """Values the writer never stores (it refuses NaN, and tokens come from the codebook): bytes
        changed on disk since, which the default header check cannot see. Named here, with the clip,
        rather than as an index error or a NaN loss deep inside a training step."""
        size = self.info.get("codebook_size")
        for k, v in item.items():
            if k == "tokens" and size is not None and v.numel() and (int(v.min()) < 0 or int(v.max()) >= int(size)):
                bad = f"tokens outside the codebook [0, {int(size)}) (min {int(v.min())}, max {int(v.max())})"
            elif v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad = f"NaN or inf values in feature {k!r}"
            else:
                continue
            path = self.root / self.index.shards[shard].file
            raise DataError(
                f"clip {self.clip_id(i)!r} (row {row} of shard {path}) has {bad}: the shard is corrupt. Find every such shard "
                "with --verify-data sha256, re-extract them, and continue the run with --resume"
            )

    def _shard_ids(self, shard: int) -> list[str]:
        """The clip ids of shard `shard` (its metadata, checked: a corrupt list is a DataError naming the shard)."""
        info = self.index.shards[shard]
        return parse_clip_ids(self._handle(shard).metadata(), self.root / info.file, info.n_clips)

    def clip_ids(self) -> list[str]:
        """The id of every clip of this view, in order (from each shard's metadata: no feature is read)."""
        ids: list[str] = []
        first_shard: dict[str, Path] = {}
        for k, shard in enumerate(self.index.shards):
            stored = self._shard_ids(k)
            check_unique_ids(stored, self.root / shard.file, first_shard)
            ids += stored
        return [ids[r] for r in self._rows]

    def row_digests(self, key: str) -> list[str]:
        """A SHA-256 of each clip's stored feature `key`, in order (one shard's feature read at a
        time): equal digests are equal stored values, e.g. the same audio's tokens."""
        if key not in self.index.features:
            raise DataError(f"dataset {self.root} has no feature {key!r} (it holds {sorted(self.index.features)})")
        digests: list[str] = []
        for k in range(len(self.index.shards)):
            values = self._handle(k).get_tensor(key).contiguous()
            # each row's stored bytes, as uint8 (numpy has no bfloat16): for the other dtypes the very bytes,
            # and so the digests, that hashing the row's numpy array gave
            rows = (values.flatten(1) if values.ndim > 1 else values.unsqueeze(1)).view(torch.uint8)
            digests += [hashlib.sha256(rows[r].numpy().tobytes()).hexdigest() for r in range(rows.shape[0])]
        return [digests[r] for r in self._rows]

    def clip_id(self, i: int) -> str:
        shard, row = self._locate(int(i))
        return self._shard_ids(shard)[row]

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers receive a pickled copy; open safetensors handles cannot be pickled
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state


def _checked_rows(indices: Sequence[int], n: int, root: Path) -> list[int]:
    """`indices` as ints, each in [0, n), else a DataError (no silent wrap of a negative index)."""
    rows = [int(i) for i in indices]
    if rows and not 0 <= min(rows) <= max(rows) < n:
        raise DataError(f"subset indices must lie in [0, {n}) for {root} (got {min(rows)} .. {max(rows)}); give indices of its clips, counted from 0")
    return rows


def require_features(ds: ShardDataset, shapes: Mapping[str, tuple[int, ...] | None], *, optional: Sequence[str] = (), hint: str = "") -> None:
    """Check that `ds` holds each feature with the per-clip shape given (None: any shape).

    Keys in `optional` may be absent. A mismatch is a DataError naming both shapes and `hint`."""
    for key, shape in shapes.items():
        spec = ds.index.features.get(key)
        if spec is None:
            if key in optional:
                continue
            raise DataError(f"dataset {ds.root} has no feature {key!r} (it holds {sorted(ds.index.features)}). {hint}".strip())
        if shape is not None and tuple(spec.shape) != tuple(shape):
            raise DataError(
                f"dataset {ds.root}: feature {key!r} is {list(spec.shape)} per clip but this model needs {list(shape)}. "
                f"It was extracted for another preset or grid. {hint}".strip()
            )


def collate(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not items:
        raise DataError("cannot collate an empty batch")
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The clip order of one epoch: a seeded permutation (identity when not shuffling)."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


class ShardedSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of clip indices) for steps [start_step, stop_step)."""

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        micro_batches: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_step: int = 0,
        stop_step: int | None = None,
    ) -> None:
        if global_batch % (world_size * micro_batches):
            raise DataError(
                f"global batch {global_batch} must be divisible by world size x gradient accumulation "
                f"({world_size} x {micro_batches}); change --batch-size or --grad-accum"
            )
        if n_items < global_batch:
            raise DataError(f"the dataset has {n_items} clips, fewer than one global batch of {global_batch}; lower --batch-size or add data")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.n_items, self.global_batch = n_items, global_batch
        self.world_size, self.rank, self.micro_batches = world_size, rank, micro_batches
        self.seed, self.shuffle = seed, shuffle
        self.start_step, self.stop_step = start_step, stop_step
        self.steps_per_epoch = n_items // global_batch  # the tail of each epoch is dropped, so ranks stay in step
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def micro_size(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batches)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch_indices(self, step: int) -> list[int]:
        """Clip indices of global batch `step`, in row order (row j of the step's plan)."""
        epoch = self.epoch_of(step)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.n_items, self.seed, epoch, self.shuffle))
        k = step % self.steps_per_epoch
        return self._perm[1][k * self.global_batch : (k + 1) * self.global_batch].tolist()

    def rows(self, micro: int) -> list[int]:
        """Rows of the global batch that this rank's micro-batch `micro` holds."""
        local = list(range(self.rank, self.global_batch, self.world_size))
        return local[micro * self.micro_size : (micro + 1) * self.micro_size]

    def micro_batch_indices(self, step: int) -> list[list[int]]:
        batch = self.global_batch_indices(step)
        return [[batch[r] for r in self.rows(m)] for m in range(self.micro_batches)]

    def __iter__(self) -> Iterator[list[int]]:
        if self.stop_step is None:
            raise DataError("ShardedSampler needs stop_step to be iterated")
        for step in range(self.start_step, self.stop_step):
            yield from self.micro_batch_indices(step)

    def __len__(self) -> int:
        stop = self.start_step if self.stop_step is None else self.stop_step
        return max(0, stop - self.start_step) * self.micro_batches
