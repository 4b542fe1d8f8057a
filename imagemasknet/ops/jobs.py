"""Background training jobs for the Retrain page: launch, watch, cancel.

Everything here works on files under :func:`imagemasknet.core.paths.runs_root`, so a job outlives the
Streamlit script (and the browser) that started it, and any later page finds it again:

``train.lock``
    One training job per machine (:mod:`imagemasknet.ops.train_lock`).
``.jobs/<run>.json`` and ``.jobs/<run>.log``
    What was launched (argv, pid, whether a cancel was asked for, the exit code when known) and
    the trainer's stdout/stderr. The run folder itself is created by the trainer, which insists
    on an empty folder, so the process output is kept beside it; :meth:`Job.log_tail` shows both.
``<run>/``
    The run folder ``imagemasknet train`` writes (config, status, history, checkpoints, log.txt), read
    through :class:`~imagemasknet.core.run_folder.RunFolder`.

The trainer runs as ``python -m imagemasknet train … --out-dir RUN --no-progress`` in its own
session (process group); :func:`cancel` sends SIGTERM to the group, which the trainer turns into a
clean "cancelled" run folder. Promotion of a finished run is :mod:`imagemasknet.ops.promotion`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from imagemasknet.core.files import folder_lock, now, read_json, read_tail, write_json
from imagemasknet.core.paths import ACTIVE_NAME, runs_root
from imagemasknet.core.processes import process_alive, process_start
from imagemasknet.core.run_folder import CONFIG, LOG, LOG_TAIL_BYTES, RunFolder
from imagemasknet.core.run_folder import new_run_name as naming_rule
from imagemasknet.data.busi import find_data_root
from imagemasknet.ops import audit_log
from imagemasknet.ops.access import AdminSession, require_admin
from imagemasknet.ops.train_lock import (JobError, LockInfo, acquire_lock, lock_path, lock_payload, read_lock,
                                         release_lock)
from imagemasknet.training.config import TrainConfig

JOBS_DIR = ".jobs"
#: Refuse to launch when the runs folder's disk has less free space than this (checkpoints, logs).
MIN_FREE_BYTES = 200 * 1024 * 1024
ACTIVE_STATES = ("starting", "running", "cancelling")


_CHILDREN: dict[str, subprocess.Popen] = {}
_REAPERS: dict[str, threading.Thread] = {}


def _reap(process: subprocess.Popen, root: Path, name: str) -> None:
    """Wait for a trainer this process started (so it never lingers as a zombie), then note its exit
    code and free the lock."""
    code = process.wait()
    with contextlib.suppress(OSError):
        record = read_json(_record_path(root, name), {}) or {}
        record.update(returncode=code, ended=now())
        write_json(_record_path(root, name), record)
        status = RunFolder(root / name).status
        if record.get("cancel_requested") and status.get("state") == "running":
            # Stopped before its SIGTERM handler was in place (or force-stopped): record what happened.
            fields = {k: v for k, v in status.items() if k not in ("state", "updated")}
            RunFolder(root / name).write_status("cancelled", **fields, note=f"stopped by a signal (exit code {code})")
    with contextlib.suppress(OSError):
        release_lock(root, name, process.pid)
    with contextlib.suppress(OSError):
        log_endings(root, only=name)
    _CHILDREN.pop(name, None)
    _REAPERS.pop(name, None)


# --- launching ----------------------------------------------------------------------------------------


def _record_path(root: Path, name: str) -> Path:
    return root / JOBS_DIR / f"{name}.json"


def _output_path(root: Path, name: str) -> Path:
    return root / JOBS_DIR / f"{name}.log"


def new_run_name(arch: str, root: Path | None = None) -> str:
    """The run folder's name for a launch (the one naming rule, and no launch record may hold it yet)."""
    root = Path(root or runs_root())
    return naming_rule(arch, root, taken=lambda name: _record_path(root, name).exists())


