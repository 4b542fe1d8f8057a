"""Run folders and the files in them: atomic writes, weights, status, listing.

A run folder holds ``config.json``, ``history.json``, ``status.json``, ``best.safetensors``,
``last.safetensors``, ``log.txt`` and, once evaluated, ``metrics.json``. Every JSON and weights file
is written to a temporary file in the same folder and renamed over the target, so a crash or a kill
never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .processes import run_state

RUN_STATES = ("running", "finished", "failed", "cancelled")


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
    os.chmod(tmp, mode)
    try:
        write(tmp)
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
        import fcntl
    except ImportError:  # not POSIX: callers' O_EXCL and os.replace still keep writers apart
        yield
        return
    with open(root / f".{name}.guard", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file we wrote; a missing or unreadable file gives ``default``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def save_weights(path: Path, model: torch.nn.Module, metadata: dict[str, str] | None = None, half: bool = False) -> None:
    """``half``: store float16 copies of the learned weights (half the size; :func:`load_weights` casts
    them back to the model's float32). Batch-norm statistics stay float32: running variances span more
    than float16 resolves well."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        statistics = ("running_mean", "running_var")
        state = {k: v.half() if v.dtype == torch.float32 and not k.endswith(statistics) else v for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={**(metadata or {}), **({"storage": "float16"} if half else {})}))


def save_state(path: Path, state: dict) -> None:
    """Training state beside ``last.safetensors`` (optimizer, scheduler, epoch, RNG): tensors, dicts,
    lists and numbers only, so :func:`load_state` can read it with ``weights_only=True``."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Read a :func:`save_state` file without unpickling arbitrary objects (no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable state is the same refusal
        raise WeightsError(f"cannot read training state {path}: {error}") from error


class WeightsError(RuntimeError):
    """A weights file that is missing, unreadable, or does not fit the model."""


def load_weights(path: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load a safetensors file (no pickle, so no code runs) into ``model`` strictly."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise WeightsError(f"cannot read weights {path}: {error}") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"weights {path} do not fit this model: {error}") from error
    return model


@dataclass
class Run:
    """A view of one run folder; every field tolerates a half-written folder."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        return read_json(self.path / "config.json", {}) or {}

    @property
    def history(self) -> list[dict]:
        history = read_json(self.path / "history.json", [])
        return history if isinstance(history, list) else []

    @property
    def status(self) -> dict:
        return read_json(self.path / "status.json", {}) or {}

    @property
    def metrics(self) -> dict | None:
        return read_json(self.path / "metrics.json")

    @property
    def state(self) -> str:
        return run_state(self.status)

    def weights(self, which: str = "best") -> Path | None:
        for name in (f"{which}.safetensors", "last.safetensors"):
            if (self.path / name).exists():
                return self.path / name
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.path / "log.txt").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def list_runs(root: Path | None = None) -> list[Run]:
    from .paths import runs_root

    root = Path(root or runs_root())
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    return sorted(runs, key=lambda r: r.path.stat().st_mtime, reverse=True)


def load_model(arch: str, weights: Path, image_size: int = 256, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build a registered model and fill it from a safetensors file, in eval mode."""
    from .models import build_model

    model = build_model(arch, image_size=image_size)
    load_weights(weights, model)
    return model.to(device).eval()


def run_temperatures(run_dir: Path) -> dict[str, float]:
    calibration = read_json(Path(run_dir) / "calibration.json", {}) or {}
    temperatures = calibration.get("temperature", {})
    return {m: float(t) for m, t in temperatures.items()} if isinstance(temperatures, dict) else {}
