"""Image files to arrays: a scan to 8-bit greyscale, a case's mask files to one boolean mask, and both
resized together to the model's square input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_grey(path: Path) -> np.ndarray:
    """Decode an image file to 8-bit greyscale (H, W)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I"):
            array = np.asarray(image, dtype=np.float64)
            return (255 * array / max(array.max(), 1)).astype(np.uint8)
        return np.asarray(image.convert("L"), dtype=np.uint8)


def read_case_mask(paths: tuple[Path, ...], size_hw: tuple[int, int]) -> np.ndarray:
    """Merge mask files by OR, binarised, at the image's size (nearest-neighbour when sizes differ)."""
    merged = np.zeros(size_hw, dtype=bool)
    for path in paths:
        with Image.open(path) as mask:
            mask = mask.convert("L")
            if mask.size != (size_hw[1], size_hw[0]):
                mask = mask.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
            merged |= np.asarray(mask) > 127
    return merged


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a greyscale image (antialiased bilinear) and its mask (nearest) to size×size."""
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127
    return image, mask
