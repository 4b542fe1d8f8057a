"""What the Gallery page shows, computed here so the page only draws it.

* :func:`case_rows` — one :class:`CaseRow` per scan: label, fold of the committed split, near-duplicate
  group and label conflict, and the shipped model's prediction;
* :func:`predict_all` — the shipped model over every scan, once, in batches, cached on disk under
  :func:`imagemasknet.core.paths.cache_dir` keyed by the weights file's hash, the data fingerprint, the
  inference mode and the temperature;
* :func:`duplicate_info` — near-duplicate groups and label conflicts: the audit's (cached on disk),
  else the bundled copy's manifest, else the committed split's groups;
* :func:`filter_rows`, :func:`page_of` — the grid's filters and pagination;
* :func:`thumbnail`, :func:`overlay` — scans with their mask as an outline or a filled tint.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from imagemasknet.core.files import file_sha256, try_folder_lock, write_json
from imagemasknet.core.paths import cache_dir
from imagemasknet.data.dataset import CLASSES, Arrays, Dataset, listing_fingerprint
from imagemasknet.data.duplicates import audit
from imagemasknet.data.splits import SplitError, committed_groups
from imagemasknet.evaluation.decision import is_low_confidence
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.evaluation.metrics import softmax
from imagemasknet.inference.explain import fill, outline
from imagemasknet.models.bundle import read_out_of_fold

THUMB_SIZE = 192
PER_PAGE = 24
MASK_COLOUR = (0, 230, 118)  # the reference (ground-truth) mask
MODEL_COLOUR = (255, 166, 0)  # the model's predicted lesion
STYLES = ("outline", "filled")
FLAGS = ("near-duplicate", "label conflict", "no flag")
RESULTS = ("correct", "wrong", "low confidence")
_PREDICTIONS_VERSION = "v1"
_AUDIT_VERSION = "v1"


# --- rows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseRow:
    """One scan as the gallery lists it."""

    id: str
    label: str
    file: str
    fold: int | None = None
    group: str | None = None  # near-duplicate group name, None when the scan has no copy
    conflict: bool = False  # its group holds more than one label
    probabilities: dict[str, float] | None = None  # the model's calibrated probabilities

    @property
    def predicted(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float | None:
        return None if not self.probabilities else float(max(self.probabilities.values()))

    @property
    def correct(self) -> bool | None:
        return None if self.predicted is None else self.predicted == self.label

    @property
    def low_confidence(self) -> bool:
        return self.probabilities is not None and is_low_confidence(self.probabilities)


def fold_of(folds: list[list[str]]) -> dict[str, int]:
    """image id → index of the fold that holds it."""
    return {i: k for k, fold in enumerate(folds) for i in fold}


def case_rows(busi: Dataset, folds: dict[str, int] | None = None, duplicates: "DuplicateInfo | None" = None,
              predictions: dict[str, dict[str, float]] | None = None) -> list[CaseRow]:
    folds, predictions = folds or {}, predictions or {}
    group_of = duplicates.group_of if duplicates else {}
    conflicts = duplicates.conflict_ids if duplicates else set()
    return [
        CaseRow(c.id, c.label, c.image_path.name, folds.get(c.id), group_of.get(c.id), c.id in conflicts,
                predictions.get(c.id))
        for c in busi.cases
    ]


def filter_rows(rows: Iterable[CaseRow], classes: Iterable[str] = (), folds: Iterable[int] = (),
                flags: Iterable[str] = (), results: Iterable[str] = (), query: str = "") -> list[CaseRow]:
    """Rows that pass every filter. An empty filter passes everything.

    ``classes``, ``folds`` and ``results`` keep a row that matches any of the chosen values;
    ``flags`` keeps a row that has every chosen flag ("no flag": in no near-duplicate group);
    ``query`` is a case-insensitive substring of the id or the file name.
    """
    classes, folds, flags, results = set(classes), set(folds), set(flags), set(results)
    query = query.strip().lower()
    kept = []
    for row in rows:
        if classes and row.label not in classes:
            continue
        if folds and row.fold not in folds:
            continue
        if "near-duplicate" in flags and row.group is None:
            continue
        if "label conflict" in flags and not row.conflict:
            continue
        if "no flag" in flags and row.group is not None:
            continue
        if results:
            matched = (("correct" in results and row.correct is True) or ("wrong" in results and row.correct is False)
                       or ("low confidence" in results and row.low_confidence))
            if not matched:
                continue
        if query and query not in row.id.lower() and query not in row.file.lower():
            continue
        kept.append(row)
    return kept


def sort_rows(rows: list[CaseRow], order: str = "dataset") -> list[CaseRow]:
    """``dataset`` (as loaded), ``confidence`` (least confident first) or ``wrong first``."""
    if order == "confidence":
        return sorted(rows, key=lambda r: (r.confidence if r.confidence is not None else 2.0))
    if order == "wrong first":
        return sorted(rows, key=lambda r: (r.correct is not False, -(r.confidence or 0.0)))
    return list(rows)


def page_count(n: int, per_page: int = PER_PAGE) -> int:
    return max(1, math.ceil(n / per_page))


def page_of(rows: list, page: int, per_page: int = PER_PAGE) -> list:
    """Page ``page`` (1-based, clamped to the pages there are) of ``rows``."""
    page = min(max(1, page), page_count(len(rows), per_page))
    return rows[(page - 1) * per_page: page * per_page]


# --- images ---------------------------------------------------------------------------------------


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey


def overlay(rgb: np.ndarray, mask: np.ndarray | None, style: str = "outline",
            colour: tuple[int, int, int] = MASK_COLOUR, thickness: int = 3) -> np.ndarray:
    """The mask on an RGB scan, as an outline or a filled tint (an empty mask leaves the scan as is)."""
    if mask is None or not mask.any():
        return rgb
    if style == "filled":
        return fill(rgb, mask, colour, 0.4)
    return outline(rgb, mask, colour, thickness)


THUMB_BOX = (THUMB_SIZE, THUMB_SIZE * 3 // 4)  # every tile's picture: the scan in its own shape, letterboxed


def thumbnail(image: np.ndarray, mask: np.ndarray, style: str = "outline", size: int = THUMB_SIZE,
              aspect: float = 1.0) -> np.ndarray:
    """An RGB thumbnail from a cached square scan and its mask, back in the scan's own shape (``aspect`` =
    width / height) and centred on black in a fixed box, so every tile is the same size."""
    box_w, box_h = size, size * 3 // 4
    width, height = (box_w, max(1, round(box_w / aspect))) if aspect >= box_w / box_h else (max(1, round(box_h * aspect)), box_h)
    small = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height),
                                                                               Image.Resampling.NEAREST)) > 127
    # outline() scales its thickness by (image side / 512); this asks for a 2-pixel line.
    drawn = overlay(grey_to_rgb(small), small_mask, style, thickness=round(2 * 512 / max(width, height, 1)))
    canvas = np.zeros((box_h, box_w, 3), np.uint8)
    top, left = (box_h - height) // 2, (box_w - width) // 2
    canvas[top:top + height, left:left + width] = drawn
    return canvas


def encode(rgb: np.ndarray, format: str = "JPEG") -> bytes:
    """An RGB array as image-file bytes (JPEG for thumbnails: small and quick to send)."""
    out = io.BytesIO()
    image = Image.fromarray(rgb)
    if format == "JPEG":
        image.save(out, format="JPEG", quality=88)
    else:
        image.save(out, format=format)
    return out.getvalue()


def thumbnail_bytes(arrays: Arrays, image_id: str, style: str = "outline", size: int = THUMB_SIZE,
                    index: dict[str, int] | None = None, aspect: float = 1.0) -> bytes:
    row = (index or {i: n for n, i in enumerate(arrays.ids)})[image_id]
    return encode(thumbnail(arrays.images[row], arrays.masks[row], style, size, aspect))


def aspects(busi: Dataset) -> dict[str, float]:
    """Each scan's width / height, from its file header (the cached arrays are square)."""
    out = {}
    for case in busi.cases:
        try:
            with Image.open(case.image_path) as image:
                out[case.id] = image.width / image.height
        except OSError:
            out[case.id] = 1.0
    return out


