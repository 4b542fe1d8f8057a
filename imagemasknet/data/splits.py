"""Duplicate-aware, class-stratified folds, and user split files.

Near-duplicate groups (the audit's, plus the dataset manifest's ``near_dup_group`` column when the
data carries one) are never split across folds: a copy of a test scan in the training set would
inflate every held-out number.
"""
from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

from imagemasknet.core.files import write_json
from imagemasknet.core.paths import SPLITS_DIR
from imagemasknet.data.busi import CLASSES, Busi

DEFAULT_SPLIT = SPLITS_DIR / "busi-5fold.json"


class SplitError(ValueError):
    pass


def manifest_groups(data: Busi) -> dict[str, str]:
    """image id → near-duplicate group from the bundled copy's manifest, when there is one."""
    manifest = data.root.parent / "manifest.csv"
    if not manifest.exists():
        return {}
    groups = {}
    with open(manifest, newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            if row.get("near_dup_group"):
                groups[Path(row["image"]).stem] = row["near_dup_group"]
    return groups


def patient_groups(data: Busi) -> dict[str, str]:
    """image id → patient, for data that names patients (a CSV manifest's ``patient`` column)."""
    return {c.id: f"patient:{c.patient}" for c in data.cases if c.patient}


def merge_groups(ids: list[str], *groupings: dict[str, str]) -> list[list[str]]:
    """Connected components over every grouping: ids that share a group in any of them end up together."""
    parent = {i: i for i in ids}

    def find(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for grouping in groupings:
        first_of: dict[str, str] = {}
        for image_id, group in grouping.items():
            if image_id not in parent:
                continue
            if group in first_of:
                parent[find(image_id)] = find(first_of[group])
            else:
                first_of[group] = image_id
    components: dict[str, list[str]] = {}
    for i in ids:
        components.setdefault(find(i), []).append(i)
    return list(components.values())


def make_folds(labels: dict[str, str], groups: list[list[str]], k: int = 5, seed: int = 0) -> list[list[str]]:
    """Assign whole groups to folds, largest first, each to the fold whose class counts lag most."""
    rng = random.Random(seed)
    total = Counter(labels.values())
    target = {c: total[c] / k for c in total}
    groups = [sorted(g) for g in groups]
    rng.shuffle(groups)
    groups.sort(key=len, reverse=True)
    folds: list[list[str]] = [[] for _ in range(k)]
    counts = [Counter() for _ in range(k)]
    for group in groups:
        need = Counter(labels[i] for i in group)

        def overshoot(f: int) -> tuple[float, int]:
            after = sum(max(0.0, counts[f][c] + n - target[c]) for c, n in need.items())
            return after, len(folds[f])

        best = min(range(k), key=overshoot)
        folds[best].extend(group)
        counts[best].update(need)
    return [sorted(f) for f in folds]


def write_split_file(path: Path, folds: list[list[str]], groups: list[list[str]], labels: dict[str, str],
                     method: str) -> None:
    write_json(path, {
        "description": "BUSI 5-fold split; near-duplicate groups never cross folds",
        "method": method,
        "classes": {c: sum(1 for v in labels.values() if v == c) for c in CLASSES},
        "folds": folds,
        "groups": sorted(sorted(g) for g in groups if len(g) > 1),
    })


def _read_split(path: Path) -> dict:
    try:
        spec = json.loads(Path(path).read_text())
        spec["folds"], spec["groups"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SplitError(f"cannot read fold file {path}: {error}") from error
    return spec


def load_folds(path: Path = DEFAULT_SPLIT) -> list[list[str]]:
    return _read_split(path)["folds"]


def committed_groups(path: Path = DEFAULT_SPLIT) -> dict[str, str]:
    """image id → group, for the near-duplicate groups the committed split was built from."""
    return {i: f"S{n:03d}" for n, group in enumerate(_read_split(path)["groups"]) for i in group}


def resolve_split(data: Busi, fold: int | None, split_file: str | None) -> tuple[list[str], list[str]]:
    """(train ids, test ids) for a fold, a user split file, or all data (test empty)."""
    known = set(data.ids)
    if split_file:
        try:
            spec = json.loads(Path(split_file).read_text())
            train, test = list(spec["train"]), list(spec["test"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SplitError(f"split file {split_file} must be JSON with 'train' and 'test' id lists ({error})") from error
        unknown = [i for i in train + test if i not in known]
        if unknown:
            raise SplitError(f"split file {split_file} names {len(unknown)} unknown ids, e.g. {unknown[:3]}")
        overlap = set(train) & set(test)
        if overlap:
            raise SplitError(f"split file {split_file} puts {len(overlap)} ids in both train and test, e.g. {sorted(overlap)[:3]}")
        return train, test
    if fold is None:
        return list(data.ids), []
    folds = load_folds()
    if not known & {i for f in folds for i in f}:
        # Not BUSI, so the committed folds do not apply: build 5 on the fly, each patient in one fold.
        labels = {c.id: c.label for c in data.cases}
        folds = make_folds(labels, merge_groups(data.ids, manifest_groups(data), patient_groups(data)), k=5, seed=0)
    test = [i for i in folds[fold] if i in known]
    test_set = set(test)
    train = [i for i in data.ids if i not in test_set]
    return train, test


def inner_validation(train: list[str], labels: dict[str, str], data: Busi, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole duplicate groups of the training ids for checkpoint choice and calibration."""
    if fraction <= 0:
        return train, []
    groups = merge_groups(train, manifest_groups(data), committed_groups(), patient_groups(data))
    k = max(2, round(1 / fraction))
    folds = make_folds({i: labels[i] for i in train}, groups, k=k, seed=seed + 1)
    val = set(folds[0])
    return [i for i in train if i not in val], [i for i in train if i in val]
