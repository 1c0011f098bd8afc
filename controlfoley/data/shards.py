"""On-disk format for precomputed training inputs: a folder of safetensors shards plus `index.json`.

Features
- One folder per dataset::

      DIR/index.json                  written last, atomically: a folder without it is unfinished
      DIR/shard-00000.safetensors     N clips, one tensor per feature stacked on dim 0: [N, *shape]
      DIR/shard-00001.safetensors     ...
      DIR/progress.json               while writing: the shards finished so far (removed by close())
      DIR/skipped.tsv                 `controlfoley extract --skip-bad`: the clips left out (id TAB error)

- `index.json` (format "controlfoley.shards", version 1)::

      {"format": "controlfoley.shards", "version": 1, "n_clips": 1000,
       "features": {"tokens": {"dtype": "int16", "shape": [5, 53]},
                    "sync": {"dtype": "float16", "shape": [240, 768]}, ...},
       "shards": [{"file": "shard-00000.safetensors", "n_clips": 256, "bytes": 98765, "sha256": "..."}, ...],
       "info": {"preset": "specmaskfoley", "grid": [5, 53], "codebook_size": 1024, ...}}

  Every clip has every feature, with the same per-clip shape. Clip ids live in each shard's
  safetensors metadata (`clip_ids`, a JSON list), so the index stays small at VGGSound scale.
- Feature names the recipes read: `tokens` (int16/int32 [F, T]: int16 holds a codebook of up to
  32768 codes, `info["codebook_size"]` picks the dtype), `sync` (fp16 [t, ds]), `clip`
  (fp16 [t8, dc]), `clap` (fp32 [c]), `mel` (fp16 [m, n]), `label` (int64 []). Any other name is kept.
- `ShardWriter` buffers clips (features as torch tensors or numpy arrays) and writes each full shard
  atomically (temporary file + rename); floating features are stored as fp16 except `clap` (fp32),
  and a value fp16 cannot hold is a DataError, as is an integer value its stored dtype cannot hold
  (never cast to a wrapped one) and a token outside the info's codebook.
  After each shard it records its progress (`progress.json`, atomically), so an interrupted
  extraction continues with `resume=True` (`controlfoley extract --resume`); what it redoes is the
  clips not yet in a finished shard (fewer than `shard_size` plus one tokenizer batch).
- Replacing a dataset (`overwrite=True`, `--overwrite`) loses nothing until the new one is complete:
  the old `index.json`, its shards and its `skipped.tsv` stay in place (the folder still loads as
  the old dataset) while the new shards are written under names no old shard has
  (`shard-g1-00000.safetensors`, then `shard-00000...` again for the next replacement) and the
  new skipped list as `skipped.new.tsv`. `close()` swaps the new `index.json` in atomically (the
  one moment the dataset changes), then moves `skipped.new.tsv` into place, removes
  `progress.json` and the old dataset's shards (also orphans an earlier writer left). So a
  replacement that fails (a bad input, a full disk, Ctrl-C, a kill) leaves the old dataset
  loadable, and it needs room for both datasets until it ends. An interrupted replacement
  (`index.json` and `progress.json` together) continues with `resume=True` (`--resume`), the old
  dataset still loading until that run completes; `overwrite=True` again discards it (an unfinished
  extraction, its shards, the staged files its progress.json names and `progress.json`, is discarded at once by
  `overwrite`, not only at the end). A replacement records its staged files in `progress.json`
  just before the swap; a kill after the swap leaves an index that lists exactly the shards
  `progress.json` records (`finished_extraction`): the new dataset, which loads; `resume=True`
  finishes the tidying (the staged files moved into place, the old shards removed) and reads no
  clip again (`ShardWriter.finished_before`: the dataset is complete), as does
  `overwrite=True` before it replaces that dataset.
- A write that fails (a full disk, a read-only folder) raises DataError naming the file and the fix
  ("the disk is full: free space, then re-run the same command with --resume"); the finished
  shards are kept. Temporary files a killed writer left (`.shard-00001.tmp-k3f9a2bq.safetensors`,
  atomic_path's naming: 8 random characters) are removed by a resumed writer: at the start those older than
  `progress.json`'s last write, at `close()` those older than its own last progress write (the
  writer holds no lock on the folder: one folder takes one writer at a time).
- Clip ids are unique in a dataset (they name clips in `skipped.tsv`, in resume's order check and
  in evaluation): `add` refuses an id already added, also one of the shards a resumed writer
  found.
- `ShardIndex.load(dir).verify(level)` checks before training: "size" (every shard exists with its
  recorded byte size), "header" (also parses each safetensors header and checks keys, dtypes and
  shapes against the index, and that its `clip_ids` metadata is a JSON list of one unique id per
  clip, unique across the shards too), "sha256" (also hashes every byte). Problems raise DataError
  naming the shard.
- Shards are read lazily with `safetensors.safe_open` (memory-mapped): a dataset never has to fit in RAM.

Reference: safetensors format (https://github.com/huggingface/safetensors), header = 8-byte length + JSON.
"""

