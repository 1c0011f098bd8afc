"""On-disk format for precomputed training inputs: a folder of safetensors shards plus `index.json`.

Features
- One folder per dataset::

      DIR/index.json                  written last, atomically: a folder without it is unfinished
      DIR/shard-00000.safetensors     N clips, one tensor per feature stacked on dim 0: [N, *shape]
      DIR/shard-00001.safetensors     ...
      DIR/progress.json               while writing: the shards finished so far (removed by close())

- `index.json` (format "controlfoley.shards", version 1)::

      {"format": "controlfoley.shards", "version": 1, "n_clips": 1000,
       "features": {"tokens": {"dtype": "int16", "shape": [5, 53]},
                    "sync": {"dtype": "float16", "shape": [240, 768]}, ...},
       "shards": [{"file": "shard-00000.safetensors", "n_clips": 256, "bytes": 98765, "sha256": "..."}, ...],
       "info": {"preset": "specmaskfoley", "grid": [5, 53], "codebook_size": 1024, ...}}

  Every clip has every feature, with the same per-clip shape. Clip ids live in each shard's
  safetensors metadata (`clip_ids`, a JSON list), so the index stays small at VGGSound scale.
- Feature names the recipes read: `tokens` (int16/int32 [F, T]), `sync` (fp16 [t, ds]), `clip`
  (fp16 [t8, dc]), `clap` (fp32 [c]), `mel` (fp16 [m, n]), `label` (int64 []). Any other name is kept.
- `ShardWriter` buffers clips (features as torch tensors or numpy arrays) and writes each full shard
  atomically (temporary file + rename); floating features are stored as fp16 except `clap` (fp32),
  and a value fp16 cannot hold is a DataError.
  After each shard it records its progress (`progress.json`, atomically), so an interrupted
  extraction continues with `resume=True` (`controlfoley extract --resume`); what it redoes is the
  clips not yet in a finished shard (fewer than `shard_size` plus one tokenizer batch).
- Clip ids are unique in a dataset (they name clips in `skipped.tsv`, in resume's order check and
  in evaluation): `add` refuses an id already added, also one of the shards a resumed writer
  found.
- `ShardIndex.load(dir).verify(level)` checks before training: "size" (every shard exists with its
  recorded byte size), "header" (also parses each safetensors header and checks keys, dtypes and
  shapes against the index), "sha256" (also hashes every byte). Problems raise DataError naming the shard.
- Shards are read lazily with `safetensors.safe_open` (memory-mapped): a dataset never has to fit in RAM.

Reference: safetensors format (https://github.com/huggingface/safetensors), header = 8-byte length + JSON.
"""

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from controlfoley._io import atomic_path, atomic_write_text
from controlfoley.errors import DataError

__all__ = ["FORMAT", "FORMAT_VERSION", "INDEX_FILE", "PROGRESS_FILE", "VERIFY_LEVELS", "FeatureSpec", "ShardInfo", "ShardIndex", "ShardWriter"]

FORMAT = "controlfoley.shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
VERIFY_LEVELS = ("none", "size", "header", "sha256")
FP32_KEYS = frozenset({"clap"})  # small per clip, and cosine geometry of CLAP-like embeddings suffers in fp16

_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# safetensors' own dtype codes, as reported by get_slice(...).get_dtype()
_ST_CODES = {"BOOL": "bool", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "F16": "float16", "BF16": "bfloat16", "F32": "float32"}


