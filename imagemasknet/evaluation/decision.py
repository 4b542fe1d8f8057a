"""The decisions drawn from a prediction, each defined once for the app, the CLI, the reports and the Gallery:
the malignancy flag and the threshold behind it, when a lesion cannot be excluded, what a given mask means, and
when a result counts as low-confidence. :func:`decision_rules` sets every threshold from a cross-validation's
out-of-fold predictions.

**The malignancy flag.** The largest probability is a poor decision for a clinician: the study-style argmax
calls too few cancers malignant (on BUS-BRA about a third). The flag is set for sensitivity instead:
"suspicious for malignancy" when the calibrated P(malignant) reaches a threshold chosen on the model's
out-of-fold BUSI predictions so that 90 % of the malignant scans reach it (the model card's
``malignancy_flag``, written by ``benchmarks/summarise.py --ship``). A threshold a site saved for these exact
weights (``imagemasknet evaluate --data … --save-threshold``) replaces it.

**A lesion cannot be excluded.** "Normal" is reassurance, so it is set for sensitivity too: a scan whose top
class is normal is reassured only when P(normal) exceeds a threshold chosen on the out-of-fold predictions so
that at least 97 % of the lesion scans stay under it, and only when the result is a tested one (a familiar
scan, a confident answer); otherwise the verdict says a lesion cannot be excluded (the record's
``lesion_not_excluded``).

**A marked lesion is a lesion.** With a mask (mask mode) the user says there is a lesion, so the verdict is
benign or malignant: the calibrated P(benign) and P(malignant) renormalised to sum to one (P(· | a lesion)), and
the mask-mode flag's threshold is chosen on the same footing, on the out-of-fold lesion scans.

**Low confidence.** A result is low-confidence when its top calibrated probability is below
:data:`LOW_CONFIDENCE_BELOW`: with three classes, anything under 0.6 leaves at least 0.4 to the others.
"""
from __future__ import annotations

import math

import numpy as np

from imagemasknet.data.dataset import CLASSES

TARGET_SENSITIVITY = 0.90  # of malignant scans flagged, out of fold (issue: "a stated sensitivity, default 90 %")
EXCLUSION_TARGET = 0.97  # of lesion scans NOT reassured as normal, out of fold (issue 25)
GIVEN_LESION = "P(malignant | a lesion)"  # the mask-mode flag's footing, as the model card names it
LOW_CONFIDENCE_BELOW = 0.60  # top calibrated probability; the Gallery's former "low confidence" line, kept


def is_low_confidence(probabilities: dict[str, float] | np.ndarray) -> bool:
    values = probabilities.values() if isinstance(probabilities, dict) else np.asarray(probabilities).ravel()
    return max(float(v) for v in values) < LOW_CONFIDENCE_BELOW


def malignant_given_lesion(probabilities: np.ndarray) -> np.ndarray:
    """P(malignant | a lesion) of calibrated probabilities (N, 3): P(malignant) / (P(benign) + P(malignant)), and
    0.5 where the model gives a lesion no chance at all."""
    p = np.asarray(probabilities, dtype=np.float64)
    lesion = p[:, 1] + p[:, 2]
    return np.divide(p[:, 2], lesion, out=np.full(len(p), 0.5), where=lesion > 0)


def given_lesion(probabilities: dict[str, float]) -> dict[str, float]:
    """P(class | a lesion): benign and malignant renormalised to sum to one, normal 0."""
    malignant = float(malignant_given_lesion(np.array([[probabilities[c] for c in CLASSES]]))[0])
    return {"normal": 0.0, "benign": 1.0 - malignant, "malignant": malignant}


def is_reassured(probabilities: dict[str, float], threshold: float | None) -> bool:
    """Normal is the top class and P(normal) exceeds the exclusion threshold (never without a threshold)."""
    top = max(probabilities, key=probabilities.get)
    return top == "normal" and threshold is not None and probabilities["normal"] > threshold


def exclusion_threshold(is_lesion: np.ndarray, p_normal: np.ndarray, target: float = EXCLUSION_TARGET) -> float:
    """The P(normal) a scan must exceed to be reassured: at most ``1 - target`` of the lesion scans exceed it."""
    lesion = np.sort(np.asarray(p_normal, dtype=np.float64)[np.asarray(is_lesion, dtype=bool)])[::-1]
    if not len(lesion):
        raise ValueError("no lesion scans: no exclusion threshold can be chosen")
    allowed = math.floor(round((1 - target) * len(lesion), 9))
    return float(lesion[allowed]) if allowed < len(lesion) else 0.0


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


def _with_ci(values: np.ndarray, resamples: int, rng: np.random.Generator) -> dict:
    """The share of true ``values`` with a bootstrap 95 % CI."""
    values = np.asarray(values, dtype=bool)
    if not len(values):
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    draws = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"value": float(values.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(values))}


