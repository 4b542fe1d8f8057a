"""A site's own labelled scans: a folder with class sub-folders, or a CSV manifest.

* class folders: ``normal/``, ``benign/``, ``malignant/`` (any two are enough), each scan with an optional
  ``NAME_mask.png`` beside it (read as BUSI's Kaggle layout is);
* a CSV manifest ``image,label[,mask][,patient]`` with paths relative to the CSV (``pathology`` is accepted
  for ``label``).
"""
from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import CLASSES, Case, Dataset, DatasetNotFoundError, LoadReport, unique_ids

OWN_SOURCE = "own"


def load_labelled_csv(path: str | os.PathLike, source: str = OWN_SOURCE) -> Dataset:
    """A CSV manifest's scans, each case of ``source``. Unknown labels, missing files and duplicate rows are
    reported and skipped."""
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
        cases.append(Case(image_path.stem, label, image_path, mask_paths, patient, source))
    if not cases:
        raise DatasetNotFoundError(f"{path} lists no usable scans")
    root = path.parent.resolve()
    cases = unique_ids(cases, lambda c: c.image_path.relative_to(root).with_suffix("").as_posix()
                       if c.image_path.is_relative_to(root) else str(c.image_path.with_suffix("")))
    return Dataset(root, "csv", cases, report)


def load_dataset(path: str | os.PathLike | None = None, verify: bool | None = None) -> Dataset:
    """BUSI (either layout) found automatically when ``path`` is None; else the folder (class sub-folders) or CSV
    manifest at ``path``, its cases of the source ``own``."""
    if path is None:
        return load_busi(None, verify=verify)
    if Path(path).is_file():
        return load_labelled_csv(path)
    data = load_busi(path, verify=verify)
    return Dataset(data.root, data.layout, [replace(c, source=OWN_SOURCE) for c in data.cases], data.report)


def lesions_without_masks(data: Dataset) -> list[str]:
    """Ids of benign/malignant scans with no mask file (mask-mode figures would be meaningless there)."""
    return [c.id for c in data.cases if c.label != "normal" and not c.mask_paths]