import contextlib
import hashlib
import json
import os
import re
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

from controlfoley._io import atomic_path, atomic_write_text, disk_full, remove_stale_temps, write_failure
from controlfoley.errors import DataError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "INDEX_FILE", "PROGRESS_FILE", "VERIFY_LEVELS", "FeatureSpec", "ShardInfo", "ShardIndex", "ShardWriter",
    "finished_extraction", "parse_clip_ids", "check_unique_ids",
]  # fmt: skip

FORMAT = "controlfoley.shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
VERIFY_LEVELS = ("none", "size", "header", "sha256")
SHARD_PREFIX = "shard-"  # a dataset's first shards: shard-00000.safetensors, ...
# every shard name a ShardWriter gives: shard-NNNNN.safetensors, or shard-gG-NNNNN.safetensors while it replaces a dataset
SHARD_NAME = re.compile(r"\Ashard-(?:g[0-9]+-)?[0-9]{5,}\.safetensors\Z")
# atomic_path's temporary files of what a ShardWriter writes: "." + stem + ".tmp-" + mkstemp's 8 characters + suffix
_TEMP_NAME = re.compile(r"\A\.(?:shard-(?:g[0-9]+-)?[0-9]{5,}|progress|index|skipped(?:\.new)?)\.tmp-[a-z0-9_]{8}\.(?:safetensors|json|tsv)\Z")
STAGED_NAMES_KEY = "staged_names"  # progress.json: the names a replacement stages (staged()), kept as NAME.new.SUFFIX until close()
STAGED_KEY = "staged"  # progress.json, written by close() before a replacement's index swap: {name: whether a new copy is staged}
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
        first_shard: dict[str, Path] = {}  # clip id -> the shard that lists it (ids are unique in a dataset)
        for shard in self.shards:
            path = self.root / shard.file
            if not path.is_file():
                raise DataError(f"shard {path} listed in {self.root / INDEX_FILE} is missing; restore it or re-run `controlfoley extract`")
            size = path.stat().st_size
            if size != shard.bytes:
                raise DataError(f"shard {path} is {size} bytes but the index records {shard.bytes}: it is truncated or was overwritten. Re-extract it.")
            if level in ("header", "sha256"):
                check_unique_ids(self._check_header(path, shard), path, first_shard)
            if level == "sha256" and _sha256(path) != shard.sha256:
                raise DataError(f"shard {path} fails its sha256 check: its bytes are corrupt. Re-extract it.")

    def _check_header(self, path: Path, shard: ShardInfo) -> list[str]:
        """The shard's layout against the index, and its clip ids (returned)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                layout = {k: (_ST_CODES.get(f.get_slice(k).get_dtype(), "?"), tuple(f.get_slice(k).get_shape())) for k in keys}
                metadata = f.metadata()
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"shard {path} is corrupt: not a readable safetensors file ({e}). Re-extract it.") from e
        if keys != set(self.features):
            raise DataError(f"shard {path} holds features {sorted(keys)}, the index lists {sorted(self.features)}. Re-extract it.")
        for k, spec in self.features.items():
            want = (spec.dtype, (shard.n_clips, *spec.shape))
            if layout[k] != want:
                raise DataError(f"shard {path}: feature {k!r} is {layout[k]}, the index says {want} (dtype, shape). Re-extract it.")
        return parse_clip_ids(metadata, path, shard.n_clips)


def parse_clip_ids(metadata: Mapping[str, str] | None, path: Path, n_clips: int) -> list[str]:
    """The clip ids of shard `path` from its safetensors `metadata`: `clip_ids`, a JSON list of
    `n_clips` unique strings; anything else is a DataError naming the shard and the fix."""
    raw = (metadata or {}).get("clip_ids")
    ids: Any = None
    if raw is None:
        problem = "has no clip_ids metadata"
    else:
        try:
            ids = json.loads(raw)
            problem = ""
        except ValueError as e:
            problem = f"has clip_ids metadata that is not valid JSON ({e})"
    if not problem and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        problem = "has clip_ids metadata that is not a JSON list of strings"
    elif not problem and len(ids) != n_clips:
        problem = f"lists {len(ids)} clip ids for its {n_clips} clips"
    elif not problem and len(set(ids)) != len(ids):
        problem = f"lists the clip id {next(i for k, i in enumerate(ids) if i in ids[:k])!r} twice"
    if problem:
        raise DataError(
            f"shard {path} {problem}: its header is corrupt (a shard's clip_ids name its clips, each once). "
            "Re-extract it (or restore it from a copy)"
        )
    return [str(i) for i in ids]


def check_unique_ids(ids: list[str], path: Path, first_shard: dict[str, Path]) -> None:
    """Clip ids are unique in a dataset: `ids` (of shard `path`) against those of the shards before
    it (`first_shard`, id -> shard, which it extends); a repeat is a DataError naming both shards."""
    for i in ids:
        other = first_shard.setdefault(i, path)
        if other != path:
            raise DataError(
                f"shard {path} lists the clip id {i!r}, which shard {other} lists too: one of their headers is corrupt (clip ids "
                "are unique in a dataset). Re-extract them (or restore them from a copy)"
            )


def finished_extraction(root: str | os.PathLike[str]) -> bool:
    """Whether `root` holds an extraction that finished but was stopped (a kill, Ctrl-C) while
    `close()` tidied up after swapping its index in: `index.json` lists exactly the shards
    `progress.json` records. (An interrupted replacement's progress lists shards under names the
    old index has none of.) The index is then the new dataset's; `ShardWriter(resume=True)` (or
    `overwrite=True`) finishes the tidying."""
    root = Path(root)
    try:
        index = ShardIndex.load(root)
        d = json.loads((root / PROGRESS_FILE).read_text(encoding="utf-8"))
        recorded = tuple(ShardInfo(str(s["file"]), int(s["n_clips"]), int(s["bytes"]), str(s["sha256"])) for s in d["shards"])
    except (DataError, OSError, ValueError, KeyError, TypeError):
        return False
    return bool(recorded) and index.shards == recorded


def _staged_name(name: str) -> str:
    """skipped.tsv -> skipped.new.tsv: where a build replacing a dataset keeps its own copy until close()."""
    p = Path(name)
    return f"{p.stem}.new{p.suffix}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _codebook_size(info: Mapping[str, Any]) -> int | None:
    """The dataset's `info["codebook_size"]` (the number of codes), or None where it records none."""
    size = info.get("codebook_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def storage_dtype(key: str, value: torch.Tensor, codebook_size: int | None = None) -> torch.dtype:
    """Default on-disk dtype: fp16 for float features (fp32 for `clap`); for tokens the smallest of
    int16/int32/int64 holding every code of the codebook (`codebook_size` codes: 0 .. size - 1), or,
    without a codebook size, holding the codes of `value` (the first clip; later clips are checked
    against that dtype's range by the writer)."""
    if value.is_floating_point():
        return torch.float32 if key in FP32_KEYS else torch.float16
    if key == "tokens":
        hi = codebook_size - 1 if codebook_size is not None else int(value.max()) if value.numel() else 0
        return next(d for d in (torch.int16, torch.int32, torch.int64) if hi <= torch.iinfo(d).max)
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
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"{self.root} is a file, not a folder: a dataset is a folder of shards; choose another folder (--out)")
        progress = self.root / PROGRESS_FILE
        has_index, has_progress = (self.root / INDEX_FILE).exists(), progress.exists()
        finished = has_index and has_progress and finished_extraction(self.root)  # stopped in close(), after its index swap
        if finished and not (overwrite or resume):
            raise DataError(
                f"{self.root} holds a finished dataset ({INDEX_FILE}, which loads) whose extraction was stopped while tidying up "
                f"({PROGRESS_FILE} is left); pass resume=True (--resume) to finish that, or overwrite=True (--overwrite) to replace the dataset"
            )
        if has_index and has_progress and not (overwrite or resume):
            raise DataError(
                f"{self.root} holds a dataset ({INDEX_FILE}, which still loads) and an interrupted extraction replacing it "
                f"({PROGRESS_FILE}); pass resume=True (--resume) to continue the replacement, or overwrite=True (--overwrite) to start it again"
            )
        if has_index and not overwrite and not (resume and has_progress):
            done = " (nothing to resume: it is complete)" if resume else ""
            raise DataError(f"{self.root} already holds a dataset ({INDEX_FILE}){done}; choose another folder or pass overwrite=True (--overwrite)")
        if has_progress and not (overwrite or resume):
            raise DataError(
                f"{self.root} holds an interrupted extraction ({PROGRESS_FILE}); pass resume=True (--resume) to continue it, "
                "or overwrite=True (--overwrite) to start again"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the dataset folder {self.root}: {e.strerror or e}; choose a folder you can write (--out)") from None
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
        self._index: ShardIndex | None = None  # what close() wrote
        self._overwrite = overwrite
        self._recorded = 0  # finished shards recorded in progress.json (what a resumed run keeps)
        # the finished dataset this writer replaces (its index stays until close() swaps in the new one); not
        # a finished extraction's own index when resuming it: that resume only ends what its close() began
        self.replacing = has_index and not (finished and resume)
        self._old_files = self._dataset_files() if self.replacing else set()  # None: an index that cannot be read (its shards are kept)
        self._staged: set[str] = set()  # names given by staged(), moved into place by close()
        self._prefix = SHARD_PREFIX
        # resume=True of a finished extraction: its tidying is finished here and the dataset is complete
        # (nothing is read again: a clip it skipped that reads now would add a shard the index lacks)
        self.finished_before = finished and resume
        if self.finished_before:  # the same settings and intact shards, as any resume; refused as one otherwise
            self._load_progress(progress)
        if finished:  # the staged files the stopped close() had still to move into place (or the old ones to remove)
            self._finish_staged(self._recorded_staged(progress))
        if self.finished_before:
            self._tidy_finished(progress)
        elif overwrite:
            self._discard_unfinished()
            self._prefix = self._free_prefix()
        elif resume and has_progress:
            self._load_progress(progress)
            remove_stale_temps(self.root, pattern=_TEMP_NAME, before=progress.stat().st_mtime)  # a live writer's temporary files are newer
        elif resume:
            warnings.warn(f"{self.root}: no interrupted extraction to resume (no {PROGRESS_FILE}); starting from the first clip", stacklevel=2)

    def _tidy_finished(self, progress: Path) -> None:
        """What a close() stopped after its index swap had still to do: remove the shards its index
        does not list (the replaced dataset's), temporary files of killed writes, and progress.json."""
        listed = {s.file for s in ShardIndex.load(self.root).shards}
        for name in sorted(self._shard_files_on_disk() - listed):
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
        remove_stale_temps(self.root, pattern=_TEMP_NAME, before=progress.stat().st_mtime)
        progress.unlink(missing_ok=True)

    def _dataset_files(self) -> set[str] | None:
        """The shard files the finished dataset's index lists (plain `*.safetensors` names in the
        folder only: what close() may remove); None when the index cannot be read."""
        try:
            index = ShardIndex.load(self.root)
        except DataError:
            return None
        return {s.file for s in index.shards if Path(s.file).name == s.file and s.file.endswith(".safetensors")}

    def _shard_files_on_disk(self) -> set[str]:
        try:
            return {e.name for e in os.scandir(self.root) if SHARD_NAME.match(e.name) and e.is_file(follow_symlinks=False)}
        except OSError:
            return set()

    def _discard_unfinished(self) -> None:
        """overwrite: remove an interrupted extraction (progress.json, its shards, the staged files
        `NAME.new.SUFFIX` its progress.json names, which close() would otherwise install as this
        build's); a finished dataset's index, shards and files stay until close()."""
        keep = self._shard_files_on_disk() if self._old_files is None else self._old_files
        # the staged copies the interrupted build recorded (progress.json), never a user's own file named NAME.new.SUFFIX
        staged = {_staged_name(n) for n in self._recorded_staged_names(self.root / PROGRESS_FILE)}
        for name in sorted((self._shard_files_on_disk() - keep) | staged):
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
        with contextlib.suppress(OSError):
            (self.root / PROGRESS_FILE).unlink()

    @staticmethod
    def _recorded_staged_names(progress: Path) -> set[str]:
        """The names an interrupted build staged (`staged()`), as its progress.json records them."""
        try:
            names = json.loads(progress.read_text(encoding="utf-8")).get(STAGED_NAMES_KEY, [])
        except (OSError, ValueError, AttributeError):
            return set()
        return {n for n in names if isinstance(n, str) and Path(n).name == n and n not in (".", "..")} if isinstance(names, list) else set()

    @staticmethod
    def _recorded_staged(progress: Path) -> dict[str, bool]:
        """The staged files close() recorded in `progress` before its index swap ({} where none)."""
        try:
            record = json.loads(progress.read_text(encoding="utf-8")).get(STAGED_KEY, {})
        except (OSError, ValueError, AttributeError):
            return {}
        if not isinstance(record, dict):
            return {}
        return {k: bool(v) for k, v in record.items() if isinstance(k, str) and Path(k).name == k and k not in (".", "..")}  # names in the folder only

    def _finish_staged(self, staged: Mapping[str, bool]) -> None:
        """After a replacement's index swap: move each staged new copy into place, and remove the
        replaced dataset's file where this build staged none (idempotent: a copy already moved stays)."""
        for name, has_new in sorted(staged.items()):
            with contextlib.suppress(OSError):
                if not has_new:
                    (self.root / name).unlink(missing_ok=True)  # the replaced dataset's; this one has none
                elif (self.root / _staged_name(name)).exists():
                    os.replace(self.root / _staged_name(name), self.root / name)

    def _free_prefix(self) -> str:
        """A shard-name prefix none of the kept shards has: shard-, else shard-g1-, shard-g2-, ..."""
        taken = self._shard_files_on_disk() | (self._old_files or set())
        for g in range(10_000):
            prefix = SHARD_PREFIX if g == 0 else f"{SHARD_PREFIX}g{g}-"
            if not any(re.fullmatch(re.escape(prefix) + r"[0-9]{5,}\.safetensors", name) for name in taken):
                return prefix
        raise DataError(f"{self.root} holds too many shard files to name new ones; remove the unused shard-*.safetensors files")

    def staged(self, name: str) -> Path:
        """Where this build writes a dataset file of its own beside the shards (e.g. `skipped.tsv`):
        `DIR/NAME`, or, while it replaces a finished dataset, `DIR/STEM.new.SUFFIX`, which `close()`
        moves to `DIR/NAME` right after swapping in the new index (the old dataset's `NAME` is
        removed then when the new build wrote none)."""
        path = self.root / name if not self.replacing else self.root / _staged_name(name)
        if self._overwrite and self.replacing and name not in self._staged:
            path.unlink(missing_ok=True)  # a copy an interrupted replacement staged (one with no record of it): not this build's
        self._staged.add(name)
        return path

    def write_error(self, path: str | os.PathLike[str], e: BaseException) -> DataError:
        """The DataError for a write of `path` that failed with `e`: the file, why, the fix (a full
        disk: free space), what is kept and how to go on."""
        n = self._recorded
        if n:
            go_on = "re-run the same command with --resume" + (" instead of --overwrite" if self._overwrite else "")
            kept = f"The {n} finished shard{'s' if n > 1 else ''} of this extraction {'are' if n > 1 else 'is'} kept ({PROGRESS_FILE}): --resume continues after {'them' if n > 1 else 'it'}"
        else:
            go_on, kept = "re-run the same command", "No shard of this extraction was finished yet"
        failed = write_failure(path, e, fix=f"choose a folder you can write (another --out), or make this one writable and {go_on}")
        then = f", then {go_on}" if disk_full(e) else ""  # after "the disk is full: free space"
        old = f"; the dataset already in {self.root} is unchanged and still loads" if self.replacing else ""
        return DataError(f"{failed}{then}. {kept}{old}.")

    def _load_progress(self, path: Path) -> None:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            features = {str(k): FeatureSpec(str(v["dtype"]), tuple(int(x) for x in v["shape"])) for k, v in d["features"].items()}
            shards = [ShardInfo(str(s["file"]), int(s["n_clips"]), int(s["bytes"]), str(s["sha256"])) for s in d["shards"]]
            info = dict(d["info"])
            prefix = str(d.get("prefix", SHARD_PREFIX))  # older records: the first shards' names
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a valid progress record ({type(e).__name__}: {e}); start again with overwrite=True (--overwrite)") from e
        mine = json.loads(json.dumps(self.info))  # as it reads back (tuples become lists)
        diff = sorted(k for k in set(info) | set(mine) if info.get(k) != mine.get(k))
        if diff:
            from controlfoley.train.provenance import TOKEN_SOURCE_KEYS, same_token_source  # (train imports data: imported here)

            if set(diff) <= TOKEN_SOURCE_KEYS and same_token_source(info, mine):
                diff = []  # the same tokenizer weights, recorded as an older version did (a preset's name as a path)
        if diff:
            shown = [  # a short value is shown then and now (e.g. the inputs: "27 files (ids and tags digest ...)"), a long one named
                f"{k}: {info.get(k)!r} then, {mine.get(k)!r} now" if all(isinstance(v, (str, int, float, type(None))) for v in (info.get(k), mine.get(k))) else k
                for k in diff
            ]
            raise DataError(
                f"cannot resume {self.root}: the interrupted extraction had other settings (these differ: {'; '.join(shown)}); "
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
        self._prefix, self._recorded = prefix, len(shards)

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
        dtype = self._dtypes.get(key) or storage_dtype(key, value, _codebook_size(self.info))
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
            self._check_range(clip_id, k, v, spec)

    def _check_range(self, clip_id: str, key: str, value: torch.Tensor, spec: FeatureSpec) -> None:
        """Integer values the stored dtype cannot hold (a cast would wrap them: 40000 -> -25536 in
        int16), and tokens outside the codebook the info records (the reader calls those corrupt):
        refused before anything is cast or buffered."""
        if not value.numel() or value.dtype == torch.bool or value.is_floating_point():
            return
        lo, hi = int(value.min()), int(value.max())
        size = _codebook_size(self.info)
        if key == "tokens" and size is not None and (lo < 0 or hi >= size):
            raise DataError(
                f"clip {clip_id!r}: feature {key!r} has values outside the codebook [0, {size}) (min {lo}, max {hi}) that the "
                "dataset's info records (codebook_size); store the codes of that tokenizer, or record its own codebook_size"
            )
        dtype = spec.torch_dtype
        if dtype == torch.bool or dtype.is_floating_point:
            return
        limits = torch.iinfo(dtype)
        if lo < limits.min or hi > limits.max:
            fix = (
                "record the tokenizer's codebook size in the writer's info (info={'codebook_size': N}), which picks the dtype for "
                "every code, or pass dtypes={'tokens': torch.int32}"
                if key == "tokens" and size is None
                else f"pass a wider dtype (ShardWriter dtypes={{{key!r}: torch.int32}} or torch.int64)"
            )
            raise DataError(
                f"clip {clip_id!r}: feature {key!r} has values in [{lo}, {hi}], outside {spec.dtype} [{limits.min}, {limits.max}] "
                f"(the dtype it is stored in); {fix}"
            )

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"{self._prefix}{len(self.shards):05d}.safetensors"
        tensors = {k: torch.stack([c[k] for c in self._buffer]).contiguous() for k in self.features}
        path = self.root / name
        try:
            with atomic_path(path) as tmp:
                # one metadata key: safetensors writes several in an order that changes from run to run, which
                # would make the same data's bytes (its sha256, the dataset's fingerprint) differ
                save_file(tensors, str(tmp), metadata={"clip_ids": json.dumps(self._ids)})
        except (OSError, SafetensorError) as e:  # safetensors' own error carries the OS's text ("os error 28")
            raise self.write_error(path, e) from None
        self.shards.append(ShardInfo(name, len(self._buffer), path.stat().st_size, _sha256(path)))
        self.clip_ids += self._ids
        self._buffer, self._ids = [], []
        self._write_progress()

    def _write_progress(self, staged: Mapping[str, bool] | None = None) -> None:
        """Record the finished shards in progress.json (atomically), with close()'s staged files."""
        progress = {
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "shards": [vars(s) for s in self.shards],
            "info": self.info,
            "prefix": self._prefix,
            STAGED_NAMES_KEY: sorted(self._staged) if self.replacing else [],  # what --overwrite removes of an interrupted replacement
            **({STAGED_KEY: dict(staged)} if staged else {}),
        }
        try:
            atomic_write_text(self.root / PROGRESS_FILE, json.dumps(progress))
        except OSError as e:
            raise self.write_error(self.root / PROGRESS_FILE, e) from None
        self._recorded = len(self.shards)

    def close(self) -> ShardIndex:
        """Write the last shard, then `index.json` (atomically, last: the moment a replaced dataset
        changes), then move staged files into place and remove `progress.json`, the replaced
        dataset's shards and what killed writers left. An empty dataset is an error. A close()
        that failed (a full disk) can be called again; once the index is written, it returns it."""
        if self._index is not None:
            return self._index
        self._flush()
        if not self.shards:
            raise DataError(f"no clips were added to {self.root}; an empty dataset cannot be trained on")
        index = ShardIndex(self.root, self.features, tuple(self.shards), self.info)
        progress = self.root / PROGRESS_FILE
        last_write = progress.stat().st_mtime if progress.exists() else None
        # a replacement records its staged files before the swap: a kill after it leaves progress.json
        # saying what is still to move, which a resumed writer does (finished_extraction)
        staged = {name: (self.root / _staged_name(name)).exists() for name in sorted(self._staged)} if self.replacing else {}
        if staged:
            self._write_progress(staged)
        try:
            atomic_write_text(self.root / INDEX_FILE, json.dumps(index.to_dict(), indent=1))
        except OSError as e:
            raise self.write_error(self.root / INDEX_FILE, e) from None
        self._closed, self._index = True, index
        # the new dataset is in place: the rest only tidies (a kill here leaves progress.json; --resume finishes it)
        self._finish_staged(staged)
        progress.unlink(missing_ok=True)
        mine = {s.file for s in self.shards}
        for name in sorted(((self._old_files or set()) | self._shard_files_on_disk()) - mine):
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
        if last_write is not None:
            remove_stale_temps(self.root, pattern=_TEMP_NAME, before=last_write)
        return index

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