def exclusion_figures(labels: np.ndarray, reassured: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Lesion scans reassured as normal (the misses the rule bounds) and normal scans reassured, with CIs."""
    labels, reassured = np.asarray(labels), np.asarray(reassured, dtype=bool)
    normal = labels == CLASSES.index("normal")
    rng = np.random.default_rng(seed)
    return {"lesions_reassured": _with_ci(reassured[~normal], resamples, rng),
            "normals_reassured": _with_ci(reassured[normal], resamples, rng)}


def _cross_fitted(folds: np.ndarray, choose, apply) -> np.ndarray:
    """Each fold's decisions by the threshold chosen on the other folds."""
    decided = np.zeros(len(folds), dtype=bool)
    for k in np.unique(folds):
        own = folds == k
        decided[own] = apply(own, choose(~own))
    return decided


def decision_rules(rows: list[dict], modes: list[str], unfamiliar_above: float | None = None,
                   external: dict | None = None, resamples: int = 1000) -> dict:
    """Every threshold a model carries, from out-of-fold rows (``label``, ``fold``, ``probabilities`` per mode,
    calibrated; ``familiarity`` when ``unfamiliar_above`` is given): the malignancy flag per mode (mask mode on
    the P(· | a lesion) footing, lesion scans only) and the lesion exclusion (image mode; its figures count only
    tested results as reassured, as predictions do). Each with its out-of-fold figures, the same rule
    cross-validated (the threshold chosen on the other folds) and, given ``external`` ({"name", "labels",
    "probabilities": {mode: (N, 3)}, optionally "familiar": (N,) bool}), the figures there (report only: it
    chooses nothing)."""
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    folds = np.array([r["fold"] for r in rows])
    malignant = labels == CLASSES.index("malignant")
    flag = {"target_sensitivity": TARGET_SENSITIVITY, "modes": {}}
    for mode in modes:
        probabilities = np.array([[r["probabilities"][mode][c] for c in CLASSES] for r in rows])
        p, keep, footing = probabilities[:, 2], np.ones(len(rows), bool), "P(malignant)"
        if mode == "mask":
            p = malignant_given_lesion(probabilities)
            keep, footing = labels != CLASSES.index("normal"), GIVEN_LESION
        threshold = sensitivity_threshold(malignant[keep], p[keep])
        entry = {"threshold": threshold, "footing": footing,
                 "out_of_fold": flag_figures(labels[keep], p[keep], p[keep] >= threshold, resamples)}
        if len(np.unique(folds)) > 1:
            nested = _cross_fitted(folds[keep], lambda others: sensitivity_threshold(malignant[keep][others], p[keep][others]),
                                   lambda own, t: p[keep][own] >= t)
            entry["cross_validated"] = flag_figures(labels[keep], p[keep], nested, resamples)
        if external is not None and mode in external["probabilities"]:
            outside = np.asarray(external["probabilities"][mode])
            q = malignant_given_lesion(outside) if mode == "mask" else outside[:, 2]
            entry[external["name"]] = flag_figures(external["labels"], q, q >= threshold, resamples)
        flag["modes"][mode] = entry
    image = np.array([[r["probabilities"]["image"][c] for c in CLASSES] for r in rows])
    p_normal = image[:, 0]
    tested = image.max(1) >= LOW_CONFIDENCE_BELOW
    if unfamiliar_above is not None:
        tested &= np.array([r["familiarity"] for r in rows]) <= unfamiliar_above
    lesion = labels != CLASSES.index("normal")
    threshold = exclusion_threshold(lesion, p_normal)
    candidates = (image.argmax(1) == 0) & tested
    exclusion = {"target": EXCLUSION_TARGET, "threshold": threshold, "mode": "image",
                 "rule": "reassured as normal only when normal is the top class, P(normal) exceeds the threshold and "
                         "the result is tested (familiar, confident); otherwise a top class of normal reads 'a lesion "
                         "cannot be excluded'",
                 "out_of_fold": exclusion_figures(labels, candidates & (p_normal > threshold), resamples)}
    if len(np.unique(folds)) > 1:
        nested = _cross_fitted(folds, lambda others: exclusion_threshold(lesion[others], p_normal[others]),
                               lambda own, t: candidates[own] & (p_normal[own] > t))
        exclusion["cross_validated"] = exclusion_figures(labels, nested, resamples)
    if external is not None and "image" in external["probabilities"]:
        outside = np.asarray(external["probabilities"]["image"])
        familiar = np.asarray(external.get("familiar", np.ones(len(outside), bool)))
        reassured = (outside.argmax(1) == 0) & (outside.max(1) >= LOW_CONFIDENCE_BELOW) & familiar & (outside[:, 0] > threshold)
        exclusion[external["name"]] = {**exclusion_figures(external["labels"], reassured, resamples),
                                       "lesions_called_normal": float((outside.argmax(1) == 0)[external["labels"] != 0].mean())}
    return {"malignancy_flag": flag, "lesion_exclusion": exclusion}
