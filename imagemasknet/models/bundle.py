"""A model bundle: one folder that carries everything inference needs, and the store that knows which bundles
there are (shipped, promoted, the one they replaced).

A bundle folder holds, under fixed names (:data:`FILES`):

* ``model.safetensors`` — the weights;
* ``model.json`` — the :class:`~imagemasknet.models.card.ModelCard`: architecture, preprocessing, calibration,
  the decision thresholds (malignancy flag, lesion exclusion), how it was trained and measured;
* ``familiarity.safetensors`` — the unfamiliar and refusal references (:mod:`imagemasknet.inference.familiarity`);
* ``oof.json`` — its cross-validation's out-of-fold predictions (what chose the thresholds; the Gallery's marks);
* ``history.json`` — its training curves.

Only the weights and the card are required; a bundle without a familiarity reference refuses nothing and says
so, one without out-of-fold predictions has no malignancy flag and says so (:attr:`Bundle.missing`). Shipped
bundles live in the package's ``weights/NAME/``; a promoted one in the runs folder's ``.models/``, the ``active``
link pointing at it. :class:`ModelStore` is the one place that resolves them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imagemasknet.core.files import write_json
from imagemasknet.core.paths import ACTIVE_NAME, WEIGHTS_DIR, runs_root
from imagemasknet.models.card import ModelCard, ModelCardError
from imagemasknet.models import DEFAULT_MODEL, get_spec, list_models

WEIGHTS, CARD, FAMILIARITY, OUT_OF_FOLD, HISTORY = (
    "model.safetensors", "model.json", "familiarity.safetensors", "oof.json", "history.json")
FILES = (WEIGHTS, CARD, FAMILIARITY, OUT_OF_FOLD, HISTORY)
MODELS_DIR = ".models"  # promoted bundles, under the runs folder
PREVIOUS = "previous"  # inside a promoted bundle: the bundle it replaced (what a roll back restores)


OUT_OF_FOLD_FIELDS = ("id", "source", "sha256", "label", "fold", "familiarity", "refusal_score")


OUT_OF_FOLD_NOTE = ("each scan's prediction by the cross-validation fold model that never trained on it, calibrated "
                    "by that fold's temperature; familiarity against that model's training scans")


def write_out_of_fold(path: Path, model: str, rows: list[dict], note: str = OUT_OF_FOLD_NOTE) -> None:
    """The out-of-fold rows as one table (a column list, then one list of values per scan): the file ships within
    the weights' 10 MB budget, and a record per scan spelled out every key again (about 260 bytes a scan)."""
    modes = list(rows[0]["probabilities"]) if rows else []
    classes = {m: list(rows[0]["probabilities"][m]) for m in modes}
    columns = [*OUT_OF_FOLD_FIELDS, *(f"{m}:{c}" for m in modes for c in classes[m])]
    table = [[row.get(f) for f in OUT_OF_FOLD_FIELDS] + [row["probabilities"][m][c] for m in modes for c in classes[m]]
             for row in rows]
    write_json(path, {"model": model, "note": note, "columns": columns, "rows": table}, compact=True)


def read_out_of_fold(path: Path) -> list[dict]:
    """The rows :func:`write_out_of_fold` wrote, one dict per scan with ``probabilities`` as mode → class → value.
    Raises OSError or ValueError (a damaged file; callers decide what that costs)."""
    return parse_out_of_fold(json.loads(Path(path).read_text(encoding="utf-8")), path)


def parse_out_of_fold(stored: object, name: str | Path) -> list[dict]:
    """:func:`read_out_of_fold` on JSON already loaded: ValueError naming ``name`` for anything but such a table
    (ids, labels and checksums that are not text, probabilities that are not numbers)."""
    try:
        columns, table = list(stored["columns"]), stored["rows"]
        probabilities = [(column, *column.split(":", 1)) for column in columns if ":" in column]
        rows = []
        for values in table:
            record = dict(zip(columns, values, strict=True))
            row = {f: record[f] for f in OUT_OF_FOLD_FIELDS if f in record}
            for text in ("id", "label", "sha256"):
                if not isinstance(row.get(text, ""), str | None):
                    raise TypeError(f"a row's {text} is {row[text]!r}, not text")
            row["probabilities"] = {}
            for column, mode, class_name in probabilities:
                value = record[column]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"a row's {column} is {value!r}, not a number")
                row["probabilities"].setdefault(mode, {})[class_name] = float(value)
            rows.append(row)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{name} is no out-of-fold table ({error})") from error
    return rows


class BundleError(ValueError):
    """A folder that is no usable bundle; the message names the folder and the fix."""


