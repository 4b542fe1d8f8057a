"""Find BUSI and index either of its layouts; report problems.

Two layouts are read:

* bundled: ``CLASS/images/NAME.png`` with ``CLASS/masks/NAME_mask[_k].png``;
* Kaggle:  ``CLASS/NAME.png`` with ``CLASS/NAME_mask[_k].png`` in the same folder.

Several masks of one image are merged by per-pixel OR. Problems (missing masks, unreadable files,
stray files) go into a :class:`LoadReport`; the rest of the data still loads.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import replace
from pathlib import Path

from imagemasknet.core.paths import BUNDLED_COPY, LOCAL_COPY, SHARED_COPY, data_override
from imagemasknet.data.dataset import CLASSES, Case, Dataset, DatasetNotFoundError, LoadReport, unique_ids
from imagemasknet.data.decode import IMAGE_SUFFIXES
from imagemasknet.data.verify import ensure_verified, skip_requested

_MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
BUSI_HELP = (
    "The project ships BUSI in data/busi/Dataset_BUSI_with_GT (restore it with `git checkout -- data/busi`), "
    "or download BUSI ('Breast Ultrasound Images Dataset', Al-Dhabyani et al. 2020, Kaggle folder "
    "Dataset_BUSI_with_GT) and unpack it to ./data/Dataset_BUSI_with_GT, or point IMAGEMASKNET_DATA at it."
)


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


def load_busi(root: str | os.PathLike | None = None, verify: bool | None = None) -> Dataset:
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
    cases = unique_ids(cases, lambda c: f"{c.label}/{c.id}")
    groups = _manifest_groups(root)
    cases = [replace(c, group=groups.get(c.id)) for c in cases]
    layout = "bundled" if layouts == {"bundled"} else ("kaggle" if layouts == {"kaggle"} else "mixed")
    return Dataset(root, layout, cases, report)


def _manifest_groups(root: Path) -> dict[str, str]:
    """image id → near-duplicate group from the manifest beside the bundled copy (``busi/manifest.csv``)."""
    manifest = root.parent / "manifest.csv"
    if not manifest.exists():
        return {}
    groups = {}
    with open(manifest, newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            if row.get("near_dup_group"):
                groups[Path(row["image"]).stem] = row["near_dup_group"]
    return groups


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