def cli_args(config: TrainConfig) -> list[str]:
    """``imagemasknet train`` flags that reproduce ``config`` exactly (every field spelled out)."""
    args = []
    for f in fields(TrainConfig):
        value, flag = getattr(config, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif value is None:
            if f.name == "fold":
                args += [flag, "none"]
        else:
            args += [flag, repr(value) if isinstance(value, float) else str(value)]
    return args


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_can_start(config: TrainConfig, root: Path | None = None) -> None:
    """Refuse, with a sentence saying why, a launch that cannot work: no data set or a nearly full disk."""
    root = Path(root or runs_root())
    find_data_root(config.data)  # DatasetNotFoundError, which names every place it looked
    root.mkdir(parents=True, exist_ok=True)
    free = free_bytes(root)
    if free < MIN_FREE_BYTES:
        raise JobError(f"Only {free / 2**20:.0f} MB free on the disk of {root.resolve()}; a training run needs at "
                       f"least {MIN_FREE_BYTES / 2**20:.0f} MB for its checkpoints and logs. Free some space first.")


def start(config: TrainConfig, preset: str | None = None, *, admin: AdminSession | None = None) -> "Job":
    """Launch ``imagemasknet train`` for ``config`` in the background and return its :class:`Job`.

    Only for a signed-in administrator (``admin``). The config is validated again here; its run folder
    name is generated (``config.out_dir`` must be unset). Raises AccessError, ValueError (bad config),
    DatasetNotFoundError, :class:`JobError` (disk) or :class:`JobRunningError` (another job holds the
    lock). Every launch, refused ones included, goes to the audit log.
    """
    require_admin(admin)
    root = runs_root().resolve()
    try:
        job_started = _start(config, preset, root)
    except Exception as error:
        audit_log.append("launch", outcome="refused", session=admin, detail=str(error), root=root)
        raise
    audit_log.append("launch", run=job_started.name, session=admin, root=root,
                     detail=f"preset {preset or 'none'}: " + " ".join(cli_args(config)))
    return job_started


def _start(config: TrainConfig, preset: str | None, root: Path) -> "Job":
    if not isinstance(config, TrainConfig):
        raise TypeError("start() takes a TrainConfig; build one with config_from_form()")
    config.validated()
    if config.out_dir:
        raise ValueError("out_dir: run folders are named by the job launcher, not by the caller")
    check_can_start(config, root)
    (root / JOBS_DIR).mkdir(parents=True, exist_ok=True)
    name = new_run_name(config.arch, root)
    acquire_lock(root, name)
    try:
        run_dir = root / name
        argv = [sys.executable, "-m", "imagemasknet", "train", "--no-progress",
                *cli_args(TrainConfig(**{**config.to_dict(), "out_dir": str(run_dir)}))]
        record = {"run": name, "run_dir": str(run_dir), "preset": preset, "argv": argv, "config": config.to_dict(),
                  "started": now(), "pid": None, "cancel_requested": False, "returncode": None}
        write_json(_record_path(root, name), record)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(_output_path(root, name), "ab") as output:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True, close_fds=True, env=env)
        lock = LockInfo(process.pid, name, record["started"], process_start(process.pid))
        write_json(lock_path(root), lock_payload(lock))
        record.update(pid=process.pid, pid_start=lock.pid_start)
        write_json(_record_path(root, name), record)
    except BaseException:
        release_lock(root, name)
        raise
    _CHILDREN[name] = process
    reaper = threading.Thread(target=_reap, args=(process, root, name), name=f"reap-{name}", daemon=True)
    _REAPERS[name] = reaper
    reaper.start()
    return Job(name, root)


