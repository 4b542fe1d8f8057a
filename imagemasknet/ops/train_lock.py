"""One training job per machine: the ``train.lock`` file in the runs folder.

Created with ``O_CREAT | O_EXCL`` and holding ``{"pid", "pid_start", "run", "started"}``; a lock whose process
is gone (or whose pid now belongs to another process) is stale and the next launch takes it over.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from imagemasknet.core.files import folder_lock, now, read_json
from imagemasknet.core.paths import runs_root
from imagemasknet.core.processes import process_alive, process_start

LOCK_NAME = "train.lock"


class JobError(RuntimeError):
    """A job cannot be started, cancelled, promoted or rolled back; the message says why."""


class JobRunningError(JobError):
    """Another training job holds the lock."""

    def __init__(self, lock: "LockInfo"):
        self.lock = lock
        what = f"run {lock.run}" if lock.run else "a job"
        super().__init__(f"A training job is already running on this machine: {what} (process {lock.pid}, "
                         f"started {lock.started or 'just now'}). Wait for it to finish or cancel it first.")


@dataclass(frozen=True)
class LockInfo:
    pid: int | None
    run: str
    started: str = ""
    pid_start: int | None = None

    @property
    def alive(self) -> bool:
        return process_alive(self.pid, self.pid_start)


def lock_path(root: Path | None = None) -> Path:
    return Path(root or runs_root()) / LOCK_NAME


def read_lock(root: Path | None = None) -> LockInfo | None:
    """The lock's content, or None when there is no lock (an unreadable lock reads as pid None)."""
    path = lock_path(root)
    if not path.exists():
        return None
    content = read_json(path, {})
    if not isinstance(content, dict):
        content = {}
    pid, start = content.get("pid"), content.get("pid_start")
    return LockInfo(pid if isinstance(pid, int) else None, str(content.get("run", "")),
                    str(content.get("started", "")), start if isinstance(start, int) else None)


def acquire_lock(root: Path, run: str) -> LockInfo:
    """Create the lock for ``run`` (owned by this process until the trainer's pid is written in),
    taking over a stale one; raises :class:`JobRunningError` when a live job holds it."""
    path = lock_path(root)
    me = LockInfo(os.getpid(), run, now(), process_start(os.getpid()))
    with folder_lock(root, LOCK_NAME):
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = read_lock(root)
                if held is not None and held.pid is None:
                    # Empty or unreadable: someone is writing it right now, or it was cut off long ago.
                    with contextlib.suppress(OSError):
                        if time.time() - path.stat().st_mtime < 10:
                            raise JobRunningError(held)
                elif held is not None and held.alive:
                    raise JobRunningError(held)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(lock_payload(me), out)
                out.flush()
                os.fsync(out.fileno())
            return me
    raise JobError(f"could not create the lock file {path}")


def lock_payload(lock: LockInfo) -> dict:
    return {"pid": lock.pid, "pid_start": lock.pid_start, "run": lock.run, "started": lock.started}


def release_lock(root: Path, run: str, pid: int | None = None) -> None:
    """Remove the lock if it still names ``run`` (and ``pid``, when given)."""
    with folder_lock(root, LOCK_NAME):
        held = read_lock(root)
        if held is not None and held.run == run and (pid is None or held.pid in (pid, os.getpid())):
            with contextlib.suppress(FileNotFoundError):
                lock_path(root).unlink()
