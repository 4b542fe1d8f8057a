"""The malignancy threshold a site chooses on its own labelled scans, saved for the weights it was chosen for,
and own-data evaluations as folders the Training page lists like runs.

The *operating point* is chosen on lesion scans (benign and malignant): the highest threshold on the
probability the app compares with it (the calibrated P(malignant) in image mode, P(malignant | a lesion) in
mask mode) at which at least the target share of the
malignant scans is flagged, and the share of benign scans left unflagged there (the specificity it
costs). ``imagemasknet evaluate --data … --save-threshold`` writes it to
``runs_root()/site_threshold.json`` with the sha256 of the weights it was chosen for;
:func:`load_site_threshold` and :func:`site_operating_point` read it for the app, which applies it only
to those weights: a retrained, promoted or updated model has other probabilities and needs its own.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from imagemasknet.core.files import file_sha256, now, read_json, write_json
from imagemasknet.core.paths import runs_root
from imagemasknet.core.run_folder import RunFolder, new_run_name
from imagemasknet.data.dataset import CLASSES
from imagemasknet.evaluation.decision import GIVEN_LESION, malignant_given_lesion, sensitivity_threshold

SITE_THRESHOLD_FILE = "site_threshold.json"


# --------------------------------------------------------------------------- operating point

def choose_threshold(is_malignant: np.ndarray, p_malignant: np.ndarray, sensitivity: float = 0.95) -> dict:
    """The highest threshold t with share(p >= t | malignant) >= ``sensitivity``, and what it costs:
    the share of the other scans (benign) with p >= t. Scans at exactly t are flagged."""
    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity: {sensitivity} is not in (0, 1]")
    y = np.asarray(is_malignant, dtype=bool)
    p = np.asarray(p_malignant, dtype=np.float64)
    result = {"target_sensitivity": float(sensitivity), "n_malignant": int(y.sum()), "n_benign": int((~y).sum())}
    if not y.any():
        return {**result, "threshold": None, "sensitivity": None, "specificity": None,
                "note": "no malignant scans: no threshold can be chosen"}
    threshold = sensitivity_threshold(y, p, sensitivity)
    positives = p[y]
    flagged = p >= threshold
    result.update(
        threshold=threshold,
        sensitivity=float(flagged[y].mean()),
        specificity=float((~flagged[~y]).mean()) if (~y).any() else None,
        malignant_missed=int((~flagged[y]).sum()),
        benign_flagged=int(flagged[~y].sum()),
    )
    if len(positives) < 20:
        result["note"] = (f"chosen on only {len(positives)} malignant scans: the sensitivity reached on new "
                          "scans may be well below the target")
    return result


def operating_point(labels: np.ndarray, probabilities: np.ndarray, sensitivity: float = 0.95,
                    mode: str = "image") -> dict:
    """:func:`choose_threshold` on the lesion scans (benign and malignant) of calibrated probabilities (N, 3), on
    the footing the app applies in ``mode``: P(malignant) in image mode, P(malignant | a lesion) in mask mode;
    in image mode with normal scans present, also the share of all non-malignant scans left unflagged."""
    labels = np.asarray(labels)
    normal, malignant = CLASSES.index("normal"), CLASSES.index("malignant")
    lesion = labels != normal
    given = mode == "mask"
    p = malignant_given_lesion(probabilities) if given else np.asarray(probabilities)[:, malignant]
    result = {**choose_threshold(labels[lesion] == malignant, p[lesion], sensitivity),
              "footing": GIVEN_LESION if given else "P(malignant)"}
    if not given and result["threshold"] is not None and (labels == normal).any():
        others = labels != malignant
        result["specificity_all_non_malignant"] = float((p[others] < result["threshold"]).mean())
    return result


# --------------------------------------------------------------------------- the site threshold

def site_threshold_path() -> Path:
    return runs_root() / SITE_THRESHOLD_FILE


def site_threshold_record(result: dict, data: str, model: str, weights: str | None = None) -> dict:
    """What ``--save-threshold`` writes: the image-mode operating point at the top (the Classify
    page's default mode), every mode's under ``modes``."""
    points = {m: r["operating_point"] for m, r in result["modes"].items() if r.get("operating_point", {}).get("threshold") is not None}
    if not points:
        raise ValueError("no operating point to save: the data has no malignant scans")
    mode = "image" if "image" in points else next(iter(points))
    top = points[mode]
    return {
        "threshold": top["threshold"],
        "sensitivity": top["sensitivity"],
        "specificity": top["specificity"],
        "target_sensitivity": top["target_sensitivity"],
        "mode": mode,
        "data": str(data),
        "model": model,
        "weights": weights,
        "weights_sha256": file_sha256(weights) if weights else None,
        "date": now(),
        "n_malignant": top["n_malignant"],
        "n_benign": top["n_benign"],
        "modes": {m: {k: p.get(k) for k in ("threshold", "footing", "sensitivity", "target_sensitivity", "specificity",
                                             "n_malignant", "n_benign")}
                  for m, p in points.items()},
    }


def save_site_threshold(record: dict, path: str | os.PathLike | None = None) -> Path:
    target = Path(path) if path else site_threshold_path()
    write_json(target, record)
    return target


def load_site_threshold(path: str | os.PathLike | None = None) -> dict | None:
    """The saved site threshold (``runs_root()/site_threshold.json`` unless ``path``), or None when there
    is none or it is unreadable."""
    record = read_json(Path(path) if path else site_threshold_path())
    if not isinstance(record, dict) or not isinstance(record.get("threshold"), (int, float)):
        return None
    return record


def site_threshold_mismatch(site: dict, model: str | None = None, weights_sha256: str | None = None) -> str | None:
    """Why a saved site threshold does not apply to the model ``model`` with these weights; None when it does."""
    if model is not None and site.get("model") not in (None, model):
        return f"it was chosen for the model {site['model']}"
    recorded = site.get("weights_sha256")
    if weights_sha256 is not None and recorded is not None and recorded != weights_sha256:
        return "it was chosen for other weights of this model (retrained, promoted or updated since)"
    return None


def site_operating_point(mode: str = "image", model: str | None = None, site: dict | None = None,
                         weights_sha256: str | None = None) -> dict | None:
    """The site's operating point for ``mode`` (``threshold``, ``footing``, ``sensitivity`` reached on the site's
    scans, ``target_sensitivity``); None when none is saved, it was chosen for another model or other weights
    (:func:`site_threshold_mismatch`), or it has no threshold (or no sensitivity) for that mode. Files saved before footings were
    recorded chose every mode's threshold on P(malignant)."""
    site = site if site is not None else load_site_threshold()
    if not site or site_threshold_mismatch(site, model, weights_sha256):
        return None
    point = dict((site.get("modes") or {}).get(mode) or {})
    if not point and site.get("mode", "image") == mode:
        point = {k: site.get(k) for k in ("threshold", "sensitivity")}
    if not isinstance(point.get("threshold"), (int, float)):
        return None
    point["footing"] = point.get("footing") or "P(malignant)"
    point["target_sensitivity"] = (point.get("target_sensitivity") or site.get("target_sensitivity")
                                   or point.get("sensitivity"))
    if not isinstance(point["target_sensitivity"], (int, float)):
        return None  # not a record --save-threshold wrote: what it was set to catch is unknown
    return point


# --------------------------------------------------------------------------- own-data report folders

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def data_name(path: str | os.PathLike) -> str:
    path = Path(path)
    name = path.stem if path.is_file() else path.name
    if path.is_file() and name.lower() in {"labels", "manifest", "data", "index"}:
        name = path.parent.name or name  # labels.csv says little; its folder says more
    return _slug(name)


def write_owndata_report(result: dict, data: str | os.PathLike, arch: str, weights: str | None = None,
                         root: Path | None = None) -> Path:
    """An evaluation on a user's data as a folder the Training page lists like a run:
    ``owndata-<name>-<time>/`` with ``config.json``, ``status.json`` (finished) and ``metrics.json``."""
    root = Path(root or runs_root())
    folder = RunFolder(root / new_run_name(f"owndata-{data_name(data)}", root))
    folder.path.mkdir(parents=True)
    started = now()
    folder.write_config({"arch": arch, "data": str(data), "weights": weights, "kind": "own-data evaluation",
                         "fold": None})
    folder.write_metrics(result)
    folder.write_status("finished", started=started, kind="own-data evaluation")
    return folder.path