def data_uri(image_bytes: bytes, mime: str = "image/jpeg") -> str:
    """Image bytes as a ``data:`` URI: the page sends thumbnails inline, so the browser shows a page of 24
    without 24 more requests to a server that is busy running the script."""
    return f"data:{mime};base64,{base64.b64encode(image_bytes).decode('ascii')}"


# --- what the marks come from -------------------------------------------------------------------------


def out_of_fold(path: Path | None, busi: Dataset) -> dict[str, dict[str, dict[str, float]]] | None:
    """mode → id → calibrated probabilities from a bundle's ``oof.json`` (its cross-validation: each scan as judged
    by the fold model that never trained on it), for the scans of ``busi`` whose files are byte for byte the ones
    judged; None when the bundle has none or no scan matches."""
    if path is None:
        return None
    try:
        rows = {row["id"]: row for row in read_out_of_fold(path)}
    except (OSError, ValueError, KeyError, TypeError):
        return None

    by_mode: dict[str, dict[str, dict[str, float]]] = {}
    for case in busi.cases:
        row = rows.get(case.id)
        try:
            if row is None or file_sha256(case.image_path)[:16] != row["sha256"]:
                continue
            for mode, probabilities in row["probabilities"].items():
                by_mode.setdefault(mode, {})[case.id] = {c: float(probabilities[c]) for c in CLASSES}
        except (OSError, KeyError, TypeError, ValueError):
            continue
    return by_mode or None


