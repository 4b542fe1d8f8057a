"""Image files to the arrays a model trains on, by the same reader as every upload
(:mod:`imagemasknet.data.scans`): a scan to 8-bit greyscale at its working size, a case's mask files to one
boolean mask, and both resized together to the model's square input."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imagemasknet.data.annotations import find_annotations, paint_out
from imagemasknet.data.scans import decode_mask, read_scan

if TYPE_CHECKING:
    from imagemasknet.data.dataset import Case

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_grey(path: Path) -> np.ndarray:
    """A scan file as the app reads it: 8-bit greyscale (H, W), at most 1024 px a side. ScanError (a
    ValueError) for a file that is no scan."""
    return read_scan(path).pixels


def read_case_mask(paths: tuple[Path, ...], size_hw: tuple[int, int]) -> np.ndarray:
    """Merge mask files by OR, read as the app reads a mask, at ``size_hw`` (nearest-neighbour when sizes differ)."""
    merged = np.zeros(size_hw, dtype=bool)
    for path in paths:
        mask = decode_mask(path)
        if mask.shape != tuple(size_hw):
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
                (size_hw[1], size_hw[0]), Image.Resampling.NEAREST)) > 127
        merged |= mask
    return merged


def read_case(case: Case, paint_out_annotations: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A case's scan (burnt-in marks painted out if asked) and its merged lesion mask at the scan's size.
    OSError, UnidentifiedImageError or ValueError for a file that cannot be read."""
    image = read_grey(case.image_path)
    mask = read_case_mask(case.mask_paths, image.shape)
    if paint_out_annotations:
        image = paint_out(image, find_annotations(image))
    return image, mask


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a greyscale image (antialiased bilinear) and its mask (nearest) to size×size."""
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127
    return image, mask
