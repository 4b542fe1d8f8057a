"""The one reader of run folders (the contract is in docs/architecture.md): training resumes from it, the job
launcher and promotion read their run through it, and the Training page lists and charts what it reads.

A :class:`RunFolder` reads each of ``config.json``, ``history.json``, ``status.json``, ``calibration.json`` and
the ``metrics*.json`` once, when first asked for it, and never raises for a missing or damaged file:
``problems`` says in sentences what is missing or broken (truncated JSON, an empty history, a run whose
process is gone, a report of the wrong shape). Anything a visitor's page may show is read without following
symbolic links and with a size cap (:func:`~imagemasknet.core.files.read_regular`), so a link planted in a run
folder shows a sentence, never the file it points to; and :func:`scan_runs` lists no folder that is itself a link. Make a new one to see the folder as it is now.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from imagemasknet.core.files import atomic_write, now, read_regular, read_tail, write_json
from imagemasknet.core.processes import run_state

#: The files of a run folder (docs/architecture.md, "The run folder"): every reader and writer names them so.
CONFIG, SPLIT, HISTORY, STATUS, LOG = "config.json", "split.json", "history.json", "status.json", "log.txt"
CALIBRATION, BEST, LAST, AVERAGE, STATE = ("calibration.json", "best.safetensors", "last.safetensors",
                                           "average.safetensors", "last.state.pt")
SOFT_TARGETS = "soft-targets.json"  # a distilling run's copy of its teachers' table (training/soft_targets.py)
_FOLD = re.compile(r"^(?P<preset>.+)-fold(?P<fold>\d+)$")
_RUN_FILES = (CONFIG, HISTORY, STATUS, LOG, BEST, LAST)
JSON_LIMIT = 16 * 2**20  # bytes: a run's history of 500 epochs is under 2 MB; a metrics file with ROC curves, 1 MB
LOG_TAIL_BYTES = 64 * 2**10  # how much of a log's end is read for its last lines


def metrics_file(label: str | None = None) -> str:
    """``metrics.json`` (an evaluation of the run's best checkpoint), or ``metrics-LABEL.json``."""
    return f"metrics-{label}.json" if label else "metrics.json"


def new_run_name(prefix: str, root: Path, taken=lambda name: False) -> str:
    """The one naming rule of run folders: ``<prefix>-<YYYYmmdd-HHMMSS>``, with ``-1``, ``-2`` … when the folder (or
    ``taken(name)``) already exists. Never from user input."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, suffix = f"{prefix}-{stamp}", 1
    while (Path(root) / name).exists() or taken(name):
        name, suffix = f"{prefix}-{stamp}-{suffix}", suffix + 1
    return name


def read_json_checked(path: Path, kind: type | tuple[type, ...] = (dict, list)) -> tuple[Any, str | None]:
    """(content, None), or (None, a sentence saying why not) for a missing, truncated, linked, oversized or odd
    file."""
    path = Path(path)
    try:
        text = read_regular(path, JSON_LIMIT).decode("utf-8")
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{path.name} cannot be read ({error})"
    if not text.strip():
        return None, f"{path.name} is empty"
    try:
        content = json.loads(text)
    except RecursionError:
        return None, f"{path.name} is nested too deeply to be a file a run writes"
    except ValueError as error:
        return None, f"{path.name} is not valid JSON — probably cut off while being written ({error})"
    if not isinstance(content, kind):
        return None, f"{path.name} holds a {type(content).__name__}, not what a run writes"
    return content, None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def report_problem(report: dict) -> str | None:
    """Why an evaluation report cannot be charted (its per-mode parts of the wrong shape), or None."""
    modes = report.get("modes")
    if not isinstance(modes, dict) or not modes:
        return "has no per-mode results"
    for mode, result in modes.items():
        if not isinstance(result, dict):
            return f"has a '{mode}' result that is not an object"
        confusion = result.get("confusion")
        if confusion is not None and not (isinstance(confusion, list) and all(
                isinstance(row, list) and len(row) == len(confusion) and all(_is_number(v) for v in row)
                for row in confusion)):
            return f"has a '{mode}' confusion matrix that is not a square table of counts"
        metrics = result.get("metrics", {})
        if not isinstance(metrics, dict) or not all(isinstance(m, dict) and _is_number(m.get("value"))
                                                    for m in metrics.values()):
            return f"has '{mode}' metrics without numeric values"
        roc = result.get("roc", {})
        if not isinstance(roc, dict) or not all(
                isinstance(curve, dict) and all(isinstance(curve.get(k), list) and all(_is_number(v) for v in curve[k])
                                                for k in ("fpr", "tpr")) for curve in roc.values()):
            return f"has '{mode}' ROC curves that are not lists of rates"
        reliability = result.get("reliability")
        if reliability is not None and not isinstance(reliability, (dict, list)):
            return f"has a '{mode}' reliability table of the wrong shape"
    return None


@dataclass
class RunFolder:
    """One run folder as far as it is written, read on first use."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def name(self) -> str:
        return self.path.absolute().name  # "." names the folder it stands for

    # Each file is read on first use only, so a caller that wants the status reads status.json alone.
    @cached_property
    def _config(self) -> tuple[dict, list[str]]:
        config, problem = read_json_checked(self.path / CONFIG, dict)
        return config or {}, [problem] if problem else []

    @cached_property
    def _status(self) -> tuple[dict, list[str]]:
        status, problem = read_json_checked(self.path / STATUS, dict)
        return status or {}, [problem] if problem else []

    @cached_property
    def _history(self) -> tuple[list[dict], list[str]]:
        problems = []
        evaluation_only = self.config.get("kind") == "own-data evaluation"  # `evaluate --data`: nothing trained
        history, problem = read_json_checked(self.path / HISTORY, list)
        if problem and "missing" in problem:
            problem = None if evaluation_only else "history.json is missing — no epoch has finished yet"
        if problem:
            problems.append(problem)
        history = history or []
        epochs = [e for e in history if isinstance(e, dict) and isinstance(e.get("epoch"), (int, float))]
        if len(epochs) < len(history):
            problems.append(f"history.json has {len(history) - len(epochs)} entries that are not epochs")
        if not epochs and not problem and not evaluation_only:
            problems.append("history.json has no finished epoch yet")
        return epochs, problems

    @cached_property
    def _calibration(self) -> tuple[dict, list[str]]:
        calibration, problem = read_json_checked(self.path / CALIBRATION, dict)
        return calibration or {}, [problem] if problem and "missing" not in problem else []

    @cached_property
    def _metrics(self) -> tuple[dict[str, dict], list[str]]:
        reports, problems = {}, []
        for metrics_file in sorted(self.path.glob("metrics*.json")):
            report, problem = read_json_checked(metrics_file, dict)
            if problem is None and (shape := report_problem(report)) is not None:
                problem = f"{metrics_file.name} {shape}"
            if problem:
                problems.append(problem)
            else:
                reports[metrics_file.stem] = report
        return reports, problems

    # --- writing: the one writer of each file (atomic, so a reader sees the old file or the new one) -----

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    def write_split(self, train: list[str], validation: list[str], test: list[str]) -> None:
        write_json(self.path / SPLIT, {"train": train, "validation": validation, "test": test})

    def write_soft_targets(self, table: bytes) -> None:
        atomic_write(self.path / SOFT_TARGETS, lambda tmp: Path(tmp).write_bytes(table))

    def write_history(self, history: list[dict]) -> None:
        write_json(self.path / HISTORY, history)

    def write_status(self, state: str, **fields) -> None:
        write_json(self.path / STATUS, {"state": state, **fields, "updated": now()})

    def write_calibration(self, temperatures: dict[str, float], fitted_on: str) -> None:
        write_json(self.path / CALIBRATION, {"temperature": temperatures, "fitted_on": fitted_on})

    def write_metrics(self, report: dict, label: str | None = None) -> Path:
        path = self.path / metrics_file(label)
        write_json(path, report)
        return path

    def append_log(self, message: str) -> None:
        with open(self.path / LOG, "a", encoding="utf-8") as log:
            log.write(f"{now()} {message}\n")

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        return self._config[0]

    @property
    def history(self) -> list[dict]:
        """The finished epochs, in order."""
        return self._history[0]

    @property
    def status(self) -> dict:
        return self._status[0]

    @property
    def calibration(self) -> dict:
        return self._calibration[0]

    @property
    def metrics(self) -> dict[str, dict]:
        """Evaluation reports by file stem (``metrics``, ``metrics-test``, …)."""
        return self._metrics[0]

    @cached_property
    def problems(self) -> list[str]:
        """What is missing or broken, as sentences (reads every file)."""
        problems = [*self._config[1], *self._status[1], *self._history[1], *self._calibration[1], *self._metrics[1]]
        state = self.state
        if state == "crashed":
            problems.append(f"status.json says running, but process {self.status.get('pid')} is gone — the run "
                            "crashed or was killed")
        elif state in ("failed", "cancelled"):
            problems.append(f"the run {state}" + (f": {self.status['error']}" if self.status.get("error") else ""))
        return problems

    @property
    def split(self) -> dict[str, list[str]]:
        """The scan ids of each part of the run (train, validation, test), as split.json lists them."""
        split, _ = read_json_checked(self.path / SPLIT, dict)
        return {part: list(ids) for part, ids in (split or {}).items() if isinstance(ids, list)}

    @property
    def temperatures(self) -> dict[str, float]:
        """Calibration temperature per inference mode (empty before calibration)."""
        temperatures = self.calibration.get("temperature", {})
        if not isinstance(temperatures, dict):
            return {}
        return {m: float(t) for m, t in temperatures.items() if isinstance(t, (int, float))}

    @property
    def arch(self) -> str:
        return str(self.config.get("arch", "?"))

    @property
    def preset(self) -> str:
        match = _FOLD.match(self.name)
        return match["preset"] if match else self.name

    @property
    def fold(self) -> int | None:
        match = _FOLD.match(self.name)
        if match:
            return int(match["fold"])
        fold = self.config.get("fold")
        return fold if isinstance(fold, int) else None

    @property
    def state(self) -> str:
        return run_state(self.status)

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def epochs_total(self) -> int | None:
        total = self.config.get("epochs", self.status.get("epochs"))
        return total if isinstance(total, int) else None

    @property
    def modes(self) -> list[str]:
        """Inference modes the run has numbers for (history or metrics), in image, mask order."""
        found: set[str] = set()
        for epoch in self.history:
            for split in ("heldout", "validation"):
                if isinstance(epoch.get(split), dict):
                    found |= set(epoch[split])
        for report in self.metrics.values():
            found |= set(report.get("modes", {}))
        return sorted(found, key=lambda m: (m != "image", m))

    @property
    def complete(self) -> bool:
        return self.state == "finished" and not self.problems

    def last_epoch(self, metric: str = "accuracy", split: str = "heldout") -> dict[str, float]:
        """``metric`` per mode at the last epoch that recorded it on ``split``."""
        for epoch in reversed(self.history):
            values = {m: v.get(metric) for m, v in (epoch.get(split) or {}).items() if isinstance(v, dict)}
            values = {m: float(v) for m, v in values.items() if isinstance(v, (int, float))}
            if values:
                return values
        return {}

    def log_tail(self, lines: int = 30) -> str:
        """The log's last lines (read from its last 64 KB, never through a link); "" when there is none."""
        try:
            tail = read_tail(self.path / LOG, LOG_TAIL_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(tail.splitlines()[-lines:])


def looks_like_run(path: Path) -> bool:
    return path.is_dir() and (any((path / name).exists() for name in _RUN_FILES) or any(path.glob("metrics*.json")))


def scan_runs(root: str | Path, inside: str | Path | None = None) -> list[RunFolder]:
    """Every run folder directly under ``root`` (or ``root`` itself when it is one), by name. A symbolic link is
    no run folder, wherever it leads; with ``inside``, a ``root`` that resolves outside it is left unread."""
    root = Path(root)
    if not root.is_dir() or (inside is not None and not _within(root, inside)):
        return []
    if looks_like_run(root) and (root / CONFIG).exists():
        return [RunFolder(root)]
    folders = [p for p in root.iterdir() if not p.name.startswith(".") and not p.is_symlink() and looks_like_run(p)]
    return [RunFolder(p) for p in sorted(folders, key=lambda p: _natural(p.name))]


def _within(path: Path, root: str | Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):
        return False


def shipped_history(bundle_folder: Path) -> list[dict]:
    """A model bundle's own per-epoch history (its ``history.json``), or []."""
    history, _ = read_json_checked(Path(bundle_folder) / HISTORY, list)
    return [e for e in history or [] if isinstance(e, dict)]


def results_folders(root: str | Path) -> list[str]:
    """What the app may show run folders from: the results root itself (``""``) and its sub-folders that
    hold run folders (a cross-validation's results, say), by name. Nothing outside ``root`` is listed, so a
    visitor chooses among folders the server found, never types a path."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = [""]
    try:
        children = sorted(root.iterdir(), key=lambda p: _natural(p.name))
    except OSError:
        return names
    for child in children:
        if child.name.startswith(".") or not child.is_dir() or not _within(child, root) or looks_like_run(child):
            continue
        try:
            if any(_within(p, root) and looks_like_run(p) for p in child.iterdir()):
                names.append(child.name)
        except OSError:
            continue
    return names


def results_folder(root: str | Path, name: str) -> Path | None:
    """The folder :func:`results_folders` listed under ``name``; None for any other name (``..``, an
    absolute path, a link out of the root)."""
    return Path(root) / name if name in results_folders(root) else None


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def cv_groups(runs: Iterable[RunFolder]) -> dict[str, list[RunFolder]]:
    """preset → its fold runs (``<preset>-fold<k>``), for presets with at least two folds."""
    groups: dict[str, list[RunFolder]] = {}
    for run in runs:
        if _FOLD.match(run.name):
            groups.setdefault(run.preset, []).append(run)
    return {p: sorted(r, key=lambda r: r.fold) for p, r in groups.items() if len(r) >= 2}
