"""imagemasknet.evaluation.metrics against hand-computed values and synthetic data with a known answer."""
from __future__ import annotations

import numpy as np
import pytest

from imagemasknet.evaluation.metrics import (bootstrap, confusion, dice, expected_calibration_error, fit_temperature,
                                             point_metrics, roc_auc, roc_curve, softmax)


def pairwise_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUC by definition: share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_roc_auc_hand_computed_with_ties():
    # positives 0.9, 0.5, 0.5; negatives 0.5, 0.1.
    # Pairs: 0.9 beats both (2); each 0.5 ties 0.5 (0.5) and beats 0.1 (1) → 2 + 2 × 1.5 = 5 of 6.
    positive = np.array([True, False, True, True, False])
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    assert roc_auc(positive, scores) == pytest.approx(5 / 6)
    # Without ties, a perfect and a reversed ranking.
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    # All scores tied: chance.
    assert roc_auc(np.array([1, 0, 1, 0]), np.full(4, 0.3)) == 0.5
    # One class only: undefined.
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.4])))


def test_roc_auc_matches_pairwise_definition_on_tied_random_scores():
    rng = np.random.default_rng(3)
    positive = rng.random(200) < 0.3
    scores = rng.integers(0, 8, 200) / 8.0  # many ties
    assert roc_auc(positive, scores) == pytest.approx(pairwise_auc(positive, scores), abs=1e-12)


def test_roc_curve_end_points_and_area():
    positive = np.array([True, False, True, True, False])
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    fpr, tpr, thresholds = roc_curve(positive, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(thresholds) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(5 / 6)


def three_class(confidence: float, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """n predictions of class 0 with the given confidence; a share ``accuracy`` are labelled 0."""
    probabilities = np.tile([confidence, (1 - confidence) / 2, (1 - confidence) / 2], (n, 1))
    labels = np.ones(n, dtype=np.int64)
    labels[: round(accuracy * n)] = 0
    return probabilities, labels


def test_ece_perfectly_calibrated_is_zero():
    p1, y1 = three_class(0.8, 50, 0.8)
    p2, y2 = three_class(0.5, 20, 0.5)
    p3, y3 = three_class(0.95, 40, 0.95)
    probabilities, labels = np.vstack([p1, p2, p3]), np.concatenate([y1, y2, y3])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident():
    probabilities, labels = three_class(0.95, 40, 0.5)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.45)
    # Two bins, weighted by their share of the scans: 0.5 × |0.9 − 0.6| + 0.5 × |0.6 − 0.6|.
    p1, y1 = three_class(0.9, 30, 0.6)
    p2, y2 = three_class(0.6, 30, 0.6)
    assert expected_calibration_error(np.vstack([p1, p2]), np.concatenate([y1, y2])) == pytest.approx(0.15)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (6000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    for temperature in (0.5, 2.5):
        fitted = fit_temperature(true_logits * temperature, labels)
        assert fitted == pytest.approx(temperature, rel=0.08), temperature
    # Calibrated logits need no change.
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.08)


def test_softmax_rows_sum_to_one_and_temperature_flattens():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = softmax(logits)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1)
    assert softmax(logits[1:], 10.0).max() < p[1].max()


def test_point_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    probabilities = np.eye(3)[predicted] * 0.7 + 0.1
    assert confusion(y, predicted).tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    m = point_metrics(probabilities, y)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_normal"] == pytest.approx(0.5)
    assert m["recall_benign"] == pytest.approx(2 / 3)
    assert m["recall_malignant"] == pytest.approx(1.0)
    precision = np.array([1.0, 2 / 3, 0.5])
    recall = np.array([0.5, 2 / 3, 1.0])
    assert m["macro_precision"] == pytest.approx(precision.mean())
    assert m["macro_f1"] == pytest.approx((2 * precision * recall / (precision + recall)).mean())


def test_bootstrap_confidence_intervals_contain_the_point_value():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    logits = rng.normal(0, 1, (150, 3))
    logits[np.arange(150), labels] += 1.2  # better than chance, far from perfect
    probabilities = softmax(logits)
    result = bootstrap(probabilities, labels, resamples=200, seed=0)
    assert set(result) == set(point_metrics(probabilities, labels))
    for name, m in result.items():
        assert m["ci_low"] <= m["value"] <= m["ci_high"], name
    accuracy = result["accuracy"]
    assert 0.4 < accuracy["value"] < 0.9
    assert accuracy["ci_high"] - accuracy["ci_low"] > 0.05
    # Same seed, same intervals; clustered resampling also brackets the point value.
    assert bootstrap(probabilities, labels, resamples=200, seed=0) == result
    clusters = np.arange(150) // 3
    clustered = bootstrap(probabilities, labels, resamples=200, seed=0, clusters=clusters)
    assert clustered["accuracy"]["value"] == accuracy["value"]
    assert clustered["accuracy"]["ci_low"] <= accuracy["value"] <= clustered["accuracy"]["ci_high"]


def test_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
