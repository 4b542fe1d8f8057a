"""Distillation's soft targets: each training scan's teacher probabilities per inference mode, read from an
out-of-fold table (:func:`~imagemasknet.models.bundle.write_out_of_fold`'s format), such as
``benchmarks/distillation.py`` builds from two teachers cross-fitted on the halves of a run's training scans.

The table is checked, not trusted: it must give every training scan, for every mode the student trains, a
probability per class that sums to one, with the scan's own label and, where it records one, the scan file's
checksum (a table built from other files or another labelling is refused). It must not list the run's validation
or test scans: in an out-of-fold table each scan's teacher trained on the other scans of the table, so a held-out
scan listed there taught the teachers of the training scans, and through them the student.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagemasknet.core.files import file_sha256, read_regular
from imagemasknet.core.run_folder import JSON_LIMIT
from imagemasknet.data.dataset import CLASSES, Dataset
from imagemasknet.models.bundle import parse_out_of_fold

SUM_TOLERANCE = 0.01  # a table's probabilities are rounded to 4 decimals; 0.01 catches a wrong column, not rounding
FIX = "build one from teachers that trained on this run's training scans only (benchmarks/distillation.py)"


class SoftTargetError(ValueError):
    """A soft-target table the run cannot train on; the message names the file and the fix."""


@dataclass(frozen=True)
class SoftTargets:
    """The training scans' teacher probabilities, ``[scans, modes, classes]``, and the table's bytes as read (the
    run folder keeps them, so a resumed run learns from the same table)."""

    probabilities: np.ndarray
    table: bytes


def load_soft_targets(path: str | Path, data: Dataset, train: list[str], held_out: list[str],
                      modes: tuple[str, ...]) -> SoftTargets:
    """The teacher probabilities of the training scans ``train`` of ``data``, in their order; ``held_out``: the
    run's validation and test scans, which the table must not list."""
    try:
        table = read_regular(path, JSON_LIMIT)
        rows = parse_out_of_fold(json.loads(table), path)
    except (OSError, ValueError, RecursionError) as error:
        raise SoftTargetError(f"cannot read the soft-target table {path} ({error}); {FIX}") from None
    by_id: dict[str, dict] = {}
    for row in rows:
        if row.get("id") in by_id:
            raise SoftTargetError(f"the soft-target table {path} lists scan {row['id']} twice; {FIX}")
        by_id[row.get("id")] = row
    listed = [i for i in held_out if i in by_id]
    if listed:
        raise SoftTargetError(f"the soft-target table {path} lists {len(listed)} of this run's validation and test "
                              f"scans (e.g. {', '.join(listed[:3])}), so its teachers trained on them; {FIX}")
    missing = [i for i in train if i not in by_id]
    if missing:
        raise SoftTargetError(f"the soft-target table {path} has no teacher prediction for {len(missing)} of the "
                              f"run's {len(train)} training scans (e.g. {', '.join(missing[:3])}); {FIX}")
    cases = data.by_id()
    probabilities = np.zeros((len(train), len(modes), len(CLASSES)), dtype=np.float32)
    for n, image_id in enumerate(train):
        row, case = by_id[image_id], cases[image_id]
        if row.get("label") != case.label:
            raise SoftTargetError(f"the soft-target table {path} labels scan {image_id} '{row.get('label')}', the data "
                                  f"'{case.label}': it was built on other data; {FIX}")
        if row.get("sha256") and file_sha256(case.image_path)[:16] != row["sha256"]:
            raise SoftTargetError(f"the soft-target table {path} judged another file as scan {image_id} (its checksum "
                                  f"differs from {case.image_path.name}'s); {FIX}")
        for m, mode in enumerate(modes):
            given = row["probabilities"].get(mode, {})
            if set(given) != set(CLASSES):
                raise SoftTargetError(f"the soft-target table {path} has no {mode}-mode probabilities per class "
                                      f"({', '.join(CLASSES)}) for scan {image_id}; {FIX} with a model of that mode")
            values = [given[c] for c in CLASSES]
            if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values) or abs(sum(values) - 1) > SUM_TOLERANCE:
                raise SoftTargetError(f"the soft-target table {path} gives scan {image_id} {mode}-mode probabilities "
                                      f"{values}, not probabilities that sum to one; {FIX}")
            probabilities[n, m] = np.asarray(values) / sum(values)
    return SoftTargets(probabilities, table)


def label_targets(labels: np.ndarray, n_modes: int) -> np.ndarray:
    """Soft targets that are the labels themselves, for examples no teacher judged (lesion-free crops)."""
    return np.repeat(np.eye(len(CLASSES), dtype=np.float32)[labels][:, None], n_modes, axis=1)
