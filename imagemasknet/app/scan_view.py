"""What the Classify page shows of a scan, computed here so that the page only places it: display sizes and
resizing, content digests that key the caches, the drawing canvas's geometry and the mask a drawing makes,
and which uploaded masks belong to which scan."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from PIL import Image, ImageDraw

from imagemasknet.data.scans import mask_from_drawing
from imagemasknet.inference.explain import outline

DISPLAY_LONG_SIDE = 900  # images are shown (and put in reports) at most this large
# The canvas sits in a full-width row of its own, no wider than the page's content at the narrowest supported
# window (1024 px, sidebar open: 564 px, measured in Chromium), so every pixel of the scan can be drawn on.
CANVAS_WIDTH = 560
CANVAS_MAX_HEIGHT = 560
USER_MASK_RGB, USER_MASK_CSS = (0, 213, 255), "#00D5FF"  # cyan: the user's mask
LESION_RGB, LESION_CSS = (255, 179, 0), "#FFB300"  # amber: the lesion the model outlines
MARKS_RGB = (170, 80, 255)  # violet: burnt-in marks left out of Grad-CAM and the model's outline


@dataclass(frozen=True)
class Outlined:
    """The scan with its outlines drawn, and what they are: legend entries (CSS colour, words) for the page and
    captions for the report."""

    image: np.ndarray
    legend: list[tuple[str, str]]
    captions: list[str]


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mask_digest(mask: np.ndarray | None) -> str | None:
    if mask is None:
        return None
    return hashlib.sha256(np.packbits(mask).tobytes() + repr(mask.shape).encode()).hexdigest()


def display_size(shape_hw: tuple[int, int], long_side: int = DISPLAY_LONG_SIDE) -> tuple[int, int]:
    height, width = shape_hw[:2]
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_rgb(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == size_hw:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size_hw[::-1], Image.Resampling.LANCZOS))


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == size_hw:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size_hw[::-1], Image.Resampling.NEAREST)) > 127


def resize_heat(heat: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if heat.shape == size_hw:
        return heat.astype(np.float32)
    image = Image.fromarray(heat.astype(np.float32), "F").resize(size_hw[::-1], Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def fill_enclosed(drawn: np.ndarray) -> np.ndarray:
    """Pixels enclosed by strokes count too, so a traced freehand outline becomes a filled lesion."""
    padded = Image.fromarray(np.pad(drawn, 1).astype(np.uint8) * 255, "L").copy()  # fromarray may share read-only memory
    ImageDraw.floodfill(padded, (0, 0), 128)  # the outside, reached from the border
    return np.asarray(padded)[1:-1, 1:-1] != 128


def _stem(name: str) -> str:
    return PurePath(name).stem.casefold()


def pair_masks(scan_names: dict[int, str], mask_files: list) -> dict[int, list]:
    """Mask uploads (anything with a ``name``) per readable scan (index → file name): with one scan every
    mask is its; otherwise by name (``case.png`` ← ``case.png``, ``case_mask.png``, ``case_mask_1.png``;
    several masks of one scan are merged)."""
    if len(scan_names) == 1:
        return {next(iter(scan_names)): list(mask_files)} if mask_files else {}
    pairs: dict[int, list] = {}
    for mask_file in mask_files:
        mask_stem = _stem(mask_file.name)
        for index, name in scan_names.items():
            pattern = re.escape(_stem(name)) + r"([ _-]?mask([ _-]?\d+)?)?"
            if re.fullmatch(pattern, mask_stem):
                pairs.setdefault(index, []).append(mask_file)
                break
    return pairs


def canvas_size(shape_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the drawing canvas for a scan: the scan's shape, 560 px wide or 560 px high."""
    height, width = shape_hw[:2]
    canvas_h, canvas_w = round(CANVAS_WIDTH * height / width), CANVAS_WIDTH
    if canvas_h > CANVAS_MAX_HEIGHT:
        canvas_h, canvas_w = CANVAS_MAX_HEIGHT, round(CANVAS_MAX_HEIGHT * width / height)
    return canvas_h, canvas_w


def drawn_mask(rgba: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The lesion mask, at the scan's size, of what was drawn on the canvas (strokes and what they enclose);
    :class:`~imagemasknet.data.scans.MaskError` for a drawing that cannot be one."""
    rgba = np.array(rgba)
    if rgba.ndim == 3 and rgba.shape[2] == 4:  # anything else is refused by mask_from_drawing, naming its shape
        rgba[..., 3] = np.where(fill_enclosed(rgba[..., 3] > 0), 255, 0)
    return mask_from_drawing(rgba, size_hw)


def outlined_scan(rgb: np.ndarray, user_mask: np.ndarray | None, lesion_mask: np.ndarray | None,
                  model_calls_normal: bool) -> Outlined:
    """``rgb`` (the scan at display size) with the user's mask in cyan and the model's lesion in amber, each
    only when given (masks at the scan's size). A lesion drawn on a scan the model calls normal is labelled as
    such: it is not a lesion the model claims."""
    size_hw = rgb.shape[:2]
    image, legend, captions = rgb, [], []
    if user_mask is not None:
        image = outline(image, resize_mask(user_mask, size_hw), USER_MASK_RGB)
        legend.append((USER_MASK_CSS, "your mask"))
        captions.append("the user's mask (cyan)")
    if lesion_mask is not None:
        image = outline(image, resize_mask(lesion_mask, size_hw), LESION_RGB)
        if model_calls_normal:
            legend.append((LESION_CSS, "outline drawn by the model although it calls the scan normal"))
            captions.append("the outline the model drew although it calls the scan normal (amber)")
        else:
            legend.append((LESION_CSS, "lesion outlined by the model"))
            captions.append("the lesion outlined by the model (amber)")
    return Outlined(image, legend, captions)