# --- predictions of the shipped model over the whole data set -------------------------------------


def predictions_path(weights_sha: str, data_fingerprint: str, mode: str, temperature: float) -> Path:
    key = hashlib.sha256(f"{weights_sha}|{data_fingerprint}|{mode}|{temperature!r}|{_PREDICTIONS_VERSION}"
                         .encode()).hexdigest()[:20]
    return cache_dir() / f"gallery-predictions-{mode}-{key}.json"


def cached_predictions(path: Path, ids: list[str]) -> dict[str, dict[str, float]] | None:
    """The predictions stored at ``path`` when they cover exactly ``ids``; None otherwise."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["ids"] != ids:
            return None
        return {i: dict(zip(stored["classes"], map(float, p))) for i, p in zip(stored["ids"], stored["probabilities"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: recomputed


def predict_all(busi: Dataset, arrays: Arrays, predictor, mode: str = "image", batch_size: int = 32,
                progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """Calibrated probabilities of ``predictor`` for every scan of ``arrays`` in ``mode``.

    Computed once in batches over the cached 256-px arrays (the input the model was trained and
    evaluated on) and stored on disk; later calls read the file. ``progress(done, total)`` is called
    after every batch while computing.
    """
    temperature = float(predictor.temperatures.get(mode, 1.0))
    path = predictions_path(predictor.weights_sha256, listing_fingerprint(busi), mode, temperature)
    cached = cached_predictions(path, arrays.ids)
    if cached is not None:
        return cached
    logits, total = [], len(arrays.ids)
    for start in range(0, total, batch_size):
        stop = min(total, start + batch_size)
        chunk = Arrays(arrays.ids[start:stop], arrays.labels[start:stop], arrays.images[start:stop],
                       arrays.masks[start:stop])
        logits.append(predict_arrays(predictor.model, predictor.spec, chunk, mode, predictor.device,
                                     batch_size).logits)
        if progress:
            progress(stop, total)
    probabilities = softmax(np.concatenate(logits), temperature) if logits else np.zeros((0, len(CLASSES)))

    write_json(path, {"model": predictor.name, "weights_sha256": predictor.weights_sha256, "mode": mode,
                      "temperature": temperature, "classes": list(CLASSES), "ids": list(arrays.ids),
                      "probabilities": np.round(probabilities, 6).tolist()})
    return {i: dict(zip(CLASSES, map(float, p))) for i, p in zip(arrays.ids, probabilities)}


# --- near-duplicate groups and label conflicts ----------------------------------------------------


@dataclass
class DuplicateInfo:
    """Near-duplicate groups of the loaded scans (only groups with two or more of them)."""

    groups: dict[str, list[str]]  # name → ids
    labels: dict[str, str]  # id → label
    source: str  # "audit", "manifest" or "split"
    counts: dict[str, dict] = field(default_factory=dict)  # the audit's class counts, when it ran

    @property
    def group_of(self) -> dict[str, str]:
        return {i: name for name, ids in self.groups.items() for i in ids}

    @property
    def conflicts(self) -> dict[str, list[str]]:
        return {name: ids for name, ids in self.groups.items() if len({self.labels[i] for i in ids}) > 1}

    @property
    def conflict_ids(self) -> set[str]:
        return {i for ids in self.conflicts.values() for i in ids}

    def members(self, image_id: str) -> list[str]:
        name = self.group_of.get(image_id)
        return list(self.groups[name]) if name else []

    def group_table(self) -> list[dict]:
        return [{"group": name, "size": len(ids), "labels": ", ".join(sorted({self.labels[i] for i in ids},
                                                                           key=CLASSES.index)),
                 "label conflict": name in self.conflicts, "members": ", ".join(ids)}
                for name, ids in self.groups.items()]


SOURCE_TEXT = {
    "audit": "the near-duplicate audit of this copy (`imagemasknet audit`)",
    "manifest": "the bundled copy's manifest (`near_dup_group`, same speckle method as the audit)",
    "split": "the committed split's near-duplicate groups (the full audit has not run on this copy)",
}


def _grouped(pairs: Iterable[tuple[str, str]], busi: Dataset) -> dict[str, list[str]]:
    """name → ids for groups (name, id) with two or more loaded members, in dataset order."""
    order = {i: n for n, i in enumerate(busi.ids)}
    groups: dict[str, list[str]] = {}
    for name, image_id in pairs:
        if image_id in order:
            groups.setdefault(name, []).append(image_id)
    kept = {name: sorted(set(ids), key=order.get) for name, ids in groups.items() if len(set(ids)) > 1}
    return dict(sorted(kept.items(), key=lambda item: order[item[1][0]]))


def audit_path(busi: Dataset) -> Path:
    return cache_dir() / f"audit-{listing_fingerprint(busi)[:20]}-{_AUDIT_VERSION}.json"


def cached_audit(busi: Dataset) -> dict | None:
    try:
        stored = json.loads(audit_path(busi).read_text(encoding="utf-8"))
        stored["groups"], stored["counts"]
        return stored
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_audit(busi: Dataset, arrays: Arrays | None = None) -> dict | None:
    """Run the near-duplicate audit once per copy of the data and store its JSON next to the other caches (about
    13 s of CPU on BUSI); None while another visitor's audit runs, so clicks never stack up on the server."""
    with try_folder_lock(cache_dir(), "duplicate-audit") as mine:
        if not mine:
            return None
        cached = cached_audit(busi)
        if cached is not None:
            return cached
        result = audit(busi, arrays).to_json()
        write_json(audit_path(busi), result)
        return result


