"""Classification and segmentation metrics on numpy arrays, with bootstrap confidence intervals."""
from __future__ import annotations

import numpy as np

from imagemasknet.data.dataset import CLASSES


def mean_sd(values) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value): how the docs report figures over folds."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties count half); NaN without both classes."""
    positive = positive.astype(bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks over ties
    unique, inverse, counts = np.unique(sorted_scores, return_inverse=True, return_counts=True)
    if len(unique) < len(scores):
        cumulative = np.cumsum(counts)
        mean_rank = cumulative - (counts - 1) / 2
        ranks[order] = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), thresholds descending."""
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(positive)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0, tps / max(positive.sum(), 1)]
    fpr = np.r_[0, fps / max((~positive).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, scores[distinct]]


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 10) -> list[dict]:
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return [
        {"bin": [float(edges[b]), float(edges[b + 1])], "count": int((which == b).sum()),
         "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
         "accuracy": float(correct[which == b].mean()) if (which == b).any() else None}
        for b in range(bins)
    ]


def point_metrics(probabilities: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """Scalar metrics for one set of predictions (used per epoch and inside the bootstrap)."""
    y_pred = probabilities.argmax(1)
    matrix = confusion(y_true, y_pred)
    true_pos = np.diag(matrix).astype(float)
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    present = support > 0
    recall = np.divide(true_pos, support, out=np.full(len(CLASSES), np.nan), where=support > 0)
    precision = np.divide(true_pos, predicted, out=np.zeros(len(CLASSES)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(CLASSES)),
                   where=(precision + recall) > 0)
    negatives = len(y_true) - support
    specificity = np.divide(negatives - (predicted - true_pos), negatives,
                            out=np.full(len(CLASSES), np.nan), where=negatives > 0)
    out = {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(np.nanmean(recall[present])),
        "macro_f1": float(f1[present].mean()),
        "ece": expected_calibration_error(probabilities, y_true),
    }
    aucs = []
    for c, name in enumerate(CLASSES):
        out[f"recall_{name}"] = float(recall[c])
        out[f"specificity_{name}"] = float(specificity[c])
        auc = roc_auc(y_true == c, probabilities[:, c])
        out[f"auc_{name}"] = auc
        if not np.isnan(auc):
            aucs.append(auc)
    out["macro_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def bootstrap(probabilities: np.ndarray, y_true: np.ndarray, resamples: int = 1000, seed: int = 0,
              clusters: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Point value and percentile 95 % CI of every point metric; resamples clusters when given."""
    point = point_metrics(probabilities, y_true)
    rng = np.random.default_rng(seed)
    units = np.unique(clusters) if clusters is not None else None
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(resamples):
        if units is None:
            rows = rng.integers(0, len(y_true), len(y_true))
        else:
            chosen = rng.choice(units, len(units))
            rows = np.concatenate([np.flatnonzero(clusters == u) for u in chosen])
        values = point_metrics(probabilities[rows], y_true[rows])
        for k, v in values.items():
            samples[k].append(v)
    result = {}
    for k, v in point.items():
        finite = np.array([s for s in samples[k] if not np.isnan(s)])
        low, high = (np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan))
        result[k] = {"value": v, "ci_low": float(low), "ci_high": float(high)}
    return result


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood (grid over log T, then refined)."""
    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-log_p[np.arange(len(y_true)), y_true].mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 300))
    best = min(grid, key=nll)
    fine = np.exp(np.linspace(np.log(best) - 0.05, np.log(best) + 0.05, 41))
    return float(min(fine, key=nll))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
