"""What the Classify page shows of a scan: sizes keep the scan's shape, a traced outline becomes a filled
lesion at the scan's own resolution, and uploaded masks find their scans by name."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagemasknet.app.scan_view import (CANVAS_MAX_HEIGHT, CANVAS_WIDTH, DISPLAY_LONG_SIDE, LESION_CSS, LESION_RGB,
                                        canvas_size, display_size, drawn_mask, mask_digest, outlined_scan, pair_masks,
                                        resize_mask)
from imagemasknet.data.scans import ScanError


@pytest.mark.parametrize("shape", [(600, 800), (800, 600), (200, 2000), (2000, 200), (100, 100)])
def test_the_canvas_keeps_the_scan_shape_within_its_box(shape):
    height, width = canvas_size(shape)
    assert height <= CANVAS_MAX_HEIGHT and width <= CANVAS_WIDTH
    assert max(height, width) == CANVAS_WIDTH or height == CANVAS_MAX_HEIGHT
    assert abs(height / width - shape[0] / shape[1]) < 0.02


def test_display_size_only_shrinks():
    assert display_size((300, 400)) == (300, 400)
    assert max(display_size((1800, 2400))) == DISPLAY_LONG_SIDE


def test_a_traced_outline_on_the_canvas_becomes_a_filled_lesion_at_the_scan_size():
    canvas = Image.new("RGBA", (280, 140), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((40, 20, 200, 120), outline=(0, 213, 255, 255), width=3)
    mask = drawn_mask(np.asarray(canvas), (280, 560))  # the scan is twice the canvas in each direction
    assert mask.shape == (280, 560)
    assert mask[140, 240]  # the centre, never drawn on, is inside the traced outline
    assert not mask[10, 10] and not mask[270, 550]
    assert 0.15 < mask.mean() < 0.35


def test_an_empty_drawing_is_an_empty_mask_and_nonsense_is_refused():
    assert not drawn_mask(np.zeros((50, 100, 4), np.uint8), (100, 200)).any()
    with pytest.raises(ScanError, match="not an RGBA picture"):
        drawn_mask(np.zeros((50, 100, 3), np.uint8), (100, 200))


def test_uploaded_masks_find_their_scans_by_name():
    masks = [SimpleNamespace(name=n) for n in ("case 2_mask.png", "Case 1.png", "case 2_mask_1.png", "other.png")]
    pairs = pair_masks({0: "case 1.png", 1: "case 2.png"}, masks)
    assert {i: [m.name for m in files] for i, files in pairs.items()} == {
        0: ["Case 1.png"], 1: ["case 2_mask.png", "case 2_mask_1.png"]}
    assert pair_masks({5: "anything.png"}, masks[:2]) == {5: masks[:2]}  # one scan: every mask is its


def test_mask_digests_tell_masks_apart_and_resizing_keeps_them_binary():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    assert mask_digest(mask) == mask_digest(mask.copy()) != mask_digest(~mask)
    assert mask_digest(None) is None
    small = resize_mask(mask, (20, 30))
    assert small.dtype == bool and small.sum() == pytest.approx(mask.sum() / 4, rel=0.1)


def test_outlines_are_drawn_only_when_given_and_say_what_they_are():
    rgb = np.full((60, 80, 3), 40, np.uint8)
    mask = np.zeros((120, 160), bool)  # masks come at the scan's size, the picture at display size
    mask[40:80, 40:100] = True
    bare = outlined_scan(rgb, None, None, model_calls_normal=False)
    assert bare.legend == [] and bare.captions == [] and np.array_equal(bare.image, rgb)
    both = outlined_scan(rgb, mask, mask, model_calls_normal=False)
    assert [words for _, words in both.legend] == ["your mask", "lesion outlined by the model"]
    assert (np.all(both.image == LESION_RGB, axis=2)).any()  # drawn last, on top
    on_normal = outlined_scan(rgb, None, mask, model_calls_normal=True)
    assert on_normal.legend == [(LESION_CSS, "outline drawn by the model although it calls the scan normal")]
    assert "although it calls the scan normal" in on_normal.captions[0]