# --- watching -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    fraction: float
    epoch: int
    epochs: int | None
    batch: int
    batches: int
    seconds_left: float | None

    @property
    def text(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}" if self.epochs else f"epoch {self.epoch}"]
        if self.batches:
            parts.append(f"batch {self.batch}/{self.batches}")
        if self.seconds_left is not None:
            parts.append(f"about {format_seconds(self.seconds_left)} left")
        return " · ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class Job:
    """A launched (or merely present) run, read fresh from its files on every access."""

    name: str
    root: Path

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def record(self) -> dict:
        record = read_json(_record_path(self.root, self.name), {})
        return record if isinstance(record, dict) else {}

    @property
    def status(self) -> dict:
        return RunFolder(self.path).status

    @property
    def history(self) -> list[dict]:
        return RunFolder(self.path).history

    @property
    def config(self) -> dict:
        return RunFolder(self.path).config or self.record.get("config", {})

    @property
    def pid(self) -> int | None:
        pid = self.record.get("pid", self.status.get("pid"))
        return pid if isinstance(pid, int) else None

    @property
    def alive(self) -> bool:
        record = self.record
        if record:
            return process_alive(record.get("pid"), record.get("pid_start"))
        return process_alive(self.status.get("pid"))

    @property
    def state(self) -> str:
        """starting | running | cancelling | finished | failed | cancelled | crashed | unknown."""
        record, status, alive = self.record, self.status, self.alive
        cancel_requested = bool(record.get("cancel_requested"))
        state = status.get("state")
        if state in ("finished", "failed", "cancelled"):
            return state
        if alive:
            return "cancelling" if cancel_requested else ("running" if state == "running" else "starting")
        if cancel_requested:
            return "cancelled"
        if state == "running":
            return "crashed"  # status.json says running, but the process is gone
        if record:
            code = record.get("returncode")
            # A positive exit code is the trainer refusing (no data, bad folder); a signal or an
            # unknown end (the launcher is gone too) is a crash.
            return "failed" if isinstance(code, int) and code > 0 else "crashed"
        return "unknown"

    @property
    def progress(self) -> Progress:
        status, config = self.status, self.config
        epochs = status.get("epochs", config.get("epochs"))
        epochs = epochs if isinstance(epochs, int) and epochs > 0 else None
        epoch = status.get("epoch", 0) if isinstance(status.get("epoch"), int) else 0
        batch = status.get("batch", 0) if isinstance(status.get("batch"), int) else 0
        batches = status.get("batches", 0) if isinstance(status.get("batches"), int) else 0
        done = len(self.history)  # history.json is written before status.json catches up
        if done > epoch:
            epoch, batch = done, batches
        left = status.get("seconds_left")
        left = float(left) if isinstance(left, (int, float)) and self.state == "running" else None
        if not epochs:
            fraction = 0.0
        elif batches and batch < batches:
            # While an epoch runs, status.epoch counts the epochs already done.
            fraction = (epoch * batches + batch) / (epochs * batches)
        else:
            fraction = epoch / epochs
        if self.state == "finished":
            fraction = 1.0
        shown_epoch = min(epoch + 1, epochs) if batches and batch < batches and epochs else epoch
        return Progress(max(0.0, min(1.0, fraction)), shown_epoch, epochs, batch, batches, left)

    @property
    def error(self) -> str | None:
        """Why a run failed: the trainer's recorded error, else the last ``error:`` line it printed."""
        if self.status.get("error"):
            return str(self.status["error"])
        for line in reversed(self._read(_output_path(self.root, self.name)).splitlines()):
            if line.startswith("error:") or "Error:" in line:
                return line.removeprefix("error:").strip()
        return None

    @staticmethod
    def _read(path: Path) -> str:
        """A log's end, never through a link (a planted link shows nothing)."""
        try:
            return read_tail(path, LOG_TAIL_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The run's log.txt and the trainer's own output (tracebacks, ``error:`` lines), last lines."""
        parts = []
        for title, path in ((LOG, self.path / LOG), ("trainer output", _output_path(self.root, self.name))):
            text = self._read(path).rstrip()
            if text:
                parts.append(f"--- {title} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


def job(name: str, root: Path | None = None) -> Job:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a run name: {name!r}")
    return Job(name, Path(root or runs_root()).resolve())


def current_job(root: Path | None = None) -> Job | None:
    """The job named by a live lock, or None (no lock, or a stale one)."""
    root = Path(root or runs_root())
    lock = read_lock(root)
    if lock is None or not lock.run or not lock.alive:
        return None
    return job(lock.run, root)


def recent_jobs(root: Path | None = None, limit: int = 30) -> list[Job]:
    """Launched jobs and run folders, newest first (by launch time, else folder time)."""
    root = Path(root or runs_root()).resolve()
    when: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for record in (root / JOBS_DIR).glob("*.json"):
            when[record.stem] = record.stat().st_ctime
    if root.is_dir():
        for folder in root.iterdir():
            if not folder.name.startswith(".") and folder.name != ACTIVE_NAME and (folder / CONFIG).exists():
                with contextlib.suppress(OSError):
                    when.setdefault(folder.name, (folder / CONFIG).stat().st_mtime)
    names = sorted(when, key=lambda n: (when[n], n), reverse=True)[:limit]
    return [Job(n, root) for n in names]


def wait(name: str, timeout: float = 300, poll: float = 0.5, root: Path | None = None) -> Job:
    """Block until the job leaves starting/running/cancelling; TimeoutError (with its log) otherwise."""
    found = job(name, root)
    deadline = time.monotonic() + timeout
    while found.state in ACTIVE_STATES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {name} still {found.state} after {timeout:.0f} s\n{found.log_tail()}")
        time.sleep(poll)
    reaper = _REAPERS.get(name)
    if reaper is not None:  # started here: let the reaper note the exit code and free the lock
        reaper.join(timeout=10)
    return found


END_ACTIONS = {"finished": ("finish", "finished"), "failed": ("failure", "failed"), "crashed": ("failure", "crashed"),
               "cancelled": ("cancel", "cancelled")}


def log_endings(root: Path | None = None, only: str | None = None) -> int:
    """Write the audit entry for every launched job that has ended since (finished, failed, crashed or
    cancelled) and has none yet; returns how many. The reaper calls it when its trainer exits, and
    the pages call it too, so a job that outlived the server that launched it is logged all the same."""
    root = Path(root or runs_root()).resolve()
    logged = 0
    if not (root / JOBS_DIR).is_dir() and not audit_log.log_path(root).is_file():
        return 0  # nothing was ever launched or promoted here (and the runs folder is not created just to look)
    with folder_lock(root, "audit"):
        paths = [_record_path(root, only)] if only else sorted((root / JOBS_DIR).glob("*.json")) if (root / JOBS_DIR).is_dir() else []
        for path in paths:
            record = read_json(path)
            if not isinstance(record, dict) or record.get("end_logged") or not record.get("run"):
                continue
            if not only and record["run"] in _CHILDREN:
                continue  # launched by this process: its reaper logs the ending with the exit code
            found = Job(str(record["run"]), root)
            state = found.state
            if state not in END_ACTIONS:
                continue
            action, outcome = END_ACTIONS[state]
            audit_log.append(action, run=found.name, outcome=outcome, detail=found.error if action == "failure" else None,
                             root=root)
            write_json(path, {**record, "end_logged": now()})
            logged += 1
        audit_log.close_interrupted(root)
    return logged


def cancel(name: str | None = None, force: bool = False, root: Path | None = None, *,
           admin: AdminSession | None = None) -> Job | None:
    """Ask the job (default: the one holding the lock) to stop: SIGTERM to its process group, which
    the trainer turns into a "cancelled" run folder; ``force`` sends SIGKILL. Only for a signed-in
    administrator. Returns the job, or None when nothing was running."""
    require_admin(admin)
    root = Path(root or runs_root()).resolve()
    target = job(name, root) if name is not None else current_job(root)
    if target is None or not target.alive:
        return None
    record = target.record
    pid = record.get("pid")
    if not isinstance(pid, int):
        return None
    record["cancel_requested"] = True
    record["cancel_requested_at"] = now()
    write_json(_record_path(root, target.name), record)
    with contextlib.suppress(ProcessLookupError):
        # start_new_session made the trainer its own group leader: the group id is its pid.
        os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    audit_log.append("cancel", run=target.name, outcome="force stop sent" if force else "requested", session=admin,
                     root=root)
    return target
