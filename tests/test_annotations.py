"""Burnt-in marks on real scans: data/annotations finds a BUS-BRA scan's text and calipers and little else, and
painting out and Grad-CAM leave them out."""
from __future__ import annotations

import numpy as np
import pytest

from imagemasknet.core.paths import DATA_DIR
from imagemasknet.data.annotations import find_annotations, paint_out
from imagemasknet.data.decode import read_grey
from imagemasknet.inference.explain import mark_share, without_marks

# BUS-BRA bus_0001-l: "QSE" and "MAMA ESQUERDA" written below the lesion, four caliper crosses around it.
SCAN = DATA_DIR / "busbra-train" / "images" / "bus_0001-l.png"
TEXT = (slice(196, 211), slice(68, 194))  # the "MAMA ESQUERDA" line, rows and columns
CALIPERS = [(57, 90), (59, 193), (102, 143), (21, 154)]  # centres (row, column)
TISSUE = slice(240, 353)  # the lower third: tissue and shadow, nothing written


def test_text_and_calipers_are_found_and_tissue_is_left_alone():
    image = read_grey(SCAN)
    marks = find_annotations(image)
    assert marks[TEXT].mean() > 0.6
    for row, col in CALIPERS:
        assert marks[row - 3:row + 4, col - 3:col + 4].mean() > 0.9, (row, col)
    assert marks[TISSUE].mean() < 0.005
    assert marks.mean() < 0.05


def test_a_plain_greyscale_gradient_has_no_marks_and_colour_overlays_do():
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (200, 1))
    assert not find_annotations(ramp).any()
    rgb = np.repeat(ramp[..., None], 3, axis=2)
    rgb[50:60, 100:160] = (255, 255, 0)  # a yellow measurement label
    marks = find_annotations(rgb)
    assert marks[50:60, 100:160].all() and marks.mean() < 0.02


def test_painting_out_replaces_marks_with_the_tissue_around_them():
    image = read_grey(SCAN)
    marks = find_annotations(image)
    painted = paint_out(image, marks)
    assert np.array_equal(painted[~marks], image[~marks])
    assert painted[marks].mean() < image[marks].mean() - 40  # bright text becomes tissue grey
    assert paint_out(image, np.zeros_like(marks)) is image


def test_grad_cam_without_marks_points_at_tissue_and_peaks_at_one():
    heat = np.zeros((50, 50), np.float32)
    heat[10:20, 10:20] = 1.0  # on a mark
    heat[30:40, 30:40] = 0.5  # on tissue
    marks = np.zeros((50, 50), bool)
    marks[8:22, 8:22] = True
    assert mark_share(heat, marks) == pytest.approx(100 / 150)
    kept = without_marks(heat, marks)
    assert kept[marks].max() == 0 and kept.max() == 1.0 and kept[35, 35] == 1.0
    assert not without_marks(np.zeros((4, 4), np.float32), np.ones((4, 4), bool)).any()


def test_the_app_paints_out_on_a_colour_scan_what_training_paints_out():
    """Review of issue 24: the app found marks on a colour scan's colour copy (its coloured pixels too) while
    training finds them on the grey pixels, so a model trained with painted-out marks saw other inputs in the
    app. The model's input is now prepared from the grey pixels, as training prepares it."""
    import dataclasses

    import torch

    from imagemasknet.data.decode import resize_pair
    from imagemasknet.data.scans import Scan
    from imagemasknet.data.transforms import model_input
    from imagemasknet.inference.predictor import Predictor

    grey = read_grey(SCAN)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[300:312, 20:80] = (255, 255, 0)  # a yellow label on tissue
    scan = Scan(grey, rgb, "colour.png", "PNG")
    assert scan.is_colour and find_annotations(rgb)[300:312, 20:80].all()
    predictor = Predictor.shipped(device="cpu")
    predictor.card = dataclasses.replace(predictor.card, preprocessing={**predictor.card.preprocessing,
                                                                        "paint_out_annotations": True})
    image, _ = predictor._inputs(scan, None)
    pixels, small = resize_pair(paint_out(grey, find_annotations(grey)), np.zeros(grey.shape, bool),
                                predictor.image_size)
    trained, _ = model_input(predictor.spec, torch.from_numpy(np.array(pixels))[None, None],
                             torch.from_numpy(np.array(small))[None, None], "image", predictor.device)
    assert torch.equal(image, trained)
    assert predictor.predict(scan).annotations[300:312, 20:80].all()  # the outline and Grad-CAM still skip it