@dataclass(frozen=True)
class FeatureSpec:
    """Storage dtype and per-clip shape of one feature."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ShardInfo:
    file: str
    n_clips: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardIndex:
    """The parsed `index.json` of a dataset folder."""

    root: Path
    features: dict[str, FeatureSpec]
    shards: tuple[ShardInfo, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clips(self) -> int:
        return sum(s.n_clips for s in self.shards)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "ShardIndex":
        root = Path(root)
        path = root / INDEX_FILE
        if root.is_file():
            hint = f": pass its folder, {root.parent}" if root.name == INDEX_FILE else ""
            raise DataError(f"{root} is a file, not a dataset folder (what `controlfoley extract --out DIR` writes){hint}")
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}. Create it with `controlfoley extract --out {root} ...`")
        if not path.is_file():
            raise DataError(
                f"{root} has no {INDEX_FILE}: it is not a controlfoley dataset, or its extraction did not finish "
                "(the index is written last). Re-run `controlfoley extract`."
            )
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls._from_dict(root, d)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a valid dataset index ({type(e).__name__}: {e}). Re-run `controlfoley extract`.") from e

    @classmethod
    def _from_dict(cls, root: Path, d: Mapping[str, Any]) -> "ShardIndex":
        if d.get("format") != FORMAT:
            raise DataError(f"{root / INDEX_FILE} has format {d.get('format')!r}, expected {FORMAT!r}")
        if int(d.get("version", -1)) != FORMAT_VERSION:
            raise DataError(f"{root / INDEX_FILE} is format version {d.get('version')}; this controlfoley reads version {FORMAT_VERSION}")
        features = {}
        for k, v in d["features"].items():
            if v["dtype"] not in _DTYPES:
                raise DataError(f"feature {k!r} has unsupported dtype {v['dtype']!r}; supported: {sorted(_DTYPES)}")
            features[str(k)] = FeatureSpec(str(v["dtype"]), tuple(int(x) for x in v["shape"]))
        shards = tuple(ShardInfo(str(s["file"]), int(s["n_clips"]), int(s["bytes"]), str(s["sha256"])) for s in d["shards"])
        index = cls(root, features, shards, dict(d.get("info", {})))
        if int(d.get("n_clips", index.n_clips)) != index.n_clips:
            raise DataError(f"{root / INDEX_FILE}: n_clips {d.get('n_clips')} disagrees with the shard list ({index.n_clips})")
        return index

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n_clips": self.n_clips,
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "shards": [vars(s) for s in self.shards],
            "info": self.info,
        }

    def fingerprint(self) -> str:
        """A digest of what the dataset holds (features, and each shard's clip count and sha256 as
        recorded in the index), independent of where the folder lives."""
        body = {"features": {k: v.to_dict() for k, v in sorted(self.features.items())}, "shards": [[s.n_clips, s.sha256] for s in self.shards]}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    # -- verification --------------------------------------------------------------------------
    def verify(self, level: str = "header") -> None:
        """Check every shard at `level` (see module docstring); raise DataError on the first problem."""
        if level not in VERIFY_LEVELS:
            raise DataError(f"unknown verify level {level!r}; choose one of {VERIFY_LEVELS}")
        if level == "none":
            return
        for shard in self.shards:
            path = self.root / shard.file
            if not path.is_file():
                raise DataError(f"shard {path} listed in {self.root / INDEX_FILE} is missing; restore it or re-run `controlfoley extract`")
            size = path.stat().st_size
            if size != shard.bytes:
                raise DataError(f"shard {path} is {size} bytes but the index records {shard.bytes}: it is truncated or was overwritten. Re-extract it.")
            if level in ("header", "sha256"):
                self._check_header(path, shard)
            if level == "sha256" and _sha256(path) != shard.sha256:
                raise DataError(f"shard {path} fails its sha256 check: its bytes are corrupt. Re-extract it.")

    def _check_header(self, path: Path, shard: ShardInfo) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                layout = {k: (_ST_CODES.get(f.get_slice(k).get_dtype(), "?"), tuple(f.get_slice(k).get_shape())) for k in keys}
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"shard {path} is corrupt: not a readable safetensors file ({e}). Re-extract it.") from e
        if keys != set(self.features):
            raise DataError(f"shard {path} holds features {sorted(keys)}, the index lists {sorted(self.features)}. Re-extract it.")
        for k, spec in self.features.items():
            want = (spec.dtype, (shard.n_clips, *spec.shape))
            if layout[k] != want:
                raise DataError(f"shard {path}: feature {k!r} is {layout[k]}, the index says {want} (dtype, shape). Re-extract it.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def storage_dtype(key: str, value: torch.Tensor) -> torch.dtype:
    """Default on-disk dtype: fp16 for float features (fp32 for `clap`), int16/int32 for tokens."""
    if value.is_floating_point():
        return torch.float32 if key in FP32_KEYS else torch.float16
    if key == "tokens":
        hi = int(value.max()) if value.numel() else 0
        return torch.int16 if hi < 2**15 else torch.int32
    return value.dtype


def _as_tensor(clip_id: str, key: str, value: Any) -> torch.Tensor:
    """A feature as a CPU tensor: tensors are detached, numpy arrays (and numpy scalars) converted."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value))  # a copy: C-contiguous, writable, the caller's array left alone
    raise DataError(
        f"clip {clip_id!r}: feature {key!r} is {type(value).__name__}"
        f"{f' of dtype {value.dtype}' if isinstance(value, (np.ndarray, np.generic)) else ''}, not a tensor; "
        "give torch tensors or numpy arrays of numbers (bool, int or float)"
    )


