"""Image files to the arrays a model trains on, by the same reader as every upload
(:mod:`imagemasknet.data.scans`): a scan to 8-bit greyscale at its working size, a case's mask files to one
boolean mask, and both resized together to the model's square input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imagemasknet.data.scans import decode_mask, read_scan

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


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a greyscale image (antialiased bilinear) and its mask (nearest) to size×size."""
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127
    return image, mask
