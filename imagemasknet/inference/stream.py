"""Streaming batch prediction: ``imagemasknet predict`` over any number of files in flat memory.

Files (a folder, listed files, or a file list) go through a ``torch.utils.data.DataLoader`` whose
worker processes read and check each scan (:func:`~imagemasknet.data.scans.read_scan`, the app's reader);
the main process classifies it with the :class:`~imagemasknet.inference.predictor.Predictor` (the app's path, so
the records are the same as for one scan at a time) and hands each record on as soon as it exists.
At most ``2 × workers`` decoded scans are in flight, and no record is kept, so memory does not grow
with the number of files. :class:`RecordWriter` appends records to a JSONL or CSV file, flushed one by
one; :func:`done_files` reads such a file back so that a re-run with ``--resume`` skips the files it
already holds (a record torn by a crash is cut off first and its file done again).

Records are the ``predict --json`` ones (``Prediction.record``: ``{"file", "predicted_class", "probabilities":
{normal, benign, malignant}, "suspicious_for_malignancy", "malignancy_threshold", "mode", "model",
"warnings", …}``), or ``{"file", "error": {"type", "message"}}``; :func:`csv_row` is their one CSV form.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import torch
from PIL import Image

from imagemasknet.core.files import atomic_write
from imagemasknet.data.dataset import CLASSES
from imagemasknet.data.scans import ScanError, read_mask, read_scan
from imagemasknet.inference.explain import heatmap_overlay

CSV_FIELDS = ["file", "predicted_class", "p_normal", "p_benign", "p_malignant", "suspicious_for_malignancy",
              "malignancy_threshold", "lesion_not_excluded", "trust", "low_confidence", "unfamiliar", "familiarity_score",
              "in_training_data", "lesion_long_mm", "lesion_short_mm", "mode", "model", "warnings", "error_type",
              "error_message"]
FORMATS = ("jsonl", "csv")


def scan_files(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Paths as given, folders expanded (sorted, recursively) to every file inside, whatever its name: each gets
    a record (a scan's, or an error saying why it was not read), so none is skipped without a word."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += [str(p) for p in sorted(p for p in path.rglob("*") if not p.is_dir())]
        else:
            files.append(str(path))
    return files


def printable(file: str) -> str:
    """A file name as text: names that are not UTF-8 (bytes a file system allows) get their odd bytes as
    ``\\xNN``, so any output can hold them and the same name always prints the same."""
    try:
        file.encode("utf-8")
        return file
    except UnicodeEncodeError:
        return os.fsencode(file).decode("utf-8", "backslashreplace")


def read_file_list(source: str) -> list[str]:
    """One path per line from a text file (``-``: standard input); blank lines and ``#`` comments skipped."""
    handle = sys.stdin if source == "-" else open(source, encoding="utf-8")
    try:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    finally:
        if handle is not sys.stdin:
            handle.close()


def error_record(file: str, error: BaseException) -> dict:
    return {"file": file, "error": {"type": type(error).__name__, "message": str(error)}}


class ScanFiles(torch.utils.data.Dataset):
    """Scans (and optional masks) read in the DataLoader's workers: each item is
    ``{"index", "file", "scan", "mask", "error"}``, a refused file an error record instead of a scan."""

    def __init__(self, files: list[str], masks: list[str] | None = None):
        if masks is not None and len(masks) != len(files):
            raise ValueError(f"{len(masks)} masks for {len(files)} scans; give one mask per scan, in order")
        self.files, self.masks = list(files), (list(masks) if masks is not None else None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, n: int) -> dict:
        file = self.files[n]
        item = {"index": n, "file": file, "scan": None, "mask": None, "error": None}
        try:
            scan = read_scan(file, name=Path(file).name)
            if self.masks is not None:
                item["mask"] = read_mask(self.masks[n], scan.pixels.shape, name=Path(self.masks[n]).name,
                                         original_hw=scan.original_hw)
            item["scan"] = scan
        except ScanError as error:
            item["error"] = error_record(file, error)["error"]
        return item


def _as_is(item):
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is the workers' job; leave the cores to each other and the model


def iter_records(predictor, files: list[str], masks: list[str] | None = None, workers: int = 0,
                 grad_cam_dir: str | os.PathLike | None = None) -> Iterator[dict]:
    """A record per file, in input order, as each is ready (scans read by ``workers`` processes). A Grad-CAM
    overlay that cannot be saved makes that file's record an error, not the end of the batch."""
    if not files:
        return
    loader = torch.utils.data.DataLoader(
        ScanFiles(files, masks), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
    )
    base = _common_folder(files)
    for item in loader:
        if item["error"] is not None:
            yield {"file": item["file"], "error": item["error"]}
            continue
        try:
            scan, mask = item["scan"], item["mask"]
            prediction = predictor.predict(scan, mask)
            if grad_cam_dir is not None:
                heat = predictor.grad_cam(scan, prediction.predicted_class, mask)
                overlay = Image.fromarray(heatmap_overlay(scan.rgb, heat))
                atomic_write(grad_cam_path(grad_cam_dir, item["file"], base), lambda tmp: overlay.save(tmp, "PNG"))
            yield prediction.record(item["file"])
        except (ScanError, OSError) as error:
            yield error_record(item["file"], error)


def _common_folder(files: list[str]) -> Path:
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))


def grad_cam_path(grad_cam_dir: str | os.PathLike, file: str, base: Path) -> Path:
    """Where a file's Grad-CAM overlay goes: its path below the input files' common folder, kept, so scans of
    the same name in different folders never overwrite each other's overlay."""
    relative = Path(os.path.abspath(file)).relative_to(base)
    return Path(grad_cam_dir) / relative.parent / f"{relative.stem}.gradcam.png"


