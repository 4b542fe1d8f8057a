"""The decision rules: the malignancy threshold set for sensitivity, the low-confidence rule, and the
familiarity score that flags unfamiliar scans and refuses what is not an ultrasound."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagemasknet.data.decode import read_grey, resize_pair
from imagemasknet.data.transforms import model_input
from imagemasknet.evaluation.decision import (LOW_CONFIDENCE_BELOW, flag_figures, is_low_confidence, is_suspicious,
                                              sensitivity_threshold)
from imagemasknet.inference.familiarity import Familiarity, FamiliarityReference
from imagemasknet.models import build_model, get_spec


def test_the_threshold_is_the_highest_that_flags_the_target_share_of_malignant_scans():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.95, 0.01])
    malignant = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    threshold = sensitivity_threshold(malignant, p, 0.9)
    assert threshold == 0.1  # 9 of the 10 malignant scans reach it
    assert (p[malignant] >= threshold).mean() == 0.9
    assert (p[malignant] >= np.nextafter(threshold, 1)).mean() < 0.9  # any higher flags fewer
    with pytest.raises(ValueError, match="no malignant"):
        sensitivity_threshold(np.zeros(3, dtype=bool), np.zeros(3))


def test_flag_figures_count_sensitivity_and_both_specificities_with_intervals():
    labels = np.array([2, 2, 2, 2, 1, 1, 1, 1, 0, 0])  # malignant, benign, normal
    flagged = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    figures = flag_figures(labels, np.zeros(10), flagged, resamples=200)
    assert figures["sensitivity"]["value"] == 0.75
    assert figures["specificity_benign"]["value"] == 0.75
    assert figures["specificity_all_non_malignant"]["value"] == pytest.approx(5 / 6)
    for key in ("sensitivity", "specificity_benign"):
        assert figures[key]["ci_low"] <= figures[key]["value"] <= figures[key]["ci_high"]


def test_low_confidence_is_a_top_probability_under_the_one_threshold():
    assert LOW_CONFIDENCE_BELOW == 0.6
    assert is_low_confidence({"normal": 0.1, "benign": 0.35, "malignant": 0.55})
    assert not is_low_confidence({"normal": 0.05, "benign": 0.35, "malignant": 0.60})
    assert is_low_confidence(np.array([0.34, 0.33, 0.33]))
    assert is_suspicious(0.3, 0.25) and not is_suspicious(0.2, 0.25) and is_suspicious(0.2, None) is None


def _busi_texture(model, spec, paths) -> np.ndarray:
    images = []
    for path in paths:
        image = read_grey(path)
        images.append(resize_pair(image, np.zeros_like(image, dtype=bool), 256)[0])
    image, _ = model_input(spec, torch.from_numpy(np.stack(images))[:, None], None, "image", torch.device("cpu"))
    with torch.no_grad():
        return model(image).texture.numpy()


def test_texture_familiarity_puts_photographs_far_beyond_unseen_busi_scans(busi_root):
    """On the pretrained encoder alone (no fine-tuning), fitted on 60 BUSI scans: 24 other BUSI scans score
    about 1, scikit-image's photographs and a micrograph at least twice the largest of them."""
    samples = pytest.importorskip("skimage.data")
    spec = get_spec("lesion-effnet-lite0")
    model = build_model(spec.name, pretrained=True).eval()
    scans = sorted((busi_root / "benign" / "images").glob("*.png"))[:60] + sorted((busi_root / "malignant" / "images").glob("*.png"))[:24]
    reference = FamiliarityReference.fit(_busi_texture(model, spec, scans[:60]), components=16)
    unseen = reference.score(_busi_texture(model, spec, scans[60:]))
    pictures = []
    for picture in (samples.chelsea(), samples.coffee(), samples.astronaut(), samples.immunohistochemistry()):
        grey = np.asarray(Image.fromarray(picture).convert("L").resize((256, 256), Image.Resampling.BILINEAR))
        pictures.append(grey)
    image, _ = model_input(spec, torch.from_numpy(np.stack(pictures))[:, None], None, "image", torch.device("cpu"))
    with torch.no_grad():
        photographs = reference.score(model(image).texture.numpy())
    assert np.median(unseen) < 1.6
    assert photographs.min() > 2 * unseen.max(), (photographs, unseen.max())


def test_the_two_checks_take_their_thresholds_from_out_of_fold_scores():
    rng = np.random.default_rng(1)
    plain, augmented = rng.normal(size=(60, 50)), rng.normal(scale=1.5, size=(60, 50)) + 2
    out_of_fold, far = rng.uniform(0.8, 1.4, 200), rng.uniform(0.8, 1.2, 200)
    familiarity = Familiarity.fit(plain, augmented, out_of_fold, far)
    assert familiarity.unfamiliar.threshold == pytest.approx(np.percentile(out_of_fold, 95))
    assert familiarity.refusal.threshold == pytest.approx(1.5 * far.max())
    # The refusal reference spans the augmented copies too, so they look closer to it than to the plain one.
    assert familiarity.refusal.score(augmented).mean() < familiarity.unfamiliar.score(augmented).mean()


def test_a_familiarity_reference_survives_saving_and_a_damaged_one_is_refused(tmp_path):
    from imagemasknet.models.weights import WeightsError

    rng = np.random.default_rng(0)
    familiarity = Familiarity.fit(rng.normal(size=(80, 60)), rng.normal(size=(80, 60)), rng.uniform(0.8, 1.3, 50),
                                  rng.uniform(0.8, 1.3, 50))
    familiarity.save(tmp_path / "ref.safetensors")
    loaded = Familiarity.load(tmp_path / "ref.safetensors")
    x = rng.normal(size=(5, 60))
    for kind in ("unfamiliar", "refusal"):
        np.testing.assert_allclose(getattr(loaded, kind).score(x), getattr(familiarity, kind).score(x), rtol=1e-4)
        assert getattr(loaded, kind).threshold == pytest.approx(getattr(familiarity, kind).threshold)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="familiarity reference"):
        Familiarity.load(tmp_path / "bad.safetensors")
