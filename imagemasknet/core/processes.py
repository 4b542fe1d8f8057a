"""Whether a process recorded in a run folder or lock file still runs (Linux /proc where there is one), and
how a long-running server process keeps its memory."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state), or None off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), if known."""
    stat = _proc_stat(pid)
    try:
        return int(stat[19]) if stat else None
    except (IndexError, ValueError):
        return None


def process_alive(pid: Any, start: Any = None) -> bool:
    """True while ``pid`` runs (zombies count as dead); with ``start``, only if it is that same process."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:  # no /proc (not Linux): os.kill said it exists
        return True
    if stat[0] in ("Z", "X", "x"):
        return False
    if isinstance(start, int) and process_start(pid) not in (None, start):
        return False
    return True


def run_state(status: dict) -> str:
    """A run's state from its ``status.json``: as recorded, except that a "running" run whose process is gone
    is "crashed" (it could not record its own end)."""
    state = str(status.get("state", "unknown"))
    return "crashed" if state == "running" and not process_alive(status.get("pid")) else state


SERVER_MALLOC_ARENAS = 2  # glibc's default is 8 per core: each session thread's freed memory stays in its own


def limit_memory_arenas() -> bool:
    """Ask glibc for at most :data:`SERVER_MALLOC_ARENAS` memory arenas (``mallopt(M_ARENA_MAX)``), so memory a
    session's thread frees serves the next session instead of staying behind; a no-op off glibc. The app
    calls it once: ten sessions reading ten 7000 × 7000 scans each peaked at 2,701 MiB without it."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-8, SERVER_MALLOC_ARENAS))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False
