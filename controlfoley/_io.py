"""Atomic file output: write to a temporary file in the same folder, fsync, then rename.

A reader (or a resumed run) never sees a torn file: either the old file or the complete new one.
"""

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable_folder"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically, on error it is removed.

    `suffix` defaults to the target's own suffix, so writers that infer the format from the
    extension (soundfile, PyAV, PIL) keep working on the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix if suffix is None else suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 and some writers (safetensors) replace the file, so the normal
        # permissions (0666 less the umask, as open() gives) are set on the finished file
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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
