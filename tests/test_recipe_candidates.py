"""The screening candidates' building blocks, on real scans: a lesion-free square keeps clear of the lesion and
of the background, its crops are normal examples with empty masks, and each epoch's draw takes every scan once
and distinct crops (under torchrun, that same draw split between the ranks). Painting out burnt-in marks is
tested in test_annotations.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import CLASSES
from imagemasknet.data.decode import read_case
from imagemasknet.data.lesion_free import BACKGROUND_BELOW, MIN_SIDE, lesion_free_crops, lesion_free_square
from imagemasknet.training.step import EpochDraw

LESION_SCANS = ["benign (1)", "benign (25)", "benign (160)", "malignant (3)", "malignant (40)", "malignant (150)"]


@pytest.fixture(scope="module")
def busi(busi_root):
    return load_busi(busi_root)


def _scan(busi, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    return read_case(busi.by_id()[case_id])


@pytest.mark.parametrize("case_id", LESION_SCANS)
def test_a_lesion_free_square_keeps_clear_of_the_lesion_and_of_the_background(busi, case_id):
    image, mask = _scan(busi, case_id)
    box = lesion_free_square(image, mask)
    if box is None:  # a scan the lesion fills has no such square; then there must be no large clear area either
        assert mask.mean() > 0.05
        return
    top, left, height, width = box
    assert height == width >= MIN_SIDE * min(image.shape) * 0.9  # grid cells round the side down a little
    assert 0 <= top and top + height <= image.shape[0] and 0 <= left and left + width <= image.shape[1]
    assert not mask[top:top + height, left:left + width].any()
    assert image[top:top + height, left:left + width].mean() >= BACKGROUND_BELOW


def test_a_normal_scan_has_no_lesion_free_square_to_offer(busi):
    image, mask = _scan(busi, "normal (1)")
    assert not mask.any() and lesion_free_square(image, mask) is None


def test_lesion_free_crops_are_normal_examples_with_empty_masks(busi):
    ids = [*LESION_SCANS, "normal (1)"]
    crops = lesion_free_crops(busi.subset(ids), 64)
    assert 0 < len(crops.ids) <= len(LESION_SCANS)  # normal scans give none
    assert all(i.endswith("#lesion-free") and i.removesuffix("#lesion-free") in LESION_SCANS for i in crops.ids)
    assert (crops.labels == CLASSES.index("normal")).all() and not crops.masks.any()
    assert crops.images.shape == (len(crops.ids), 64, 64) and crops.images.dtype == np.uint8
    assert set(crops.sources) == {"busi"}


def _draw(sources: list[str], scans: int, extra: int, balanced: bool = False, rank: int = 0, world: int = 1):
    sampler = EpochDraw(np.array(sources), scans, extra, balanced, torch.Generator().manual_seed(7), rank, world)
    return list(sampler), len(sampler)


def test_an_epoch_draws_every_scan_once_and_distinct_crops():
    sources = ["busi"] * 10 + ["busbra-train"] * 6 + ["busi"] * 8  # 16 scans, then 8 crops
    drawn, length = _draw(sources, 16, 3)
    assert length == len(drawn) == 19
    assert sorted(i for i in drawn if i < 16) == list(range(16))
    crops = [i for i in drawn if i >= 16]
    assert len(set(crops)) == 3 and all(16 <= i < 24 for i in crops)


def test_under_torchrun_the_ranks_split_one_draw_evenly():
    sources = ["busi"] * 15 + ["busi"] * 8  # 15 scans + 4 crops: 19 items, 9 a rank, one left over
    whole, _ = _draw(sources, 15, 4)
    shares = [_draw(sources, 15, 4, rank=r, world=2) for r in (0, 1)]
    assert [length for _, length in shares] == [9, 9] and [len(s) for s, _ in shares] == [9, 9]
    assert not set(shares[0][0]) & set(shares[1][0])
    assert sorted(shares[0][0] + shares[1][0]) == sorted(whole[:18])


def test_a_source_balanced_epoch_draws_each_source_about_equally():
    sources = ["busi"] * 90 + ["busbra-train"] * 10
    drawn, _ = _draw(sources, 100, 0, balanced=True)
    from_small = sum(1 for i in drawn if i >= 90)
    assert 35 <= from_small <= 65  # half expected; unbalanced it would be 10
