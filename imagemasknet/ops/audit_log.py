"""The append-only audit log of who changed what: launches, cancels, finishes, failures, promotions,
roll backs and sign-ins, one JSON object per line in ``audit.jsonl`` under the runs folder.

Each entry is written with one ``write`` on a descriptor opened with ``O_APPEND``, under an
exclusive ``flock`` and then fsynced, so entries never interleave and earlier lines are never
rewritten. A crash mid-write can at worst leave the last line cut off: the next append starts on a
fresh line, and :func:`read` skips (and counts) lines that do not parse. A log that passes :data:`LOG_LIMIT`
is renamed ``audit-TIME.jsonl`` (kept, never deleted) and a new one begins, so however long a flood of
refused sign-ins, the page always shows the newest entries.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemasknet.core.files import file_sha256, now, read_tail
from imagemasknet.core.paths import runs_root

LOG_NAME = "audit.jsonl"
LOG_LIMIT = 64 * 2**20  # bytes read at most, and the size at which the log is rotated (about 200,000 entries)
ACTIONS = ("launch", "cancel", "finish", "failure", "promote", "rollback", "login")


def log_path(root: Path | None = None) -> Path:
    return Path(root or runs_root()) / LOG_NAME


def active_model_hash(root: Path | None = None) -> str | None:
    """SHA-256 of the weights the app classifies with now (a promoted model, else the shipped one)."""
    from imagemasknet.models.bundle import ModelStore  # the registry imports torch; the log is read without it

    try:
        return file_sha256(ModelStore(runs=root).active_weights() if root else ModelStore().active_weights())
    except OSError:
        return None


def append(action: str, *, run: str | None = None, outcome: str = "ok", session: Any = None,
           model_before: str | None = None, model_after: str | None = None, detail: str | None = None,
           root: Path | None = None) -> dict:
    """Append one entry and return it. ``session``: an administrator's session, or a browser session's id (a
    refused sign-in). ``model_before``/``model_after`` default to the active model's hash now (actions that do
    not change the model have the same hash in both)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    root = Path(root or runs_root())
    root.mkdir(parents=True, exist_ok=True)
    current = active_model_hash(root) if model_before is None or model_after is None else None
    entry = {"time": now(), "action": action, "run": run, "outcome": outcome,
             "session": session if isinstance(session, str) else getattr(session, "id", None),
             "model_before": model_before or current,
             "model_after": model_after or current}
    if detail:
        entry["detail"] = str(detail)[:2000]
    line = (json.dumps(entry, ensure_ascii=True) + "\n").encode("ascii")
    path = log_path(root)
    fd = _open_locked(path)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a line cut off by a crash stays on its own
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
        os.fsync(fd)
        if size + written > LOG_LIMIT:
            os.rename(path, path.with_name(f"audit-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}.jsonl"))
    finally:
        os.close(fd)
    return entry


def _open_locked(path: Path) -> int:
    """The log, opened for appending and exclusively locked. Without the lock another process's write in progress
    can show a size that ends mid-line; and a log rotated while this process waited for it is opened anew."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@dataclass(frozen=True)
class AuditLog:
    entries: list[dict]
    unreadable_lines: int


def read(root: Path | None = None) -> AuditLog:
    """Every entry of the current log (its newest :data:`LOG_LIMIT` bytes), oldest first; lines that do not parse
    (a write cut off by a crash) are counted."""
    entries, bad = [], 0
    try:
        raw = read_tail(log_path(root), LOG_LIMIT + 1)
    except FileNotFoundError:
        return AuditLog([], 0)
    except OSError:
        return AuditLog([], 1)  # a link or not a regular file: not read, counted as one unreadable line
    if len(raw) > LOG_LIMIT:
        raw = raw.partition(b"\n")[2]  # the oldest line read may be cut off
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(entry, dict) and entry.get("action") in ACTIONS:
            entries.append(entry)
        else:
            bad += 1
    return AuditLog(entries, bad)


def display_rows(entries: list[dict], limit: int = 500) -> list[dict]:
    """The newest ``limit`` entries, newest first, with hashes cut to 12 hex digits for a table."""
    rows = []
    for entry in reversed(entries[-limit:]):
        row = {key: entry.get(key) for key in ("time", "action", "run", "outcome", "session")}
        for key in ("model_before", "model_after"):
            row[key] = str(entry.get(key) or "")[:12]
        row["detail"] = entry.get("detail", "")
        rows.append(row)
    return rows


INTERRUPTED_AFTER_S = 600.0  # a promotion or roll back takes seconds; one started this long ago was killed


def close_interrupted(root: Path | None = None, clock=None) -> int:
    """Complete the entry of every promotion or roll back that started more than :data:`INTERRUPTED_AFTER_S`
    ago and never ended (its process was killed): one ``interrupted`` line each, with the model active now.
    Returns how many; the pages call it (through :func:`imagemasknet.ops.jobs.log_endings`)."""
    moment = clock() if clock else dt.datetime.now(dt.timezone.utc)
    entries = read(root).entries
    closed = 0
    for n, entry in enumerate(entries):
        if entry.get("outcome") != "started" or entry.get("action") not in ("promote", "rollback"):
            continue
        same = (entry["action"], entry.get("run"), entry.get("session"))
        if any((e["action"], e.get("run"), e.get("session")) == same and e.get("outcome") != "started"
               for e in entries[n + 1:]):
            continue
        try:
            started = dt.datetime.fromisoformat(str(entry["time"]))
        except (KeyError, ValueError):
            continue
        if (moment - started).total_seconds() < INTERRUPTED_AFTER_S:
            continue
        append(entry["action"], run=entry.get("run"), outcome="interrupted", session=entry.get("session"),
               model_before=entry.get("model_before"), model_after=active_model_hash(root) or "",
               detail=f"the process stopped after starting at {entry['time']}; model_after is the model active now",
               root=root)
        closed += 1
    return closed
