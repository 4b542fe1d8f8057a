"""The decisions drawn from a prediction, each defined once for the app, the CLI, the reports and the Gallery:
the malignancy flag and the threshold behind it, and when a result counts as low-confidence.

**The malignancy flag.** The largest probability is a poor decision for a clinician: the study-style argmax
calls too few cancers malignant (on BUS-BRA about a third). The flag is set for sensitivity instead:
"suspicious for malignancy" when the calibrated P(malignant) reaches a threshold chosen on the model's
out-of-fold BUSI predictions so that 90 % of the malignant scans reach it (the model card's
``malignancy_flag``, written by ``benchmarks/summarise.py --ship``). A threshold a site saved for these exact
weights (``imagemasknet evaluate --data … --save-threshold``) replaces it.

**Low confidence.** A result is low-confidence when its top calibrated probability is below
:data:`LOW_CONFIDENCE_BELOW`: with three classes, anything under 0.6 leaves at least 0.4 to the others.
"""
from __future__ import annotations

import math

import numpy as np

from imagemasknet.data.dataset import CLASSES

TARGET_SENSITIVITY = 0.90  # of malignant scans flagged, out of fold (issue: "a stated sensitivity, default 90 %")
LOW_CONFIDENCE_BELOW = 0.60  # top calibrated probability; the Gallery's former "low confidence" line, kept


def is_low_confidence(probabilities: dict[str, float] | np.ndarray) -> bool:
    values = probabilities.values() if isinstance(probabilities, dict) else np.asarray(probabilities).ravel()
    return max(float(v) for v in values) < LOW_CONFIDENCE_BELOW


def is_suspicious(p_malignant: float, threshold: float | None) -> bool | None:
    """Whether P(malignant) reaches the threshold; None when the model has no threshold."""
    return None if threshold is None else bool(p_malignant >= threshold)


def sensitivity_threshold(is_malignant: np.ndarray, p_malignant: np.ndarray, sensitivity: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold that flags at least ``sensitivity`` of the malignant scans."""
    positives = np.sort(np.asarray(p_malignant, dtype=np.float64)[np.asarray(is_malignant, dtype=bool)])[::-1]
    if not len(positives):
        raise ValueError("no malignant scans: no threshold can be chosen")
    return float(positives[max(1, math.ceil(round(sensitivity * len(positives), 9))) - 1])


def flag_figures(labels: np.ndarray, p_malignant: np.ndarray, flagged: np.ndarray, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Sensitivity (malignant flagged), specificity on benign scans and on all non-malignant scans, each
    with a bootstrap 95 % CI over the scans."""
    labels, flagged = np.asarray(labels), np.asarray(flagged, dtype=bool)
    malignant, benign = labels == CLASSES.index("malignant"), labels == CLASSES.index("benign")

    def figures(rows: np.ndarray) -> dict[str, float]:
        m, b, other = malignant[rows], benign[rows], ~malignant[rows]
        f = flagged[rows]
        return {"sensitivity": float(f[m].mean()) if m.any() else math.nan,
                "specificity_benign": float((~f[b]).mean()) if b.any() else math.nan,
                "specificity_all_non_malignant": float((~f[other]).mean()) if other.any() else math.nan}

    point = figures(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    draws = [figures(rng.integers(0, len(labels), len(labels))) for _ in range(resamples)]
    result = {"n_malignant": int(malignant.sum()), "n_benign": int(benign.sum()), "n": int(len(labels))}
    for key, value in point.items():
        samples = np.array([d[key] for d in draws])
        samples = samples[~np.isnan(samples)]
        low, high = np.percentile(samples, [2.5, 97.5]) if len(samples) else (math.nan, math.nan)
        result[key] = {"value": value, "ci_low": float(low), "ci_high": float(high)}
    return result
