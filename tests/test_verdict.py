"""What a result says in plain words (inference/verdict.py) and the rules behind it (evaluation/decision.py): a
marked lesion is a lesion, "normal" is reassurance set for sensitivity, and nothing unshown is shown green."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imagemasknet.core.paths import WEIGHTS_DIR
from imagemasknet.evaluation.decision import (EXCLUSION_TARGET, decision_rules, exclusion_threshold, given_lesion,
                                              is_reassured)
from imagemasknet.inference.predictor import TRUST_LEVELS, Prediction
from imagemasknet.inference.verdict import how_decided, trust_line, verdict
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.models.bundle import read_out_of_fold

FIGURES = {"tested": 0.9, "unfamiliar": 0.62}


def prediction(probabilities, mode="image", unfamiliar=False, threshold=0.3, exclusion=0.4, own=None, target=0.9):
    top = max(probabilities, key=probabilities.get)
    return Prediction(top, probabilities, mode, "m", [], None, threshold, "a source", target, 1.0, unfamiliar, None,
                      exclusion, own, dict(FIGURES))


NORMAL_SURE = {"normal": 0.9, "benign": 0.07, "malignant": 0.03}
NORMAL_UNSURE = {"normal": 0.62, "benign": 0.3, "malignant": 0.08}  # top, but under the 0.7 used below
BENIGN = {"normal": 0.05, "benign": 0.85, "malignant": 0.10}
MALIGNANT = {"normal": 0.05, "benign": 0.15, "malignant": 0.80}


def test_each_trust_level_has_its_line():
    assert trust_line(prediction(BENIGN)) == "Tested: on scans like this the flag caught 90% of cancers."
    assert trust_line(prediction(BENIGN, unfamiliar=True)) == (
        "Unfamiliar scanner or view: at a hospital the model never trained on, this flag caught 62% of cancers.")
    low = prediction({"normal": 0.2, "benign": 0.45, "malignant": 0.35}, threshold=0.5)
    assert low.trust == "low confidence" and trust_line(low).startswith("Low confidence: no answer reaches 60%")
    assert {prediction(BENIGN).trust, prediction(BENIGN, unfamiliar=True).trust, low.trust} == set(TRUST_LEVELS)


def test_suspicious_is_alarm_whatever_the_trust():
    for unfamiliar in (False, True):
        said = verdict(prediction(MALIGNANT, unfamiliar=unfamiliar))
        assert said.tone == "alarm" and said.title == "Suspicious for malignancy" and "90% of cancers" in said.reason


def test_green_only_for_a_tested_result_that_was_shown_safe():
    assert verdict(prediction(BENIGN)).tone == "reassuring"
    assert verdict(prediction(NORMAL_SURE)).tone == "reassuring"
    assert verdict(prediction(NORMAL_SURE)).title == "No lesion seen"
    for unsafe in (prediction(BENIGN, unfamiliar=True), prediction(NORMAL_SURE, unfamiliar=True),
                   prediction(NORMAL_UNSURE, exclusion=0.7), prediction(NORMAL_SURE, exclusion=None),
                   prediction(BENIGN, threshold=None)):
        assert verdict(unsafe).tone == "neutral", unsafe


def test_a_normal_answer_under_the_exclusion_threshold_or_untested_cannot_exclude_a_lesion():
    for case in (prediction(NORMAL_UNSURE, exclusion=0.7), prediction(NORMAL_SURE, unfamiliar=True),
                 prediction(NORMAL_SURE, exclusion=None)):
        assert case.lesion_not_excluded and case.record("x")["lesion_not_excluded"] is True
        assert verdict(case).title == "A lesion cannot be excluded"
    assert not prediction(NORMAL_SURE).lesion_not_excluded
    assert not prediction(BENIGN).lesion_not_excluded  # a lesion answer excludes nothing


def test_a_marked_lesion_is_benign_or_malignant_and_a_disagreement_is_said():
    own = {"normal": 0.76, "benign": 0.09, "malignant": 0.15}
    given = given_lesion(own)
    assert given["normal"] == 0 and given["benign"] + given["malignant"] == pytest.approx(1)
    assert given["malignant"] == pytest.approx(0.15 / 0.24)
    case = prediction(given, mode="mask", own=own, threshold=0.2)
    assert case.predicted_class == "malignant" and case.model_sees_no_lesion
    said = verdict(case)
    assert said.title == "Suspicious for malignancy" and "sees no lesion here" in said.disagreement and "76%" in said.disagreement
    agreeing = prediction(given_lesion(BENIGN), mode="mask", own=BENIGN, threshold=0.2)
    assert verdict(agreeing).disagreement is None
    assert any("P(· | a lesion)" in line and "normal 76.0%" in line for line in how_decided(case))


def test_in_mask_mode_trust_is_the_models_own_answer_and_a_disagreement_is_never_green():
    """Review of issue 25: the renormalised pair's top is always at least 0.5, so judged on it a normal 0.90 answer
    became a tested benign 0.8 and a green "Not flagged"."""
    sure_normal = {"normal": 0.90, "benign": 0.08, "malignant": 0.02}
    case = prediction(given_lesion(sure_normal), mode="mask", own=sure_normal)
    assert case.predicted_class == "benign" and case.confidence == pytest.approx(0.8) and case.trust == "tested"
    assert verdict(case).title == "Not flagged for malignancy" and verdict(case).tone == "neutral"
    unsure = {"normal": 0.45, "benign": 0.40, "malignant": 0.15}
    assert prediction(given_lesion(unsure), mode="mask", own=unsure).trust == "low confidence"
    assert verdict(prediction(given_lesion(BENIGN), mode="mask", own=BENIGN)).tone == "reassuring"


def test_a_scan_the_model_trained_on_is_never_green_and_says_it_is_not_a_test():
    for probabilities in (BENIGN, NORMAL_SURE):
        seen = prediction(probabilities)
        assert verdict(seen).tone == "reassuring"
        seen.training_match = "busi:benign (4)"
        assert verdict(seen).tone == "neutral" and verdict(seen).trust_line.startswith("Not a test")


def test_how_decided_states_each_threshold():
    lines = " ".join(how_decided(prediction(NORMAL_SURE)))
    assert "30.0%" in lines and "40.0%" in lines and "97%" in lines


def test_the_exclusion_threshold_keeps_97_percent_of_lesions_under_it():
    rng = np.random.default_rng(0)
    p_normal = rng.random(1000)
    lesion = rng.random(1000) < 0.7
    threshold = exclusion_threshold(lesion, p_normal)
    assert (p_normal[lesion] > threshold).mean() <= 1 - EXCLUSION_TARGET
    assert (p_normal[lesion] >= threshold).mean() > 1 - EXCLUSION_TARGET  # the lowest such threshold
    assert is_reassured({"normal": 0.9, "benign": 0.05, "malignant": 0.05}, 0.5)
    assert not is_reassured({"normal": 0.45, "benign": 0.5, "malignant": 0.05}, 0.1)  # not the top class
    assert not is_reassured({"normal": 0.9, "benign": 0.05, "malignant": 0.05}, None)


def test_the_shipped_models_rules_are_what_its_out_of_fold_predictions_give():
    card = json.loads((WEIGHTS_DIR / DEFAULT_MODEL / "model.json").read_text())
    oof = read_out_of_fold(WEIGHTS_DIR / DEFAULT_MODEL / "oof.json")
    rules = decision_rules(oof, ["image", "mask"], card["familiarity"]["unfamiliar_above"], resamples=50)
    assert card["lesion_exclusion"]["threshold"] == pytest.approx(rules["lesion_exclusion"]["threshold"])
    for mode in ("image", "mask"):
        assert card["malignancy_flag"]["modes"][mode]["threshold"] == pytest.approx(
            rules["malignancy_flag"]["modes"][mode]["threshold"])
    assert card["malignancy_flag"]["modes"]["mask"]["footing"] == "P(malignant | a lesion)"
    figures = card["lesion_exclusion"]["cross_validated"]["lesions_reassured"]
    assert figures["value"] <= 1 - EXCLUSION_TARGET + 0.01 and figures["ci_low"] <= figures["value"] <= figures["ci_high"]
