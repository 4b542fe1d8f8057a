"""Grouped folds stratified by source and class, and user split files.

Near-duplicate groups (the audit's, plus a data set's manifest groups) and a patient's scans are never split
across folds: a copy or a second view of a test scan in the training set would inflate every held-out number.
Each training source has its committed folds (``splits/<source>-5fold.json``); fold K of a pooled training
set is the union of its sources' folds K, so each source is stratified by class within itself and BUSI's
part of a pooled fold is exactly BUSI's fold.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from imagemasknet.core.files import write_json
from imagemasknet.core.paths import SPLITS_DIR
from imagemasknet.data.dataset import CLASSES, Dataset

DEFAULT_SPLIT = SPLITS_DIR / "busi-5fold.json"
FOLDS = 5


def split_file_for(source: str) -> Path:
    return SPLITS_DIR / f"{source}-{FOLDS}fold.json"


class SplitError(ValueError):
    pass


def case_groups(data: Dataset) -> dict[str, str]:
    """image id → its group: the patient where the data names one, else the manifest's near-duplicate group."""
    groups = {}
    for c in data.cases:
        if c.patient:
            groups[c.id] = f"patient:{c.source}:{c.patient}"
        elif c.group:
            groups[c.id] = f"group:{c.source}:{c.group}"
    return groups


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
                     method: str, source: str = "busi") -> None:
    write_json(path, {
        "description": f"{source} {len(folds)}-fold split; near-duplicate groups and patients never cross folds",
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


def committed_split_files() -> list[Path]:
    return sorted(SPLITS_DIR.glob(f"*-{FOLDS}fold.json"))


def committed_groups() -> dict[str, str]:
    """image id → group, for the groups every committed split was built from."""
    return {i: f"{path.stem}:S{n:03d}" for path in committed_split_files()
            for n, group in enumerate(_read_split(path)["groups"]) for i in group}


def source_folds(data: Dataset) -> list[list[str]]:
    """Five folds of ``data``: per source, the committed split that names its scans (:class:`SplitError` when it
    leaves some out), else folds built here (grouped, stratified by class); fold K is the union of the sources'
    folds K."""
    folds: list[list[str]] = [[] for _ in range(FOLDS)]
    committed = {path: {i for f in load_folds(path) for i in f} for path in committed_split_files()}
    for source in data.sources:
        part = data.of_source(source)
        ids = set(part.ids)
        path = next((p for p, named in committed.items() if ids & named), None)
        if path is not None:
            if unnamed := sorted(ids - committed[path]):
                raise SplitError(f"{len(unnamed)} {source} scans are in no fold of {path} (e.g. {unnamed[:3]}), so "
                                 "they would be trained on in every fold and never tested; rebuild the split with "
                                 f"`imagemasknet data split --source {source}`.")
            part_folds = [[i for i in fold if i in ids] for fold in load_folds(path)]
        else:
            labels = {c.id: c.label for c in part.cases}
            part_folds = make_folds(labels, merge_groups(part.ids, case_groups(part)), k=FOLDS, seed=0)
        for k in range(FOLDS):
            folds[k] += part_folds[k]
    return folds


def resolve_split(data: Dataset, fold: int | None, split_file: str | None) -> tuple[list[str], list[str]]:
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
    test = source_folds(data)[fold]
    test_set = set(test)
    return [i for i in data.ids if i not in test_set], test


def grouped_parts(ids: list[str], data: Dataset, parts: int, seed: int) -> list[list[str]]:
    """``ids`` in ``parts`` parts of whole groups, stratified by source and class, each in ``ids``' order."""
    groups = merge_groups(ids, case_groups(data), committed_groups())
    by_id = data.by_id()
    strata = {i: f"{by_id[i].source}/{by_id[i].label}" for i in ids}
    members = [set(f) for f in make_folds(strata, groups, k=parts, seed=seed)]
    return [[i for i in ids if i in part] for part in members]


def inner_validation(train: list[str], data: Dataset, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole groups of the training ids, stratified by source and class, for checkpoint choice and
    calibration."""
    if fraction <= 0:
        return train, []
    val = set(grouped_parts(train, data, max(2, round(1 / fraction)), seed + 1)[0])
    return [i for i in train if i not in val], [i for i in train if i in val]


def cross_fitting_halves(train: list[str], data: Dataset, seed: int) -> list[list[str]]:
    """Two halves of a run's training scans (whole groups, stratified by source and class) for two teachers,
    each trained on one half and predicting the other: every training scan gets a teacher's prediction from a
    model that never saw it, and no teacher sees the run's validation or test scans."""
    return grouped_parts(train, data, 2, seed + 2)