@dataclass(frozen=True)
class Bundle:
    """A model's files, resolved: the weights and card always, the rest when the bundle has them."""

    card: ModelCard
    weights: Path
    folder: Path | None = None
    familiarity: Path | None = None
    out_of_fold: Path | None = None
    history: Path | None = None

    @classmethod
    def read(cls, folder: Path) -> "Bundle":
        """The bundle in ``folder``; :class:`BundleError` when its weights or card are missing or unreadable."""
        folder = Path(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise BundleError(f"{folder} holds no {WEIGHTS}; release or promote the model again to rebuild it")
        try:
            card = ModelCard.read(folder / CARD)
        except ModelCardError as error:
            raise BundleError(str(error)) from error
        present = {name: folder / name if (folder / name).is_file() else None
                   for name in (FAMILIARITY, OUT_OF_FOLD, HISTORY)}
        return cls(card, weights, folder, present[FAMILIARITY], present[OUT_OF_FOLD], present[HISTORY])

    @classmethod
    def of_run(cls, run, checkpoint: str = "best") -> "Bundle":
        """A run folder's checkpoint as a bundle (a :class:`~imagemasknet.core.run_folder.RunFolder`): its weights
        and the card built from its config and calibration, nothing else."""
        try:
            card = ModelCard.for_run(run)
        except ModelCardError as error:
            raise BundleError(str(error)) from error
        history = run.path / "history.json"
        return cls(card, run.path / f"{checkpoint}.safetensors", run.path, history=history if history.is_file() else None)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def missing(self) -> list[str]:
        """What this bundle cannot do, as sentences (none for a complete bundle)."""
        gaps = []
        if self.familiarity is None:
            gaps.append("it carries no familiarity reference, so nothing checks whether a scan is a breast "
                        "ultrasound like its training scans, and nothing is refused")
        if not self.card.flag_thresholds:
            gaps.append("it carries no malignancy flag (no cross-validation set one), so no result is flagged")
        return gaps


class ModelStore:
    """Where the bundles are: the shipped ones (``weights/``), the promoted one (the runs folder's ``active``
    link) and the one it replaced. Every reader of "which model" asks here."""

    def __init__(self, weights_dir: Path | None = None, runs: Path | None = None):
        self.weights_dir = Path(weights_dir or WEIGHTS_DIR)
        self.runs = Path(runs) if runs is not None else runs_root()

    def shipped_folder(self, name: str = DEFAULT_MODEL) -> Path:
        return self.weights_dir / name

    def shipped(self, name: str = DEFAULT_MODEL) -> Bundle:
        return Bundle.read(self.shipped_folder(name))

    def names(self) -> list[str]:
        """Registered models with shipped weights, the default first."""
        names = [n for n in list_models() if (self.shipped_folder(n) / WEIGHTS).is_file()]
        return sorted(names, key=lambda n: n != DEFAULT_MODEL)

    @property
    def active_link(self) -> Path:
        return self.runs / ACTIVE_NAME

    def promoted_folder(self) -> Path | None:
        """The promoted bundle's folder, resolved (so its files belong together even while a promotion swaps the
        link), or None when the shipped model is active or the promoted folder is incomplete."""
        try:
            folder = self.active_link.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return folder if (folder / CARD).is_file() and (folder / WEIGHTS).is_file() else None

    def promoted(self) -> Bundle | None:
        folder = self.promoted_folder()
        if folder is None:
            return None
        try:
            bundle = Bundle.read(folder)
            get_spec(bundle.card.arch)
        except (BundleError, KeyError):
            return None  # a damaged promotion never takes the app down: the shipped model serves
        return bundle

    def active(self) -> Bundle:
        """The promoted bundle when there is a sound one, else the shipped default."""
        return self.promoted() or self.shipped()

    def previous(self) -> Bundle | None:
        """The bundle the promoted one replaced (what a roll back restores), or None."""
        folder = self.promoted_folder()
        if folder is None or not (folder / PREVIOUS / WEIGHTS).is_file():
            return None
        try:
            return Bundle.read(folder / PREVIOUS)
        except BundleError:
            return None

    def active_weights(self) -> Path:
        folder = self.promoted_folder()
        return folder / WEIGHTS if folder is not None else self.shipped_folder() / WEIGHTS

    def active_key(self) -> str:
        """Changes whenever a model is promoted or rolled back: key a cached Predictor by it."""
        folder = self.promoted_folder()
        return f"active:{folder.name}" if folder is not None else f"shipped:{DEFAULT_MODEL}"


def readable_by_all(folder: Path) -> None:
    """A bundle installed with the package is read by every user of the machine."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