# --- output files -------------------------------------------------------------------------------------


def format_for(path: str | os.PathLike) -> str:
    """``csv`` for a .csv file, ``jsonl`` otherwise (.jsonl, .ndjson, .json, …)."""
    return "csv" if str(path).lower().endswith(".csv") else "jsonl"


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def csv_text(value) -> str:
    """Text as a CSV cell holds it: on one line, printable, and with a leading ``'`` where a spreadsheet would
    run it as a formula."""
    value = printable(_one_line("" if value is None else str(value)))
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_row(record: dict) -> list[str]:
    """The CSV columns of a record (:data:`CSV_FIELDS`): every field on one line, so one record is one line,
    and text a spreadsheet would run as a formula gets a leading ``'`` (a file named ``=cmd()`` stays text)."""
    p = record.get("probabilities") or {}
    error = record.get("error") or {}

    def number(value, digits: int = 6) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    def flag(value) -> str:
        return "" if value is None else str(bool(value)).lower()

    axes = record.get("lesion_axes_mm") or (None, None)
    return [csv_text(record["file"]), record.get("predicted_class", ""), *(number(p.get(c)) for c in CLASSES),
            flag(record.get("suspicious_for_malignancy")), number(record.get("malignancy_threshold")),
            flag(record.get("lesion_not_excluded")), record.get("trust", ""),
            flag(record.get("low_confidence")), flag(record.get("unfamiliar")), number(record.get("familiarity_score"), 3),
            csv_text(record.get("in_training_data")), number(axes[0], 1), number(axes[1], 1),
            record.get("mode", ""), record.get("model", ""),
            csv_text(" | ".join(record.get("warnings", []))), error.get("type", ""), csv_text(error.get("message", ""))]


def not_utf8(record: dict) -> bool:
    """Whether a record's file name cannot be written as UTF-8 (then the JSON escapes it, losslessly)."""
    return printable(str(record.get("file", ""))) != record.get("file", "")


class RecordWriter:
    """Writes records as they come to a JSONL or CSV file (appending) or stream, flushing each one."""

    def __init__(self, target: str | os.PathLike | IO[str], fmt: str | None = None):
        self.fmt = fmt or (format_for(target) if not hasattr(target, "write") else "jsonl")
        if self.fmt not in FORMATS:
            raise ValueError(f"output format '{self.fmt}' is not one of {', '.join(FORMATS)}")
        if hasattr(target, "write"):
            self.handle, self._owned = target, False
            fresh = True
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists() or path.stat().st_size == 0
            self.handle, self._owned = open(path, "a", encoding="utf-8", newline=""), True
        self._csv = csv.writer(self.handle, lineterminator="\n") if self.fmt == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writerow(CSV_FIELDS)
            self.handle.flush()

    def write(self, record: dict) -> None:
        if self._csv is not None:
            self._csv.writerow(csv_row(record))
        else:
            self.handle.write(json.dumps(record, ensure_ascii=not_utf8(record)) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self._owned:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def done_files(path: str | os.PathLike, fmt: str | None = None) -> dict[str, bool]:
    """Files that already have a record in an output file → whether it is a prediction (not an error).

    A last line without its newline (the writer was killed mid-record) is cut off the file, so that
    file is predicted again and appended whole.
    """
    path = Path(path)
    if not path.exists():
        return {}
    fmt = fmt or format_for(path)
    done: dict[str, bool] = {}
    good_end = 0
    with open(path, "rb") as handle:
        offset = 0
        for n, raw in enumerate(handle):
            if not raw.endswith(b"\n"):
                break  # torn tail
            offset += len(raw)
            good_end = offset
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.strip():
                continue
            if fmt == "csv":
                row = next(csv.reader([line]))
                if n == 0 and row == CSV_FIELDS:
                    continue
                if row:
                    done[row[0]] = not row[CSV_FIELDS.index("error_type")]
            else:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "file" in record:
                    done[str(record["file"])] = "error" not in record
    if good_end < path.stat().st_size:
        os.truncate(path, good_end)
    return done


@dataclass
class Summary:
    predicted: int = 0  # new predictions written in this run
    errors: int = 0  # new error records
    skipped: int = 0  # files that already had a record (--resume)
    predicted_before: int = 0  # of the skipped, those that were predictions


def predict_to_file(predictor, files: list[str], out: str | os.PathLike, *, resume: bool = False,
                    masks: list[str] | None = None, workers: int = 0, grad_cam_dir: str | None = None,
                    fmt: str | None = None, on_record: Callable[[dict], None] | None = None) -> Summary:
    """Stream ``files`` through the predictor into ``out`` (JSONL or CSV by suffix). With ``resume``,
    files already in ``out`` are skipped; without it, an existing ``out`` is refused."""
    out = Path(out)
    summary = Summary()
    if out.exists() and out.stat().st_size and not resume:
        raise FileExistsError(f"{out} already exists; pass --resume to continue it, or choose another file")
    done = done_files(out, fmt) if resume else {}
    if done:
        written = csv_text if (fmt or format_for(out)) == "csv" else (lambda f: f)
        keep = [n for n, f in enumerate(files) if written(f) not in done]
        summary.skipped = len(files) - len(keep)
        summary.predicted_before = sum(1 for f in files if done.get(written(f)))
        files = [files[n] for n in keep]
        masks = [masks[n] for n in keep] if masks is not None else None
    with RecordWriter(out, fmt) as writer:
        for record in iter_records(predictor, files, masks, workers, grad_cam_dir):
            writer.write(record)
            if "error" in record:
                summary.errors += 1
            else:
                summary.predicted += 1
            if on_record is not None:
                on_record(record)
    return summary
