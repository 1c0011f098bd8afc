"""Atomic file output: write to a temporary file in the same folder, fsync, then rename.

A reader (or a resumed run) never sees a torn file: either the old file or the complete new one.

- `atomic_path` / `atomic_write_bytes` / `atomic_write_text`: the writers. A replaced file keeps its
  permission bits. An OSError raised inside names the target (never the temporary file).
- `final_path`: the target a temporary path of `atomic_path` stands for (also through nested
  `atomic_path`s: a writer handed another writer's temporary path).
- `write_failure`: "cannot write TARGET: REASON; FIX", the one wording of a failed write (a full disk
  says so: "the disk is full: free space").
- `remove_stale_temps`: the temporary files a killed writer left in a folder (`.NAME.tmp-` + mkstemp's
  8 random characters + `.EXT`, e.g. `.model.tmp-k3f9a2bq.safetensors`).
"""

import contextlib
import errno
import functools
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable_folder", "final_path", "write_failure", "disk_full",
    "remove_stale_temps", "TEMP_NAME",
]  # fmt: skip

# atomic_path's temporary names: "." + the target's stem + ".tmp-" + mkstemp's 8 random characters + a suffix
TEMP_NAME = re.compile(r"\A\..+\.tmp-[a-z0-9_]{8}(\.[^./]+)?\Z")
_TARGETS: dict[str, Path] = {}  # absolute temporary path -> the path its atomic_path writes
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space; over quota


def final_path(path: str | os.PathLike[str]) -> Path:
    """The file `path` becomes: the target of the `atomic_path` that made `path` as its temporary
    file (followed through nested ones), else `path` itself."""
    p = Path(path)
    for _ in range(100):
        target = _TARGETS.get(os.path.abspath(p))
        if target is None:
            break
        p = target
    return p


def disk_full(e: BaseException, folder: str | os.PathLike[str] | None = None, need: int | None = None) -> bool:
    """Whether the write that raised `e` failed for want of space: its errno (ENOSPC, EDQUOT) or the
    OS's text in a library's own error; for errors that carry neither (libsndfile's "System error"),
    whether `folder` has less than `need` bytes free."""
    if getattr(e, "errno", None) in _FULL or "No space left on device" in str(e) or "os error 28" in str(e):
        return True
    if folder is None or need is None or getattr(e, "errno", None) is not None:
        return False  # an OS error with another errno: not space
    try:
        return shutil.disk_usage(folder).free < need
    except OSError:
        return False


def write_failure(
    path: str | os.PathLike[str], e: BaseException, *, fix: str = "choose a writable folder", folder: str | os.PathLike[str] | None = None,
    need: int | None = None,
) -> str:
    """'cannot write TARGET: REASON; FIX' for a write of `path` (or of a temporary file standing for
    TARGET) that raised `e`. A full disk (see `disk_full`) gets "the disk is full: free space"
    rather than `fix`."""
    target = final_path(path)
    text = " ".join(str(e).split()).rstrip(". ")
    # a library's error carrying the OS's text (safetensors: "... No space left on device (os error 28)"): that text
    reason = getattr(e, "strerror", None) or ("No space left on device" if "No space left on device" in text else text) or type(e).__name__
    full = disk_full(e, target.parent if folder is None else folder, need)
    if full and "No space left" not in reason:
        reason = f"{reason} (no space left on the device)"
    return f"cannot write {target}: {reason}; {'the disk is full: free space' if full else fix}"


def _named(e: OSError, target: Path) -> OSError:
    """`e` naming `target` rather than a temporary file of atomic_path (or naming nothing): the same
    kind of OSError (its errno's subclass), with the target as its file name; others as they are."""
    names = [n for n in (e.filename, e.filename2) if n is not None]
    temp = any(isinstance(n, (str, os.PathLike)) and TEMP_NAME.match(os.path.basename(os.fspath(n))) for n in names)
    if e.errno is None or (names and not temp):
        return e
    return OSError(e.errno, e.strerror, str(final_path(target)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically, on error it is removed.

    `suffix` defaults to the target's own suffix, so writers that infer the format from the
    extension (soundfile, PyAV, PIL) keep working on the temporary path. A file replaced keeps its
    permission bits; a new one gets the usual ones (0666 less the umask). An OSError raised inside
    (by the writer or the rename) that names the temporary file, or no file, is raised naming
    `path` (or, when `path` is itself a temporary path of an enclosing atomic_path, that one's target).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix if suffix is None else suffix, dir=path.parent)
    except OSError as e:
        named = _named(e, path)
        if named is e:
            raise
        raise named from e
    os.close(fd)
    tmp_path = Path(tmp)
    key = os.path.abspath(tmp_path)
    _TARGETS[key] = path
    try:
        yield tmp_path
        # mkstemp creates 0600 and some writers (safetensors) replace the file: a file replaced keeps
        # its own permissions, a new one gets the normal ones (0666 less the umask, as open() gives)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb") as f:  # fsync needs no write access (a read-only mode kept above)
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError):
            named = _named(e, path)
            if named is not e:
                raise named from e
        raise
    finally:
        _TARGETS.pop(key, None)


def remove_stale_temps(
    folder: str | os.PathLike[str], *, pattern: re.Pattern[str] = TEMP_NAME, before: float | None = None
) -> list[Path]:
    """Remove the temporary files of `atomic_path` directly in `folder` (a killed writer's: they
    match its naming exactly, e.g. `.model.tmp-k3f9a2bq.safetensors`, or the narrower `pattern` of
    one writer's files, and are plain files); returns those removed. Only for a folder no other
    writer uses now (e.g. under a lock held on it): a live writer's temporary file looks the same;
    without a lock, `before` keeps those last written at that time (a `time.time()`) or later."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name) or entry.path in _TARGETS or os.path.abspath(entry.path) in _TARGETS:
            continue  # another name, or a temporary file this process is writing now
        try:
            if entry.is_file(follow_symlinks=False) and (before is None or entry.stat(follow_symlinks=False).st_mtime < before):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


@functools.cache
def _swapped_umask() -> int:
    """Where /proc cannot tell: read by setting it and back, once per process."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status): setting it to read
    it would give files another thread creates in between world-writable permissions. Elsewhere
    it is swapped once and remembered."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _swapped_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable_folder(folder: Path, flag: str = "--out") -> None:
    """Fail early (before minutes of work) when `folder` cannot take new files: it is a file, or
    creating it or a file in it fails. Raises MediaError naming `flag`."""
    from controlfoley.errors import MediaError

    if folder.exists() and not folder.is_dir():
        raise MediaError(f"{flag} {folder} is a file, not a folder; {flag} names the folder the outputs go to: choose another")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise MediaError(f"output folder {folder} cannot be written ({e.strerror or e}); choose another {flag}") from None
