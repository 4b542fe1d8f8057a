"""Lesion-free squares of lesion scans: normal breast tissue from every scanner that has lesion scans.

The normal class of the bundled data comes from one hospital (BUSI); BUS-BRA has no normal scans. The largest
square of a lesion scan that stays clear of its (widened) lesion outline and of the dark background is normal
tissue seen by that scanner. Used as extra normal examples in training (``TrainConfig.normal_crops``) and as a
normal-tissue proxy in evaluation (``benchmarks/normal_proxy.py``).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from imagemasknet.data.dataset import CLASSES, Arrays, Dataset
from imagemasknet.data.decode import read_case, resize_pair

GRID = 64  # the search runs on a GRID×GRID summary of the scan
MARGIN = 0.08  # the lesion outline is widened by this share of the scan's shorter side
MIN_SIDE = 0.4  # a square shorter than this share of the scan's shorter side is not used
BACKGROUND_BELOW = 12  # grey level: cells darker than this on average are outside the imaged field


def _grid_means(image: np.ndarray) -> np.ndarray:
    """Mean of each cell of a GRID×GRID tiling of the image (box filter)."""
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((GRID, GRID), Image.Resampling.BOX))


def _widened(mask: np.ndarray, cells: int) -> np.ndarray:
    out = mask.copy()
    for axis in (0, 1):
        for shift in range(1, cells + 1):
            out |= np.roll(mask, shift, axis) | np.roll(mask, -shift, axis)
    return out


def lesion_free_square(image: np.ndarray, mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) in the image's pixels of the largest square clear of the lesion and the
    background, or None when the scan has no lesion or no such square of at least ``MIN_SIDE``."""
    if not mask.any():
        return None
    lesion = _grid_means(mask.astype(np.float32)) > 0
    free = ~_widened(lesion, max(1, round(MARGIN * GRID))) & (_grid_means(image) >= BACKGROUND_BELOW)
    side = np.zeros((GRID + 1, GRID + 1), np.int32)  # side[i+1, j+1]: largest free square ending at cell (i, j)
    for i in range(GRID):
        for j in range(GRID):
            if free[i, j]:
                side[i + 1, j + 1] = 1 + min(side[i, j + 1], side[i + 1, j], side[i, j])
    best = int(side.max())
    if best < MIN_SIDE * GRID:
        return None
    i, j = np.unravel_index(int(side.argmax()), side.shape)
    height, width = image.shape
    top, left = (i - best) * height // GRID, (j - best) * width // GRID
    bottom, right = i * height // GRID, j * width // GRID
    edge = min(bottom - top, right - left)  # square in pixels, whatever the scan's aspect
    return top, left, edge, edge


def lesion_free_crops(data: Dataset, size: int, paint_out_annotations: bool = False) -> Arrays:
    """One lesion-free square per lesion scan that has one, resized to size×size, labelled normal, with an
    empty mask (burnt-in marks painted out first if asked, as :func:`load_arrays` does); ids are
    ``<scan id>#lesion-free``."""
    ids, images, sources = [], [], []
    for case in data.cases:
        if case.label == "normal" or not case.mask_paths:
            continue
        try:
            image, mask = read_case(case, paint_out_annotations)
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # the scan's own load reports it
        box = lesion_free_square(image, mask)
        if box is None:
            continue
        top, left, height, width = box
        crop = np.ascontiguousarray(image[top:top + height, left:left + width])
        images.append(resize_pair(crop, np.zeros_like(crop, bool), size)[0])
        ids.append(f"{case.id}#lesion-free")
        sources.append(case.source)
    n = len(ids)
    return Arrays(ids, np.full(n, CLASSES.index("normal"), np.int64),
                  np.stack(images) if n else np.zeros((0, size, size), np.uint8),
                  np.zeros((n, size, size), bool), np.array(sources, dtype=str))