def manifest_pairs(busi: Dataset) -> list[tuple[str, str]] | None:
    """(group, id) from the bundled copy's manifest.csv, None when there is no manifest."""
    manifest = busi.root.parent / "manifest.csv"
    if not manifest.is_file():
        return None
    try:
        with open(manifest, newline="", encoding="utf-8") as rows:
            return [(row["near_dup_group"], Path(row["image"]).stem) for row in csv.DictReader(rows)
                    if row.get("near_dup_group")]
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return None


def duplicate_info(busi: Dataset, audit_json: dict | None = None) -> DuplicateInfo:
    """Groups from the audit (given, or cached on disk), else the manifest, else the committed split."""
    labels = {c.id: c.label for c in busi.cases}
    audit_json = audit_json or cached_audit(busi)
    if audit_json is not None:
        pairs = [(g["name"], i) for g in audit_json.get("groups", []) for i in g.get("ids", [])]
        return DuplicateInfo(_grouped(pairs, busi), labels, "audit", audit_json.get("counts", {}))
    pairs = manifest_pairs(busi)
    if pairs is not None:
        return DuplicateInfo(_grouped(pairs, busi), labels, "manifest")

    try:
        committed = committed_groups()
    except SplitError:
        committed = {}
    return DuplicateInfo(_grouped(((g, i) for i, g in committed.items()), busi), labels, "split")


def class_counts(busi: Dataset, arrays: Arrays | None = None) -> list[dict]:
    """Images, mask files, multi-mask images and empty masks per class (and in all)."""
    empty = set()
    if arrays is not None:
        empty = {i for i, m in zip(arrays.ids, arrays.masks) if not m.any()}
    rows = []
    for name in (*CLASSES, "all"):
        cases = [c for c in busi.cases if name in ("all", c.label)]
        rows.append({"class": name, "images": len(cases), "mask files": sum(len(c.mask_paths) for c in cases),
                     "multi-mask images": sum(len(c.mask_paths) > 1 for c in cases),
                     "empty masks": sum(c.id in empty for c in cases)})
    return rows


def audit_summary(busi: Dataset, duplicates: DuplicateInfo, arrays: Arrays | None = None) -> list[dict]:
    """The small table of the page's audit summary: per class, with duplicates and conflicts."""
    rows = class_counts(busi, arrays)
    group_of, conflict_ids = duplicates.group_of, duplicates.conflict_ids
    for row in rows:
        ids = [c.id for c in busi.cases if row["class"] in ("all", c.label)]
        row["in near-duplicate groups"] = sum(i in group_of for i in ids)
        row["in label conflicts"] = sum(i in conflict_ids for i in ids)
    return rows


def to_record(row: CaseRow) -> dict:
    """A row as plain data (for tables and tests)."""
    record = dataclasses.asdict(row)
    record.update(predicted=row.predicted, confidence=row.confidence, correct=row.correct)
    return record