class ShardWriter:
    """Write clips into shards of `shard_size`; `close()` flushes the last shard and writes the index.

    >>> with ShardWriter("data/train", shard_size=256, info={"preset": "specmaskfoley"}) as w:
    ...     w.add("clip-0001", {"tokens": codes, "sync": sync, "clip": clip, "clap": clap})
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shard_size: int = 256,
        info: Mapping[str, Any] | None = None,
        dtypes: Mapping[str, torch.dtype] | None = None,
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        if shard_size < 1:
            raise DataError(f"shard_size must be >= 1, got {shard_size}")
        if overwrite and resume:
            raise DataError("overwrite and resume exclude each other: overwrite starts the folder again, resume continues it")
        self.root = Path(root)
        if (self.root / INDEX_FILE).exists() and not overwrite:
            done = " (nothing to resume: it is complete)" if resume else ""
            raise DataError(f"{self.root} already holds a dataset ({INDEX_FILE}){done}; choose another folder or pass overwrite=True (--overwrite)")
        progress = self.root / PROGRESS_FILE
        if progress.exists() and not (overwrite or resume):
            raise DataError(
                f"{self.root} holds an interrupted extraction ({PROGRESS_FILE}); pass resume=True (--resume) to continue it, "
                "or overwrite=True (--overwrite) to start again"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / INDEX_FILE).unlink(missing_ok=True)  # an overwritten folder is unfinished until close()
        self.shard_size = shard_size
        self.info = dict(info or {})
        self._dtypes = dict(dtypes or {})
        self.features: dict[str, FeatureSpec] = {}
        self.shards: list[ShardInfo] = []
        self.clip_ids: list[str] = []  # of the clips in finished shards, in order
        self._buffer: list[dict[str, torch.Tensor]] = []
        self._ids: list[str] = []
        self._seen: set[str] = set()  # every id added: finished shards (also those found on resume) and the buffer
        self._closed = False
        if overwrite:
            progress.unlink(missing_ok=True)
        elif resume and progress.exists():
            self._load_progress(progress)
        elif resume:
            warnings.warn(f"{self.root}: no interrupted extraction to resume (no {PROGRESS_FILE}); starting from the first clip", stacklevel=2)

    def _load_progress(self, path: Path) -> None:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            features = {str(k): FeatureSpec(str(v["dtype"]), tuple(int(x) for x in v["shape"])) for k, v in d["features"].items()}
            shards = [ShardInfo(str(s["file"]), int(s["n_clips"]), int(s["bytes"]), str(s["sha256"])) for s in d["shards"]]
            info = dict(d["info"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a valid progress record ({type(e).__name__}: {e}); start again with overwrite=True (--overwrite)") from e
        mine = json.loads(json.dumps(self.info))  # as it reads back (tuples become lists)
        if info != mine:
            diff = sorted(k for k in set(info) | set(mine) if info.get(k) != mine.get(k))
            raise DataError(
                f"cannot resume {self.root}: the interrupted extraction had other settings ({', '.join(diff)} differ); "
                "resume with the same command, or start again with overwrite=True (--overwrite)"
            )
        ids: list[str] = []
        for shard in shards:  # the clip ids live in each shard's header
            f = self.root / shard.file
            try:
                if f.stat().st_size != shard.bytes:
                    raise OSError("size changed")
                with safe_open(str(f), framework="pt") as h:
                    shard_ids = json.loads((h.metadata() or {})["clip_ids"])
            except (OSError, SafetensorError, KeyError, ValueError) as e:
                raise DataError(
                    f"cannot resume {self.root}: shard {f} is missing or changed since it was written ({e}); "
                    "start again with overwrite=True (--overwrite)"
                ) from e
            if len(shard_ids) != shard.n_clips:
                raise DataError(f"cannot resume {self.root}: shard {f} holds {len(shard_ids)} clip ids for {shard.n_clips} clips")
            ids += [str(i) for i in shard_ids]
        self.features, self.shards, self.clip_ids = features, shards, ids
        self._seen = set(ids)

    @property
    def n_clips(self) -> int:
        return sum(s.n_clips for s in self.shards) + len(self._buffer)

    def add(self, clip_id: str, features: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Buffer one clip (features as tensors or numpy arrays); the first clip fixes the feature
        names, dtypes and shapes; an id already added is refused."""
        if self._closed:
            raise DataError("ShardWriter is closed")
        if str(clip_id) in self._seen:
            raise DataError(
                f"clip id {str(clip_id)!r} was already added to {self.root} ({self._where(str(clip_id))}); every clip needs its own id "
                "(ids name clips in skipped.tsv, resume and evaluation): give this clip another id, or leave out the repeated clip"
            )
        clip = {k: _as_tensor(clip_id, k, v) for k, v in features.items()}
        if not self.features:
            self.features = {k: self._spec(k, v) for k, v in clip.items()}
        self._check_clip(clip_id, clip)
        self._buffer.append({k: v.to(self.features[k].torch_dtype) for k, v in clip.items()})
        self._ids.append(str(clip_id))
        self._seen.add(str(clip_id))
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _where(self, clip_id: str) -> str:
        """Where an added clip is: 'clip 3 of shard-00001.safetensors' or 'clip 2 of the shard being filled'."""
        if clip_id in self._ids:
            return f"clip {self._ids.index(clip_id)} of the shard being filled"
        k = self.clip_ids.index(clip_id)
        for shard in self.shards:
            if k < shard.n_clips:
                return f"clip {k} of {shard.file}"
            k -= shard.n_clips
        return "an earlier clip"

    def _spec(self, key: str, value: torch.Tensor) -> FeatureSpec:
        dtype = self._dtypes.get(key) or storage_dtype(key, value)
        if dtype not in _DTYPE_NAMES:
            raise DataError(f"feature {key!r}: dtype {dtype} cannot be stored; use one of {sorted(_DTYPES)}")
        return FeatureSpec(_DTYPE_NAMES[dtype], tuple(value.shape))

    def _check_clip(self, clip_id: str, clip: Mapping[str, torch.Tensor]) -> None:
        if set(clip) != set(self.features):
            raise DataError(
                f"clip {clip_id!r} has features {sorted(clip)}, earlier clips have {sorted(self.features)}; every clip needs the same features"
            )
        for k, v in clip.items():
            spec = self.features[k]
            if tuple(v.shape) != spec.shape:
                raise DataError(
                    f"clip {clip_id!r}: feature {k!r} has shape {list(v.shape)}, earlier clips {list(spec.shape)}; crop or pad features to a fixed length"
                )
            if v.is_floating_point() and not bool(torch.isfinite(v.to(spec.torch_dtype)).all()):
                fix = "fix the extractor" if spec.dtype == "float32" else "fix the extractor or store it as float32 (ShardWriter dtypes=...)"
                raise DataError(f"clip {clip_id!r}: feature {k!r} has NaN/inf values or values too large for {spec.dtype}; {fix}")

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        tensors = {k: torch.stack([c[k] for c in self._buffer]).contiguous() for k in self.features}
        path = self.root / name
        with atomic_path(path) as tmp:
            # one metadata key: safetensors writes several in an order that changes from run to run, which
            # would make the same data's bytes (its sha256, the dataset's fingerprint) differ
            save_file(tensors, str(tmp), metadata={"clip_ids": json.dumps(self._ids)})
        self.shards.append(ShardInfo(name, len(self._buffer), path.stat().st_size, _sha256(path)))
        self.clip_ids += self._ids
        self._buffer, self._ids = [], []
        progress = {
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "shards": [vars(s) for s in self.shards],
            "info": self.info,
        }
        atomic_write_text(self.root / PROGRESS_FILE, json.dumps(progress))

    def close(self) -> ShardIndex:
        """Write the last shard, then `index.json` (atomically, last). An empty dataset is an error."""
        if self._closed:
            return ShardIndex.load(self.root)
        self._flush()
        self._closed = True
        if not self.shards:
            raise DataError(f"no clips were added to {self.root}; an empty dataset cannot be trained on")
        index = ShardIndex(self.root, self.features, tuple(self.shards), self.info)
        atomic_write_text(self.root / INDEX_FILE, json.dumps(index.to_dict(), indent=1))
        (self.root / PROGRESS_FILE).unlink(missing_ok=True)
        return index

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
