"""Find BUSI, load either of its layouts, merge masks, report problems, cache decoded tensors.

Two layouts are read:

* bundled: ``CLASS/images/NAME.png`` with ``CLASS/masks/NAME_mask[_k].png``;
* Kaggle:  ``CLASS/NAME.png`` with ``CLASS/NAME_mask[_k].png`` in the same folder.

Several masks of one image are merged by per-pixel OR. Problems (missing masks, unreadable files,
stray files) go into a :class:`LoadReport`; the rest of the data still loads.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from imagemasknet.core.paths import BUNDLED_COPY, LOCAL_COPY, SHARED_COPY, cache_dir, data_override
from imagemasknet.data.verify import ensure_verified, skip_requested

CLASSES = ("normal", "benign", "malignant")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
BUSI_HELP = (
    "The project ships BUSI in data/busi/Dataset_BUSI_with_GT (restore it with `git checkout -- data/busi`), "
    "or download BUSI ('Breast Ultrasound Images Dataset', Al-Dhabyani et al. 2020, Kaggle folder "
    "Dataset_BUSI_with_GT) and unpack it to ./data/Dataset_BUSI_with_GT, or point IMAGEMASKNET_DATA at it."
)


class DatasetNotFoundError(FileNotFoundError):
    """No BUSI copy in any of the places we look."""


@dataclass(frozen=True)
class Case:
    """One scan with its label and the mask files that outline its lesions."""

    id: str
    label: str
    image_path: Path
    mask_paths: tuple[Path, ...]
    patient: str | None = None


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # missing-mask | unreadable | stray-file | stray-folder | orphan-mask | mask-size
    message: str


@dataclass
class LoadReport:
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: Path | str, kind: str, message: str) -> None:
        self.problems.append(Problem(str(path), kind, message))

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def __bool__(self) -> bool:
        return bool(self.problems)


@dataclass
class Busi:
    root: Path
    layout: str  # bundled | kaggle
    cases: list[Case]
    report: LoadReport

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cases]

    def by_id(self) -> dict[str, Case]:
        return {c.id: c for c in self.cases}

    def subset(self, ids: list[str]) -> "Busi":
        index = self.by_id()
        return Busi(self.root, self.layout, [index[i] for i in ids], self.report)


def find_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The BUSI folder: an explicit path, else $IMAGEMASKNET_DATA, else the bundled copy
    (``<repository>/data/busi/Dataset_BUSI_with_GT``), else ./data/…, else the shared copy."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise DatasetNotFoundError(f"BUSI folder not found: {path}. {BUSI_HELP}")
        return path
    candidates = []
    env = data_override()
    if env:
        candidates.append(("IMAGEMASKNET_DATA", env))
    candidates += [("bundled copy", BUNDLED_COPY), ("local copy", LOCAL_COPY), ("shared copy", SHARED_COPY)]
    for _, path in candidates:
        if path.is_dir():
            return path
    tried = "; ".join(f"{name}: {path}" for name, path in candidates)
    if not env:
        tried = f"IMAGEMASKNET_DATA (not set); {tried}"
    raise DatasetNotFoundError(f"No BUSI data found. Looked in {tried}. {BUSI_HELP}")


def _sort_key(name: str) -> tuple:
    number = re.search(r"\((\d+)\)", name)
    return (int(number.group(1)) if number else 10**9, name)


def load_busi(root: str | os.PathLike | None = None, verify: bool | None = None) -> Busi:
    """Index the images and masks of a BUSI folder in either layout (pixels are read later).

    A copy with a ``checksums.sha256`` beside it (the bundled and the shared copy) is checked against
    it first and refused with :class:`DataIntegrityError` when files are missing, changed or extra;
    ``verify=False`` (or ``$IMAGEMASKNET_SKIP_VERIFY=1``, or the CLI's ``--no-verify``) loads it anyway."""
    root = find_data_root(root)
    if not any((root / c).is_dir() for c in CLASSES) and (root / "Dataset_BUSI_with_GT").is_dir():
        root = root / "Dataset_BUSI_with_GT"  # given the busi/ folder that holds the data set
    if verify if verify is not None else not skip_requested():
        ensure_verified(root)
    report = LoadReport()
    cases: list[Case] = []
    layouts = set()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.name.lower() not in {"readme.md", "license.txt", "checksums.sha256", "manifest.csv"}:
                report.add(entry, "stray-file", f"unexpected file at the top level: {entry.name}")
            continue
        label = entry.name.lower()
        if label not in CLASSES:
            report.add(entry, "stray-folder", f"folder '{entry.name}' is not one of {', '.join(CLASSES)}")
            continue
        image_dir, mask_dir = entry / "images", entry / "masks"
        if image_dir.is_dir():
            layouts.add("bundled")
            for extra in sorted(entry.iterdir()):
                if extra.name not in {"images", "masks"} and not extra.name.startswith("."):
                    kind = "stray-folder" if extra.is_dir() else "stray-file"
                    report.add(extra, kind, f"unexpected entry in {entry.name}/: {extra.name}")
            cases += _index_class(label, image_dir, mask_dir if mask_dir.is_dir() else image_dir, report)
        else:
            layouts.add("kaggle")
            cases += _index_class(label, entry, entry, report)
    if not cases:
        raise DatasetNotFoundError(f"{root} holds no BUSI images (expected folders {', '.join(CLASSES)}). {BUSI_HELP}")
    cases.sort(key=lambda c: (CLASSES.index(c.label), _sort_key(c.id)))
    cases = _unique_ids(cases, lambda c: f"{c.label}/{c.id}")
    layout = "bundled" if layouts == {"bundled"} else ("kaggle" if layouts == {"kaggle"} else "mixed")
    return Busi(root, layout, cases, report)


def _index_class(label: str, image_dir: Path, mask_dir: Path, report: LoadReport) -> list[Case]:
    images: dict[str, Path] = {}
    masks: dict[str, list[tuple[int, Path]]] = {}
    listing = sorted(set(image_dir.iterdir()) | set(mask_dir.iterdir()))
    for path in listing:
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if path not in (image_dir, mask_dir):
                report.add(path, "stray-folder", f"unexpected folder {path.name}")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.add(path, "stray-file", f"not an image file: {path.name}")
            continue
        match = _MASK_NAME.match(path.stem)
        if match:
            masks.setdefault(match["stem"], []).append((int(match["k"] or 0), path))
        else:
            images[path.stem] = path
    cases = []
    for stem, image_path in images.items():
        found = sorted(masks.pop(stem, []))
        if not found:
            report.add(image_path, "missing-mask", f"{image_path.name} has no mask; loaded with an empty mask")
        cases.append(Case(stem, label, image_path, tuple(p for _, p in found)))
    for stem, orphans in masks.items():
        for _, path in orphans:
            report.add(path, "orphan-mask", f"mask {path.name} has no image '{stem}'")
    return cases


def read_grey(path: Path) -> np.ndarray:
    """Decode an image file to 8-bit greyscale (H, W)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I"):
            array = np.asarray(image, dtype=np.float64)
            return (255 * array / max(array.max(), 1)).astype(np.uint8)
        return np.asarray(image.convert("L"), dtype=np.uint8)


def read_case_mask(paths: tuple[Path, ...], size_hw: tuple[int, int]) -> np.ndarray:
    """Merge mask files by OR, binarised, at the image's size (nearest-neighbour when sizes differ)."""
    merged = np.zeros(size_hw, dtype=bool)
    for path in paths:
        with Image.open(path) as mask:
            mask = mask.convert("L")
            if mask.size != (size_hw[1], size_hw[0]):
                mask = mask.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
            merged |= np.asarray(mask) > 127
    return merged


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a greyscale image (antialiased bilinear) and its mask (nearest) to size×size."""
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127
    return image, mask


def listing_fingerprint(data: Busi) -> str:
    """Hash of each file's relative path and size: cheap, and stable across copies of the data."""
    digest = hashlib.sha256()
    for case in data.cases:
        for path in (case.image_path, *case.mask_paths):
            digest.update(f"{case.label}|{os.path.relpath(path, data.root)}|{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def content_fingerprint(data: Busi) -> str:
    """sha256 over every image and mask file's bytes, in case order (recorded in model cards)."""
    digest = hashlib.sha256()
    for case in data.cases:
        for path in (case.image_path, *case.mask_paths):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class Arrays:
    """Decoded, resized scans and merged masks, aligned with ``ids`` and ``labels``."""

    ids: list[str]
    labels: np.ndarray  # int64 class indices
    images: np.ndarray  # uint8 (N, S, S)
    masks: np.ndarray  # bool (N, S, S)

    def take(self, ids: list[str]) -> "Arrays":
        index = {i: n for n, i in enumerate(self.ids)}
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        return Arrays(list(ids), self.labels[rows], self.images[rows], self.masks[rows])


def load_arrays(data: Busi, size: int = 256, progress: bool = False) -> Arrays:
    """Decode every case once at size×size and cache the result under :func:`cache_dir`."""
    key = hashlib.sha256(f"{listing_fingerprint(data)}|{size}|v1".encode()).hexdigest()[:20]
    path = cache_dir() / f"busi-{size}-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as cached:
                ids = json.loads(str(cached["ids"]))
                if ids == data.ids:
                    return Arrays(ids, cached["labels"], cached["images"], cached["masks"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    images = np.zeros((len(data.cases), size, size), np.uint8)
    masks = np.zeros((len(data.cases), size, size), bool)
    cases = data.cases
    if progress:
        cases = tqdm(cases, desc=f"decoding scans to {size}px (cached after this)", unit="scan")
    for n, case in enumerate(cases):
        try:
            image = read_grey(case.image_path)
            mask = read_case_mask(case.mask_paths, image.shape)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            data.report.add(case.image_path, "unreadable", f"{case.image_path.name}: {error}")
            continue
        images[n], masks[n] = resize_pair(image, mask, size)
    labels = np.array([CLASSES.index(c.label) for c in data.cases], dtype=np.int64)
    arrays = Arrays(data.ids, labels, images, masks)
    unreadable = {p.path for p in data.report.by_kind("unreadable")}
    if unreadable:
        # Not cached: the next load should try those files again.
        data.cases = [c for c in data.cases if str(c.image_path) not in unreadable]
        return arrays.take(data.ids)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=json.dumps(arrays.ids), labels=labels, images=images, masks=masks)
    os.replace(tmp, path)
    return arrays


def load_labelled_csv(path: str | os.PathLike) -> Busi:
    """A CSV manifest ``image,label[,mask][,patient]`` (paths relative to the CSV; ``pathology`` is
    accepted for ``label``). Unknown labels, missing files and duplicate rows are reported and skipped."""
    path = Path(path)
    report = LoadReport()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetNotFoundError(f"cannot read CSV manifest {path}: {error}") from error
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "image" not in rows[0] or not ({"label", "pathology"} & set(rows[0])):
        raise DatasetNotFoundError(f"{path} needs the columns image,label[,mask][,patient]")
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or row.get("pathology") or "").strip().lower()
        image = (row.get("image") or "").strip()
        where = f"{path.name}:{line}"
        if label not in CLASSES:
            report.add(where, "unknown-label", f"row {line}: label '{label}' is not one of {', '.join(CLASSES)}")
            continue
        image_path = (path.parent / image).resolve()
        if not image or not image_path.is_file():
            report.add(where, "missing-file", f"row {line}: image '{image}' does not exist")
            continue
        if image_path in seen:
            report.add(where, "duplicate-row", f"row {line}: image '{image}' is listed again")
            continue
        seen.add(image_path)
        mask = (row.get("mask") or "").strip()
        mask_paths: tuple[Path, ...] = ()
        if mask:
            mask_path = (path.parent / mask).resolve()
            if mask_path.is_file():
                mask_paths = (mask_path,)
            else:
                report.add(where, "missing-mask", f"row {line}: mask '{mask}' does not exist; loaded without a mask")
        patient = (row.get("patient") or "").strip() or None
        cases.append(Case(image_path.stem, label, image_path, mask_paths, patient))
    if not cases:
        raise DatasetNotFoundError(f"{path} lists no usable scans")
    root = path.parent.resolve()
    cases = _unique_ids(cases, lambda c: c.image_path.relative_to(root).with_suffix("").as_posix()
                        if c.image_path.is_relative_to(root) else str(c.image_path.with_suffix("")))
    return Busi(root, "csv", cases, report)


def _unique_ids(cases: list[Case], qualified) -> list[Case]:
    """Ids are file stems; where two scans share one (``benign/a.png``, ``malignant/a.png`` in a user's
    folder) both get ``qualified(case)`` instead, so every id names one scan."""
    counts = Counter(c.id for c in cases)
    if all(n == 1 for n in counts.values()):
        return cases
    return [replace(c, id=qualified(c)) if counts[c.id] > 1 else c for c in cases]


def load_dataset(path: str | os.PathLike | None = None, verify: bool | None = None) -> Busi:
    """BUSI (either layout), a labelled folder with class sub-folders, or a CSV manifest."""
    if path is not None and Path(path).is_file():
        return load_labelled_csv(path)
    return load_busi(path, verify=verify)
