"""Background training jobs for the Retrain page: launch, watch, cancel, promote, roll back.

Everything here works on files under :func:`imagemasknet.runs.runs_root`, so a job outlives the
Streamlit script (and the browser) that started it, and any later page finds it again:

``train.lock``
    One training job per machine. Created with ``O_CREAT | O_EXCL`` and holding
    ``{"pid", "pid_start", "run", "started"}``; a lock whose process is gone (or whose pid now
    belongs to another process) is stale and the next :func:`start` takes it over.
``.jobs/<run>.json`` and ``.jobs/<run>.log``
    What was launched (argv, pid, whether a cancel was asked for, the exit code when known) and
    the trainer's stdout/stderr. The run folder itself is created by the trainer, which insists
    on an empty folder, so the process output is kept beside it; :meth:`Job.log_tail` shows both.
``<run>/``
    The run folder ``imagemasknet train`` writes (config, status, history, checkpoints, log.txt).
``active`` → ``.models/<version>/``
    The promoted model: ``model.safetensors``, ``model.json`` (card-like: arch, config,
    temperature, version, promoted_at, held-out metrics) and ``previous/`` (the model it
    replaced, for :func:`rollback`). ``active`` is a symbolic link swapped with one
    ``os.replace``, so at every instant it names a complete, loadable folder; without it the
    shipped model is the active one. :meth:`imagemasknet.predict.Predictor.active` loads it.

The trainer runs as ``python -m imagemasknet train … --out-dir RUN --no-progress`` in its own
session (process group); :func:`cancel` sends SIGTERM to the group, which the trainer turns into a
clean "cancelled" run folder.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from . import audit_log
from .access import AdminSession, require_admin
from .config import PRESETS, TrainConfig
from .processes import process_alive, process_start
from .paths import ACTIVE_NAME, WEIGHTS_DIR, active_model_dir, active_path, runs_root
from .runs import Run, folder_lock, now, read_json, write_json

LOCK_NAME = "train.lock"
JOBS_DIR = ".jobs"
MODELS_DIR = ".models"
#: Refuse to launch when the runs folder's disk has less free space than this (checkpoints, logs).
MIN_FREE_BYTES = 200 * 1024 * 1024
#: TrainConfig fields the form never sets: paths on the server and machine settings.
SERVER_ONLY = ("data", "data_mode", "out_dir", "split_file", "device", "num_workers")
#: Held-out metrics compared between a finished run and the active model.
COMPARED_METRICS = ("accuracy", "macro_f1", "macro_auc", "recall_malignant", "lesion_dice")
ACTIVE_STATES = ("starting", "running", "cancelling")


class JobError(RuntimeError):
    """A job cannot be started, cancelled, promoted or rolled back; the message says why."""


class JobRunningError(JobError):
    """Another training job holds the lock."""

    def __init__(self, lock: "LockInfo"):
        self.lock = lock
        what = f"run {lock.run}" if lock.run else "a job"
        super().__init__(f"A training job is already running on this machine: {what} (process {lock.pid}, "
                         f"started {lock.started or 'just now'}). Wait for it to finish or cancel it first.")


class PromotionError(JobError):
    """A run that may not be promoted, or a promotion that failed (the active model is unchanged)."""


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
        status = read_json(root / name / "status.json")
        if record.get("cancel_requested") and isinstance(status, dict) and status.get("state") == "running":
            # Stopped before its SIGTERM handler was in place (or force-stopped): record what happened.
            write_json(root / name / "status.json", {**status, "state": "cancelled", "updated": now(),
                                                     "note": f"stopped by a signal (exit code {code})"})
    with contextlib.suppress(OSError):
        _release_lock(root, name, process.pid)
    with contextlib.suppress(OSError):
        log_endings(root, only=name)
    _CHILDREN.pop(name, None)
    _REAPERS.pop(name, None)


# --- the lock -----------------------------------------------------------------------------------------


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


def _acquire_lock(root: Path, run: str) -> LockInfo:
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
                json.dump(_lock_payload(me), out)
                out.flush()
                os.fsync(out.fileno())
            return me
    raise JobError(f"could not create the lock file {path}")


def _lock_payload(lock: LockInfo) -> dict:
    return {"pid": lock.pid, "pid_start": lock.pid_start, "run": lock.run, "started": lock.started}


def _release_lock(root: Path, run: str, pid: int | None = None) -> None:
    """Remove the lock if it still names ``run`` (and ``pid``, when given)."""
    with folder_lock(root, LOCK_NAME):
        held = read_lock(root)
        if held is not None and held.run == run and (pid is None or held.pid in (pid, os.getpid())):
            with contextlib.suppress(FileNotFoundError):
                lock_path(root).unlink()


# --- the form -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormField:
    """How the Retrain form shows one TrainConfig field (all from the dataclass and its metadata)."""

    name: str
    kind: str  # int | float | bool | choice | fold | limit
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple = ()

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def form_fields() -> list[FormField]:
    """One entry per TrainConfig field the form sets, in the dataclass's order."""
    from .models import list_models

    out = []
    for f in fields(TrainConfig):
        if f.name in SERVER_ONLY:
            continue
        meta, kind_name = f.metadata, str(f.type)
        common = dict(name=f.name, default=f.default, help=meta.get("help", ""))
        if f.name == "arch":
            out.append(FormField(kind="choice", choices=tuple(list_models()), **common))
        elif f.name == "fold":
            out.append(FormField(kind="fold", choices=(None, 0, 1, 2, 3, 4), **common))
        elif f.name == "limit":
            out.append(FormField(kind="limit", min=meta.get("min", 1), max=meta.get("max"), **common))
        elif "choices" in meta:
            out.append(FormField(kind="choice", choices=tuple(meta["choices"]), **common))
        elif kind_name in ("bool", "<class 'bool'>"):
            out.append(FormField(kind="bool", **common))
        elif kind_name in ("int", "<class 'int'>"):
            out.append(FormField(kind="int", min=meta.get("min", 0), max=meta.get("max"), **common))
        elif kind_name in ("float", "<class 'float'>"):
            out.append(FormField(kind="float", min=meta.get("min"), max=meta.get("max"), **common))
        else:
            raise TypeError(f"TrainConfig.{f.name} ({kind_name}) has no form widget")
    return out


