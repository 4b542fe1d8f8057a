"""Distillation's soft targets: each training scan's teacher probabilities per inference mode, read from an
out-of-fold table (:func:`~imagemasknet.models.bundle.write_out_of_fold`'s format: a released model's ``oof.json``,
or ``benchmarks/distillation.py``'s cross-fitted teachers).

The table is checked, not trusted: it must give every training scan, for every mode the student trains, a
probability per class that sums to one, with the scan's own label and, where it records one, the scan file's
checksum (a table built from other files or another labelling is refused). Whether each teacher never trained on
the scan it predicts is the table maker's promise: the file cannot show it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from imagemasknet.core.files import file_sha256
from imagemasknet.data.dataset import CLASSES, Dataset
from imagemasknet.models.bundle import read_out_of_fold

SUM_TOLERANCE = 0.01  # a table's probabilities are rounded to 4 decimals; 0.01 catches a wrong column, not rounding


class SoftTargetError(ValueError):
    """A soft-target table the run cannot train on; the message names the file and the fix."""


def load_soft_targets(path: str | Path, data: Dataset, ids: list[str], modes: tuple[str, ...]) -> np.ndarray:
    """``[len(ids), len(modes), len(CLASSES)]`` teacher probabilities for the training scans ``ids`` of ``data``."""
    fix = "give an out-of-fold table (a released model's oof.json, or benchmarks/distillation.py targets)"
    try:
        rows = read_out_of_fold(Path(path))
    except (OSError, ValueError) as error:
        raise SoftTargetError(f"cannot read the soft-target table {path} ({error}); {fix}") from None
    by_id: dict[str, dict] = {}
    for row in rows:
        if row.get("id") in by_id:
            raise SoftTargetError(f"the soft-target table {path} lists scan {row['id']} twice; {fix}")
        by_id[row.get("id")] = row
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SoftTargetError(f"the soft-target table {path} has no teacher prediction for {len(missing)} of the "
                              f"run's {len(ids)} training scans (e.g. {', '.join(missing[:3])}); build it from teachers "
                              "that together predicted every training scan")
    cases = data.by_id()
    targets = np.zeros((len(ids), len(modes), len(CLASSES)), dtype=np.float32)
    for n, image_id in enumerate(ids):
        row, case = by_id[image_id], cases[image_id]
        if row.get("label") != case.label:
            raise SoftTargetError(f"the soft-target table {path} labels scan {image_id} '{row.get('label')}', the data "
                                  f"'{case.label}': it was built on other data; {fix} for this training set")
        if row.get("sha256") and file_sha256(case.image_path)[:16] != row["sha256"]:
            raise SoftTargetError(f"the soft-target table {path} judged another file as scan {image_id} (its checksum "
                                  f"differs from {case.image_path.name}'s); {fix} for this training set")
        for m, mode in enumerate(modes):
            probabilities = row["probabilities"].get(mode, {})
            if set(probabilities) != set(CLASSES):
                raise SoftTargetError(f"the soft-target table {path} has no {mode}-mode probabilities per class "
                                      f"({', '.join(CLASSES)}) for scan {image_id}; {fix} from a model with that mode")
            values = [probabilities[c] for c in CLASSES]
            if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values) or abs(sum(values) - 1) > SUM_TOLERANCE:
                raise SoftTargetError(f"the soft-target table {path} gives scan {image_id} {mode}-mode probabilities "
                                      f"{values}, not probabilities that sum to one; {fix}")
            targets[n, m] = np.asarray(values) / sum(values)
    return targets


def one_hot(labels: np.ndarray, modes: int) -> np.ndarray:
    """Targets that are the labels themselves (for examples no teacher judged, such as lesion-free crops)."""
    return np.repeat(np.eye(len(CLASSES), dtype=np.float32)[labels][:, None], modes, axis=1)


def batch_targets(targets: torch.Tensor, items: torch.Tensor, modes: tuple[str, ...], mode: str,
                  given: torch.Tensor | None) -> torch.Tensor:
    """A batch's ``[batch, classes]`` teacher probabilities: those of the mode each scan is trained in (the mask
    mode where ``given`` says the scan's mask is given, else ``mode``)."""
    rows = targets[items]
    if given is None:
        return rows[:, modes.index(mode)]
    return torch.where(given.cpu()[:, None], rows[:, modes.index("mask")], rows[:, modes.index("image")])
