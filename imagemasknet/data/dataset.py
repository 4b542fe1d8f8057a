"""The package's data vocabulary: a labelled scan (:class:`Case`), a set of them (:class:`Dataset`), what went
wrong while indexing one (:class:`LoadReport`), and the decoded tensors a model trains on (:class:`Arrays`,
cached by :func:`load_arrays`).

Every case names its **source** (``busi``, ``busbra-train``, ``own``, …: see :mod:`imagemasknet.data.sources`)
so that a training set pooled from several hospitals can be split, weighted and reported per source.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from tqdm import tqdm

from imagemasknet.core.files import atomic_write
from imagemasknet.core.paths import cache_dir
from imagemasknet.data.decode import read_case, resize_pair

CLASSES = ("normal", "benign", "malignant")


class DatasetNotFoundError(FileNotFoundError):
    """No data where the caller or the defaults point."""


@dataclass(frozen=True)
class Case:
    """One scan with its label and the mask files that outline its lesions.

    ``patient``: scans of one patient (two views of a lesion) stay together in every split; ``group``: the
    near-duplicate group the data set's manifest names (re-crops, copies), kept together likewise."""

    id: str
    label: str
    image_path: Path
    mask_paths: tuple[Path, ...]
    patient: str | None = None
    source: str = "busi"
    group: str | None = None


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # missing-mask | unreadable | stray-file | stray-folder | orphan-mask | mask-size | unknown-label | …
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
class Dataset:
    """Labelled scans from one folder (``layout``: bundled, kaggle, csv) or pooled from several sources."""

    root: Path
    layout: str
    cases: list[Case]
    report: LoadReport

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cases]

    @property
    def sources(self) -> list[str]:
        """The sources of its cases, in order of first appearance."""
        return list(dict.fromkeys(c.source for c in self.cases))

    def by_id(self) -> dict[str, Case]:
        return {c.id: c for c in self.cases}

    def subset(self, ids: list[str]) -> "Dataset":
        index = self.by_id()
        return Dataset(self.root, self.layout, [index[i] for i in ids], self.report)

    def of_source(self, source: str) -> "Dataset":
        return Dataset(self.root, self.layout, [c for c in self.cases if c.source == source], self.report)


def pool(parts: list[Dataset]) -> Dataset:
    """Several data sets as one; their ids must not collide (each source but BUSI prefixes its own)."""
    if len(parts) == 1:
        return parts[0]
    cases = [c for part in parts for c in part.cases]
    seen = Counter(c.id for c in cases)
    clashes = [i for i, n in seen.items() if n > 1]
    if clashes:
        raise ValueError(f"{len(clashes)} scan ids occur in more than one source, e.g. {clashes[:3]}")
    report = LoadReport([p for part in parts for p in part.report.problems])
    return Dataset(parts[0].root, "+".join(part.layout for part in parts), cases, report)


def unique_ids(cases: list[Case], qualified) -> list[Case]:
    """Ids are file stems; where two scans share one (``benign/a.png``, ``malignant/a.png`` in a user's
    folder) both get ``qualified(case)`` instead, so every id names one scan."""
    counts = Counter(c.id for c in cases)
    if all(n == 1 for n in counts.values()):
        return cases
    return [replace(c, id=qualified(c)) if counts[c.id] > 1 else c for c in cases]


def listing_fingerprint(data: Dataset) -> str:
    """Hash of each case's source, id, label and its files' names and sizes: cheap, and stable across copies."""
    digest = hashlib.sha256()
    for case in data.cases:
        files = "|".join(f"{p.name}:{p.stat().st_size}" for p in (case.image_path, *case.mask_paths))
        digest.update(f"{case.source}|{case.id}|{case.label}|{files}\n".encode())
    return digest.hexdigest()


def content_fingerprint(data: Dataset) -> str:
    """sha256 over every image and mask file's bytes, in case order (recorded in model cards)."""
    digest = hashlib.sha256()
    for case in data.cases:
        for path in (case.image_path, *case.mask_paths):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class Arrays:
    """Decoded, resized scans and merged masks, aligned with ``ids``, ``labels`` and ``sources``."""

    ids: list[str]
    labels: np.ndarray  # int64 class indices
    images: np.ndarray  # uint8 (N, S, S)
    masks: np.ndarray  # bool (N, S, S)
    sources: np.ndarray | None = None  # str (N,); None: unnamed ("")

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = np.full(len(self.ids), "", dtype=str)

    def take(self, ids: list[str]) -> "Arrays":
        index = {i: n for n, i in enumerate(self.ids)}
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        return Arrays(list(ids), self.labels[rows], self.images[rows], self.masks[rows], self.sources[rows])


def load_arrays(data: Dataset, size: int = 256, progress: bool = False, paint_out_annotations: bool = False) -> Arrays:
    """Decode every case once at size×size and cache the result under :func:`cache_dir`; with
    ``paint_out_annotations``, burnt-in marks are painted out at the scan's own resolution first."""
    painted = "|painted" if paint_out_annotations else ""
    key = hashlib.sha256(f"{listing_fingerprint(data)}|{size}{painted}|v3".encode()).hexdigest()[:20]
    path = cache_dir() / f"scans-{size}-{key}.npz"
    sources = np.array([c.source for c in data.cases], dtype=str)
    if path.exists():
        try:
            with np.load(path) as cached:
                ids = json.loads(str(cached["ids"]))
                if ids == data.ids:
                    return Arrays(ids, cached["labels"], cached["images"], cached["masks"], sources)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    images = np.zeros((len(data.cases), size, size), np.uint8)
    masks = np.zeros((len(data.cases), size, size), bool)
    cases = data.cases
    if progress:
        cases = tqdm(cases, desc=f"decoding scans to {size}px (cached after this)", unit="scan")
    for n, case in enumerate(cases):
        try:
            image, mask = read_case(case, paint_out_annotations)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            data.report.add(case.image_path, "unreadable", f"{case.image_path.name}: {error}")
            continue
        images[n], masks[n] = resize_pair(image, mask, size)
    labels = np.array([CLASSES.index(c.label) for c in data.cases], dtype=np.int64)
    arrays = Arrays(data.ids, labels, images, masks, sources)
    unreadable = {p.path for p in data.report.by_kind("unreadable")}
    if unreadable:
        # Not cached: the next load should try those files again.
        data.cases = [c for c in data.cases if str(c.image_path) not in unreadable]
        return arrays.take(data.ids)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle: given a name, NumPy would append ".npz" to it
            np.savez(handle, ids=json.dumps(arrays.ids), labels=labels, images=images, masks=masks)

    atomic_write(path, write)  # a temporary file of its own: runs decoding at once never share one
    return arrays