def form_defaults(preset: str | None = None) -> dict[str, Any]:
    """The form's starting values: TrainConfig's defaults, with a preset's values over them."""
    values = {f.name: f.default for f in form_fields()}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
        values.update({k: v for k, v in PRESETS[preset].items() if k in values})
    return values


def _coerce(field: FormField, value: Any) -> Any:
    name = field.name
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if field.kind in ("fold", "limit"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "all", "all data")):
            return None
        value = _coerce(FormField(name, "int", None, ""), value)
        if field.kind == "limit" and value < 1:
            raise ValueError(f"limit: {value} is below the minimum 1 (leave it empty to use every scan)")
        return value
    if field.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a whole number, got {value!r}") from None
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        return int(number)
    if field.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{name}: {value!r} is not a finite number")
        return number
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected one of {', '.join(map(str, field.choices))}, got {value!r}")
    return value


def config_from_form(values: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """The server-side check of what the form sent: only form fields, each coerced to its type and
    checked by :meth:`TrainConfig.validated` (bounds, choices, registered model). Raises ValueError."""
    by_name = {f.name: f for f in form_fields()}
    refused = sorted(set(values) - set(by_name))
    if refused:
        raise ValueError(f"not settable from the form: {', '.join(refused)}")
    merged = form_defaults(preset)
    merged.update({name: _coerce(by_name[name], value) for name, value in values.items()})
    return TrainConfig(**merged).validated()


# --- launching ----------------------------------------------------------------------------------------


def _record_path(root: Path, name: str) -> Path:
    return root / JOBS_DIR / f"{name}.json"


def _output_path(root: Path, name: str) -> Path:
    return root / JOBS_DIR / f"{name}.log"


def new_run_name(arch: str, root: Path | None = None) -> str:
    """``<arch>-<YYYYmmdd-HHMMSS>``, with ``-1``, ``-2`` … when taken. Never from user input."""
    root = Path(root or runs_root())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, suffix = f"{arch}-{stamp}", 1
    while (root / name).exists() or _record_path(root, name).exists():
        name, suffix = f"{arch}-{stamp}-{suffix}", suffix + 1
    return name


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
    from .data import find_data_root

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
    _acquire_lock(root, name)
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
        write_json(lock_path(root), _lock_payload(lock))
        record.update(pid=process.pid, pid_start=lock.pid_start)
        write_json(_record_path(root, name), record)
    except BaseException:
        _release_lock(root, name)
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
        return Run(self.path).status

    @property
    def history(self) -> list[dict]:
        return Run(self.path).history

    @property
    def config(self) -> dict:
        return Run(self.path).config or self.record.get("config", {})

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
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The run's log.txt and the trainer's own output (tracebacks, ``error:`` lines), last lines."""
        parts = []
        for title, path in (("log.txt", self.path / "log.txt"), ("trainer output", _output_path(self.root, self.name))):
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
            if not folder.name.startswith(".") and folder.name != ACTIVE_NAME and (folder / "config.json").exists():
                with contextlib.suppress(OSError):
                    when.setdefault(folder.name, (folder / "config.json").stat().st_mtime)
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
    if not (root / JOBS_DIR).is_dir():
        return 0  # nothing was ever launched here (and the runs folder is not created just to look)
    with folder_lock(root, "audit"):
        paths = [_record_path(root, only)] if only else sorted((root / JOBS_DIR).glob("*.json"))
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


# --- the active model ---------------------------------------------------------------------------------


def read_card(folder: Path) -> dict | None:
    """A promoted model's ``model.json`` if the folder holds it and its weights, else None."""
    card = read_json(Path(folder) / "model.json")
    if not isinstance(card, dict) or not card.get("arch") or not (Path(folder) / "model.safetensors").is_file():
        return None
    return card


def active_card(root: Path | None = None) -> dict | None:
    """The promoted model's card, or None while the shipped model is the active one."""
    folder = active_model_dir(root)
    return read_card(folder) if folder is not None else None


def previous_card(root: Path | None = None) -> dict | None:
    folder = active_path(root)
    return read_card(folder.resolve() / "previous") if folder.exists() else None


def _check_loads(arch: str, weights: Path, image_size: int) -> None:
    from .runs import WeightsError, load_model

    try:
        load_model(arch, weights, image_size, "cpu")
    except (WeightsError, KeyError, ValueError) as error:
        raise PromotionError(f"{weights} does not load as {arch}: {error}") from error


def _copy_file(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_model(source: Path, target: Path) -> None:
    """Copy a promoted model's two files (not its ``previous/``) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    _copy_file(source / "model.safetensors", target / "model.safetensors")
    _copy_file(source / "model.json", target / "model.json")
    _fsync_dir(target)


def _last_heldout(history: list[dict]) -> dict:
    for entry in reversed(history):
        if isinstance(entry.get("heldout"), dict) and entry["heldout"]:
            return entry["heldout"]
    return {}


def run_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    """mode → metric → value for a run: its evaluation (metrics.json) where present, else the last
    epoch's held-out numbers."""
    run = Run(Path(run_dir))
    out: dict[str, dict[str, float]] = {}
    for mode, values in _last_heldout(run.history).items():
        if isinstance(values, dict):
            out[mode] = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    report = run.metrics
    if isinstance(report, dict) and isinstance(report.get("modes"), dict):
        for mode, result in report["modes"].items():
            for metric, entry in ((result or {}).get("metrics") or {}).items():
                value = entry.get("value") if isinstance(entry, dict) else entry
                if isinstance(value, (int, float)):
                    out.setdefault(mode, {})[metric] = float(value)
    return out


def check_promotable(name: str, root: Path | None = None) -> Run:
    """The run, if it finished and its best checkpoint loads; PromotionError saying why not otherwise."""
    root = Path(root or runs_root()).resolve()
    found = job(name, root)
    if not found.path.is_dir():
        raise PromotionError(f"run {name} has no run folder (it failed before training started)")
    state = found.state
    if state != "finished":
        raise PromotionError(f"run {name} is {state}; only a finished run can be promoted")
    run = Run(found.path)
    config = run.config
    best = found.path / "best.safetensors"
    if not config.get("arch") or not best.is_file():
        raise PromotionError(f"run {name} has no best.safetensors to promote")
    _check_loads(config["arch"], best, int(config.get("image_size", 256)))
    return run


def promotion_concerns(name: str, root: Path | None = None) -> list[str]:
    """Why promoting a finished run needs an administrator's explicit override, as sentences: it trained on
    a subset (``limit``), or it is below the active model on malignant sensitivity (image mode, where both
    are known). Empty when it may be promoted as it is."""
    root = Path(root or runs_root()).resolve()
    config = Run(root / name).config
    concerns = []
    if config.get("limit"):
        concerns.append(f"it trained on a subset of {config['limit']} scans per split (a quick check, not a model)")
    row = next((r for r in comparison(name, root) if r["metric"] == "recall_malignant" and r["mode"] == "image"), None)
    if row and row["active"] is not None and row["run"] is not None and row["run"] < row["active"]:
        concerns.append(f"its malignant sensitivity ({row['run']:.3f}) is below the active model's ({row['active']:.3f})")
    return concerns


def promote(name: str, root: Path | None = None, *, admin: AdminSession | None = None,
            override: str | None = None) -> dict:
    """Make a finished run the active model; the model it replaces becomes ``active/previous``.

    A run with :func:`promotion_concerns` is refused unless ``override`` gives the administrator's reason,
    which the audit log records with the concerns. The new model is staged in a fresh folder under
    ``.models/``, checked to load, and only then is the ``active`` link swapped with one ``os.replace``: a
    crash or a full disk at any point leaves the previous active model in place and loadable. Only for a
    signed-in administrator; audited. Returns the new ``model.json``.
    """
    require_admin(admin)
    root = Path(root or runs_root()).resolve()
    concerns = promotion_concerns(name, root) if Run(root / name).path.is_dir() else []
    reason = (override or "").strip()
    detail = f"override: {reason}; concerns: {'; '.join(concerns)}" if concerns and reason else None
    with _audited("promote", name, admin, root, detail):
        if concerns and not reason:
            raise PromotionError(f"run {name} is not promoted: {'; and '.join(concerns)}. Promote it anyway only with "
                                 "a reason, which the audit log records.")
        return _promote(name, root)


@contextlib.contextmanager
def _audited(action: str, run: str | None, admin: AdminSession, root: Path, detail: str | None = None) -> Iterator[None]:
    """Log ``action`` with the active model's hash before and after, whether it succeeds or not."""
    before = audit_log.active_model_hash(root)
    try:
        yield
    except Exception as error:
        audit_log.append(action, run=run, outcome="failed", session=admin, model_before=before,
                         model_after=audit_log.active_model_hash(root), detail=str(error), root=root)
        raise
    audit_log.append(action, run=run, session=admin, model_before=before,
                     model_after=audit_log.active_model_hash(root), root=root,
                     **({"detail": detail} if detail else {}))


def _promote(name: str, root: Path) -> dict:
    from .models import get_spec
    from .runs import run_temperatures

    run = check_promotable(name, root)
    config = run.config
    spec = get_spec(config["arch"])
    card = {
        "name": config["arch"], "arch": config["arch"], "version": name, "promoted_at": now(),
        "architecture": {"name": spec.name, "modes": list(spec.modes), "predicts_lesion": spec.predicts_lesion},
        "config": config, "temperature": run_temperatures(run.path), "source_run": str(run.path),
        "trained_on": f"run {name}" + (f", fold {config.get('fold')} held out" if config.get("fold") is not None
                                       else ", all data") + (f", subset of {config['limit']} scans per split"
                                                             if config.get("limit") else ""),
        "heldout": run_metrics(run.path),
    }
    with folder_lock(root, ACTIVE_NAME):
        current = active_card(root)
        staging = _stage(root, name, lambda folder: _fill_new(folder, run.path, card, root if current else None))
        _swap_active(root, staging)
    return card


def _fill_new(folder: Path, run_dir: Path, card: dict, previous_of: Path | None) -> None:
    _copy_file(run_dir / "best.safetensors", folder / "model.safetensors")
    write_json(folder / "model.json", card)
    if previous_of is not None:
        _copy_model(active_path(previous_of).resolve(), folder / "previous")


def _stage(root: Path, version: str, fill) -> Path:
    """A complete, checked model folder under ``.models/`` (removed again if anything fails)."""
    models = root / MODELS_DIR
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", suffix=".tmp", dir=models))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from other accounts
        fill(staging)
        card = read_card(staging)
        if card is None:
            raise PromotionError("the staged model folder is incomplete")
        _check_loads(card["arch"], staging / "model.safetensors", int(card.get("config", {}).get("image_size", 256)))
        _fsync_dir(staging)
        final = models / f"{version}-{time.strftime('%Y%m%d-%H%M%S')}-{staging.name[-12:-4]}"
        os.replace(staging, final)
        _fsync_dir(models)
        return final
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
            raise PromotionError(f"promotion failed ({reason}); the active model is unchanged") from error
        raise


def _swap_active(root: Path, target: Path | None) -> None:
    """Point ``active`` at ``target`` (None: back to the shipped model) in one atomic step."""
    link = active_path(root)
    if link.exists() and not link.is_symlink():
        # A plain folder (made by hand): move it aside first; a crash here falls back to shipped.
        os.replace(link, root / MODELS_DIR / f"manual-{time.strftime('%Y%m%d-%H%M%S')}")
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
    else:
        temporary = root / f".{ACTIVE_NAME}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(os.path.relpath(target, root), temporary, target_is_directory=True)
        os.replace(temporary, link)
    _fsync_dir(root)
    _prune(root, keep=target)


def _prune(root: Path, keep: Path | None, spare: int = 2) -> None:
    """Delete old model folders (leftovers of interrupted promotions included), sparing the active one
    and the ``spare`` newest others, which a reader may still be loading."""
    models = root / MODELS_DIR
    with contextlib.suppress(OSError):
        folders = sorted((p for p in models.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        kept = 0
        for folder in folders:
            if keep is not None and folder.resolve() == keep.resolve():
                continue
            if kept < spare and not folder.name.startswith("."):
                kept += 1
                continue
            shutil.rmtree(folder, ignore_errors=True)


def rollback(root: Path | None = None, *, admin: AdminSession | None = None) -> dict | None:
    """Restore the model the active one replaced. Returns the card now active, or None when that is the
    shipped model. The rolled-back model becomes ``previous``, so a second roll back undoes the first.
    Only for a signed-in administrator; audited."""
    require_admin(admin)
    root = Path(root or runs_root()).resolve()
    card = active_card(root)
    with _audited("rollback", card.get("version") if card else None, admin, root):
        return _rollback(root)


def _rollback(root: Path) -> dict | None:
    with folder_lock(root, ACTIVE_NAME):
        current = active_card(root)
        if current is None:
            raise PromotionError("nothing to roll back: the shipped model is the active model")
        folder = active_path(root).resolve()
        previous = read_card(folder / "previous")
        if previous is None:
            _swap_active(root, None)
            return None

        def fill(staging: Path) -> None:
            _copy_model(folder / "previous", staging)
            _copy_model(folder, staging / "previous")

        _swap_active(root, _stage(root, str(previous.get("version", "previous")), fill))
        return previous


def comparison(name: str, root: Path | None = None) -> list[dict]:
    """Rows {metric, mode, active, run}: a run's held-out numbers beside the active model's (the shipped
    card's cross-validation means, or a promoted model's own held-out numbers)."""
    from .models import DEFAULT_MODEL

    root = Path(root or runs_root()).resolve()
    mine = run_metrics(root / name)
    card = active_card(root)
    theirs: dict[str, dict[str, float]] = {}
    if card is not None:
        theirs = card.get("heldout") or {}
    else:
        shipped = read_json(WEIGHTS_DIR / f"{DEFAULT_MODEL}.json", {}) or {}
        for mode, metrics in (shipped.get("cross_validation") or {}).items():
            for metric, entry in (metrics or {}).items():
                if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
                    theirs.setdefault(mode, {})[metric] = float(entry["mean"])
    rows = []
    for mode in sorted(set(mine) | set(theirs), key=lambda m: (m != "image", m)):
        for metric in COMPARED_METRICS:
            a, b = (theirs.get(mode) or {}).get(metric), (mine.get(mode) or {}).get(metric)
            if a is None and b is None:
                continue
            rows.append({"metric": metric, "mode": mode, "active": a, "run": b,
                         "difference": None if a is None or b is None else b - a})
    return rows


def active_model_notice(root: Path | None = None) -> str | None:
    """The banner every page shows while a promoted model replaces the shipped one; None otherwise."""
    from .models import DEFAULT_MODEL

    card = active_card(root)
    if card is None:
        return None
    return (f"Active model: {card['version']}, a retrained {card['arch']} promoted {card.get('promoted_at', '?')}, "
            f"in place of the shipped {DEFAULT_MODEL}. Its figures are its own run's, not the shipped model's "
            "cross-validation; an administrator can roll it back on the Retrain page.")


def active_label(root: Path | None = None) -> str:
    """A short name for the active model: the promoted run's, or the shipped model's."""
    from .models import DEFAULT_MODEL

    card = active_card(root)
    return f"{card['version']} (promoted {card.get('promoted_at', '?')})" if card else f"shipped {DEFAULT_MODEL}"
