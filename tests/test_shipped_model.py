"""The shipped model: weights and card load, outputs are sane in both modes, and predictions on
real fold-0 test scans reproduce those recorded when the card was written."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imagemasknet.core.files import read_json
from imagemasknet.core.paths import WEIGHTS_DIR
from imagemasknet.data.dataset import CLASSES
from imagemasknet.data.scans import read_scan
from imagemasknet.data.sources import training_set_of
from imagemasknet.data.splits import source_folds
from imagemasknet.inference.predictor import Predictor, available_models
from imagemasknet.models import DEFAULT_MODEL, build_model, get_spec


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.shipped(DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="module")
def card() -> dict:
    return read_json(WEIGHTS_DIR / DEFAULT_MODEL / "model.json")


def test_shipped_weights_stay_under_ten_megabytes():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 10_000_000, f"weights/ holds {total / 1e6:.2f} MB"


def test_default_model_is_shipped_and_listed_first():
    assert available_models()[0] == DEFAULT_MODEL


def test_card_has_every_section(card):
    for key in ("architecture", "config", "preprocessing", "training_data", "temperature", "cross_validation",
                "malignancy_flag", "lesion_exclusion", "familiarity", "external", "date", "intended_use",
                "limitations", "reference_predictions"):
        assert key in card, key
    assert [s["name"] for s in card["training_data"]["sources"]] == card["config"]["sources"].split("+")
    assert card["training_data"]["fingerprint"] and card["training_data"]["scans"] > 0
    for mode in get_spec(DEFAULT_MODEL).modes:
        cv = card["cross_validation"][mode]
        assert len(cv["folds"]) == 5
        assert 0 < cv["accuracy"]["mean"] <= 1
        fold = cv["folds"][0]["accuracy"]
        assert fold["ci_low"] <= fold["value"] <= fold["ci_high"]
        assert 0 < card["temperature"][mode] < 20
        assert "benign_vs_malignant_auc" in card["external"]["busbra"][mode]


def test_registry_builds_the_shipped_architecture(card):
    model = build_model(card["architecture"]["name"])
    assert sum(p.numel() for p in model.parameters()) == card["architecture"]["parameters"]


def test_outputs_have_the_right_shapes_and_ranges_in_both_modes(predictor, busi_root):
    scan = read_scan(busi_root / "malignant" / "images" / "malignant (1).png")
    from imagemasknet.data.scans import read_mask

    mask = read_mask(busi_root / "malignant" / "masks" / "malignant (1)_mask.png", scan.pixels.shape)
    for given in (None, mask, np.zeros_like(mask)):
        prediction = predictor.predict(scan, given)
        assert prediction.mode == ("image" if given is None else "mask")
        probabilities = np.array([prediction.probabilities[c] for c in CLASSES])
        assert np.all((probabilities >= 0) & (probabilities <= 1))
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert prediction.predicted_class in CLASSES
        assert prediction.lesion_mask.shape == scan.pixels.shape and prediction.lesion_mask.dtype == bool
    raw = predictor.model(torch.zeros(2, 1, 256, 256))
    assert raw.logits.shape == (2, 3) and raw.lesion_logits.shape == (2, 1, 256, 256)


def test_reference_predictions_reproduce(predictor, card):
    """The references were computed with the float32 weights; the float16 copy shipped must give the same
    probabilities within 0.01 (and the same class wherever the top two differ by more than that). They are
    test scans of pooled fold 0, so the fold-0 model never trained on them."""
    data = training_set_of(card["config"])
    cases, fold0 = data.by_id(), set(source_folds(data)[0])
    tolerance = 0.01 if card.get("storage", "").startswith("float16") else 1e-4
    assert len(card["reference_predictions"]) >= 5
    for reference in card["reference_predictions"]:
        assert reference["id"] in fold0
        prediction = predictor.predict(read_scan(cases[reference["id"]].image_path))
        top, second = sorted(reference["probabilities"].values(), reverse=True)[:2]
        if top - second > 2 * tolerance:
            assert prediction.predicted_class == reference["predicted"]
        for c in CLASSES:
            assert prediction.probabilities[c] == pytest.approx(reference["probabilities"][c], abs=tolerance)


@pytest.mark.parametrize("name", available_models())
def test_every_shipped_model_reproduces_its_references(name):
    card = read_json(WEIGHTS_DIR / name / "model.json")
    predictor = Predictor.shipped(name, device="cpu")
    cases = training_set_of(card["config"]).by_id()
    tolerance = 0.01 if card.get("storage", "").startswith("float16") else 1e-4
    for reference in card["reference_predictions"]:
        prediction = predictor.predict(read_scan(cases[reference["id"]].image_path))
        for c in CLASSES:
            assert prediction.probabilities[c] == pytest.approx(reference["probabilities"][c], abs=tolerance)


def test_predicted_lesion_overlaps_the_drawn_lesion(predictor, busi_root):
    """The segmentation head is trained on BUSI masks; on scans it trained on it must find the lesion."""
    from imagemasknet.data.scans import read_mask
    from imagemasknet.evaluation.metrics import dice

    scores = []
    for n in (1, 2, 3, 4, 5, 6):
        scan = read_scan(busi_root / "malignant" / "images" / f"malignant ({n}).png")
        truth = read_mask(busi_root / "malignant" / "masks" / f"malignant ({n})_mask.png", scan.pixels.shape)
        scores.append(dice(predictor.predict(scan).lesion_mask, truth))
    assert np.mean(scores) > 0.5, scores


def test_flip_average_is_mirror_invariant_and_maps_the_lesion_back(predictor, busi_root):
    """Averaging over a scan and its mirror must give the mirrored scan the same class logits and the
    same Dice against its mirrored mask; a lesion map left unflipped would score differently."""
    from imagemasknet.data.dataset import Arrays
    from imagemasknet.data.decode import read_case_mask, read_grey, resize_pair
    from imagemasknet.evaluation.evaluate import predict_arrays

    images, masks = [], []
    for n in (1, 7, 20):
        image = read_grey(busi_root / "malignant" / "images" / f"malignant ({n}).png")
        mask = read_case_mask((busi_root / "malignant" / "masks" / f"malignant ({n})_mask.png",), image.shape)
        image, mask = resize_pair(image, mask, 256)
        images.append(image), masks.append(mask)
    scans = Arrays(["a", "b", "c"], np.full(3, CLASSES.index("malignant")), np.stack(images), np.stack(masks))
    mirrored = Arrays(scans.ids, scans.labels, scans.images[:, :, ::-1].copy(), scans.masks[:, :, ::-1].copy())
    spec, cpu = get_spec(DEFAULT_MODEL), torch.device("cpu")
    plain = predict_arrays(predictor.model, spec, scans, "image", cpu)
    averaged = predict_arrays(predictor.model, spec, scans, "image", cpu, flip_average=True)
    of_mirror = predict_arrays(predictor.model, spec, mirrored, "image", cpu, flip_average=True)
    np.testing.assert_allclose(averaged.logits, of_mirror.logits, atol=1e-4)
    np.testing.assert_allclose(averaged.dice, of_mirror.dice, atol=1e-3)
    assert not np.allclose(plain.logits, averaged.logits, atol=1e-4)  # the mirror does change the answer
    assert averaged.dice.mean() > 0.5
