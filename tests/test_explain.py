"""Grad-CAM and the overlays: the heat map is the scan's size in [0, 1] and follows the class asked for;
colours, outlines and fills draw where they should and nowhere else."""
from __future__ import annotations

import numpy as np
import pytest

from imagemasknet.data.scans import read_scan
from imagemasknet.inference.explain import colorize, fill, gradcam_layer, heatmap_overlay, mask_edges, outline
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import build_model


def test_colorize_runs_from_the_first_anchor_to_the_last():
    values = colorize(np.array([[0.0, 1.0, -3.0, 7.0]]))
    assert tuple(values[0, 0]) == (48, 18, 59) and tuple(values[0, 1]) == (122, 4, 3)
    assert tuple(values[0, 2]) == tuple(values[0, 0]) and tuple(values[0, 3]) == tuple(values[0, 1])  # clipped


def test_a_cold_heat_map_leaves_the_scan_as_it_is():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(heatmap_overlay(rgb, np.zeros((20, 30))), rgb)
    assert (heatmap_overlay(rgb, np.ones((20, 30))) != rgb).any()


def test_outline_draws_the_edge_only_and_fill_tints_the_inside_only():
    mask = np.zeros((64, 64), bool)
    mask[16:48, 20:40] = True
    edges = mask_edges(mask, 2)
    assert edges[16, 30] and edges[30, 20] and not edges[30, 30] and not edges[5, 5]
    rgb = np.full((64, 64, 3), 100, np.uint8)
    drawn = outline(rgb, mask, (0, 255, 0), thickness=16)  # 16 at 512 px: 2 px at 64
    assert tuple(drawn[16, 30]) == (0, 255, 0) and tuple(drawn[30, 30]) == (100, 100, 100)
    tinted = fill(rgb, mask, (0, 255, 0), 0.5)
    assert tuple(tinted[30, 30]) == (50, 178, 50) and tuple(tinted[5, 5]) == (100, 100, 100)


@pytest.mark.parametrize("name", ["lesion-resunet", "lesion-effnet-lite0", "imagemasknet2"])
def test_each_model_names_the_layer_grad_cam_reads(name):
    model = build_model(name, image_size=64)
    layer = gradcam_layer(model)
    assert any(layer is module for module in model.modules())
    if name == "lesion-effnet-lite0":
        assert layer is model.encoder.head_activation


def test_grad_cam_is_the_scan_size_in_unit_range_and_depends_on_the_class(busi_root):
    predictor = Predictor.shipped(device="cpu")
    scan = read_scan(busi_root / "malignant" / "images" / "malignant (4).png")
    maps = {c: predictor.grad_cam(scan, c) for c in ("benign", "malignant")}
    for heat in maps.values():
        assert heat.shape == scan.pixels.shape and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1
    assert not np.allclose(maps["benign"], maps["malignant"])
