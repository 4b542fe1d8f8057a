"""Files the project writes and reads back: atomic writes (a crash or a kill never leaves half a file), JSON,
advisory folder locks, content hashes and timestamps."""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a weights file is hashed once.
    Raises OSError when the file cannot be read."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def atomic_write(path: Path, write, mode: int | None = None) -> None:
    """Write ``path`` through ``write(tmp)`` and an fsynced rename, so readers see the old file or the
    new one, never half of it. ``mode``: the file's permissions (default: 0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # mkstemp's 0600 would make shared run folders unreadable to others
    try:
        write(tmp)
        os.chmod(tmp, mode)  # after writing: a writer that replaces the file (safetensors does) made it 0600
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any, compact: bool = False) -> None:
    """``compact``: no indentation (files that ship with the weights, which have a size budget)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=None if compact else 2, separators=(",", ":") if compact else None,
                      sort_keys=False, default=str)
            out.write("\n")

    atomic_write(path, write)


@contextlib.contextmanager
def folder_lock(root: Path, name: str) -> Iterator[None]:
    """An advisory lock (flock on ``root/.NAME.guard``) around check-then-act sequences on shared files
    in ``root`` (the job lock, the active-model link, the audit and sign-in records)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # POSIX only, so imported where it is tried
    except ImportError:  # not POSIX: callers' O_EXCL and os.replace still keep writers apart
        yield
        return
    with open(root / f".{name}.guard", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_folder_lock(root: Path, name: str) -> Iterator[bool]:
    """Like :func:`folder_lock`, but never waits: yields False (and holds nothing) while another holds it."""
    root.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, as in folder_lock

    with open(root / f".{name}.guard", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file we wrote; a missing, unreadable or absurdly nested file gives ``default``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return default


class UnsafeFileError(OSError):
    """A file a reader refuses to open: a symbolic link, not a regular file, or larger than it may be."""


def _open_regular(path: Path, follow_links: bool = False) -> tuple[int, os.stat_result]:
    """A read descriptor on ``path`` and its stat, for a regular file (``O_NOFOLLOW`` unless ``follow_links``:
    a link planted in a folder is never followed; ``O_NONBLOCK``: a FIFO cannot stall the open)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if os.path.islink(path):
            raise UnsafeFileError(f"{Path(path).name} is a symbolic link, which is not followed") from error
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{Path(path).name} is not a regular file")
    return fd, info


def read_regular(path: str | os.PathLike, limit: int, follow_links: bool = False) -> bytes:
    """The bytes of a regular file, never through a symbolic link (unless ``follow_links``) and never more than
    ``limit`` of them (checked before reading): :class:`UnsafeFileError` (an ``OSError``) naming the file
    otherwise."""
    fd, info = _open_regular(Path(path), follow_links)
    try:
        if info.st_size > limit:
            raise UnsafeFileError(f"{Path(path).name} is {info.st_size:,} bytes, more than the {limit:,} it may have")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def read_tail(path: str | os.PathLike, size: int) -> bytes:
    """The last ``size`` bytes of a regular file (a log), never through a symbolic link."""
    fd, info = _open_regular(Path(path))
    try:
        os.lseek(fd, max(0, info.st_size - size), os.SEEK_SET)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(size)
    finally:
        os.close(fd)
