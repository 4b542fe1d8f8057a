"""Burnt-in annotations of a scan: text, caliper crosses, ruler ticks, colour marks.

Scanners write them into the pixels; they are not tissue, and a model (or its Grad-CAM) that looks at them
learns or shows the wrong thing. Found by shape, on the scan at its own resolution:

* **strokes**: bright features at most 4 px wide that run at least 4 px up and down. Glyphs, the arms of a
  caliper "+" and ruler ticks have them; tissue seldom does, since ultrasound speckle and tissue layers run
  across the beam, not along it;
* **the rest of a glyph**: bright features at most 4 px tall or wide within a glyph's reach of a stroke;
* **colour**: pixels whose channels differ (overlay colours; a greyscale scan has none).

Calibrated by eye on BUSI and BUS-BRA training scans (their text, calipers and rulers; see
``tests/test_annotations.py``): it finds most text and calipers and marks little tissue, but misses faint or
very small marks. What it marks is shown wherever it is used. NumPy only (no PyTorch), so the data layer stays
light to import.
"""
from __future__ import annotations

import numpy as np

THIN = 5  # px: an opening this wide (or tall) removes what is thinner
STROKE = 4  # px: a stroke runs at least this far along the beam
CONTRAST = 40  # grey levels above the opening
GLYPH_REACH = (9, 21)  # px (up-down, across): how far from a stroke the rest of its glyph lies
MARGIN = 5  # px: the found marks are widened by this square, antialiased edges included
COLOUR_SPREAD = 30  # grey levels between the brightest and darkest channel of an overlay pixel
FILL = 15  # px: the window whose unmarked pixels fill a painted-out mark


def _slide(x: np.ndarray, size: int, axis: int, largest: bool) -> np.ndarray:
    """Sliding max (or min) over ``size`` pixels along ``axis``, the output the size of the input (a window
    reaches ``size // 2`` before a pixel and the rest after it; the edge repeats). Shifted copies combined pairwise,
    then by doubling: a few whole-array operations, not a Python loop over pixels."""
    if size <= 1:
        return x
    before = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (before, size - 1 - before)
    padded = np.pad(x, pad, mode="edge")
    combine = np.maximum if largest else np.minimum
    length = x.shape[axis]

    def shifted(array: np.ndarray, offset: int, count: int) -> np.ndarray:
        return array[:, offset:offset + count] if axis else array[offset:offset + count]  # views, no copies

    covered, out = 1, padded  # out[i] combines padded[i : i + covered]
    while covered * 2 <= size:
        out = combine(shifted(out, 0, out.shape[axis] - covered), shifted(out, covered, out.shape[axis] - covered))
        covered *= 2
    if covered < size:  # the rest of the window: one more overlapping combine
        out = combine(shifted(out, 0, length), shifted(out, size - covered, length))
    return shifted(out, 0, length)


def _pool(x: np.ndarray, height: int, width: int, largest: bool) -> np.ndarray:
    return _slide(_slide(x, height, 0, largest), width, 1, largest)


def _opening(x: np.ndarray, height: int, width: int) -> np.ndarray:
    return _pool(_pool(x, height, width, False), height, width, True)


def find_annotations(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the burnt-in marks of a greyscale (H, W) or colour (H, W, 3) uint8 scan."""
    colour = None
    if image.ndim == 3:
        channels = image[..., :3].astype(np.int16)
        colour = channels.max(-1) - channels.min(-1) > COLOUR_SPREAD
        image = channels.mean(-1)
    x = np.asarray(image, dtype=np.float32)
    narrow = (x - _opening(x, 1, THIN)) > CONTRAST  # thinner than THIN across
    flat = (x - _opening(x, THIN, 1)) > CONTRAST  # thinner than THIN up and down
    strokes = _opening(narrow, STROKE, 1)
    near = _pool(strokes, *GLYPH_REACH, largest=True)
    marks = strokes | ((narrow | flat) & near)
    found = _pool(marks, MARGIN, MARGIN, largest=True)
    return found | colour if colour is not None else found


def _box_sum(x: np.ndarray, size: int) -> np.ndarray:
    """Sum over a size×size window centred on each pixel (zeros beyond the edge)."""
    half = size // 2
    padded = np.pad(x, half)
    total = padded.cumsum(0).cumsum(1)
    total = np.pad(total, ((1, 0), (1, 0)))
    rows, cols = x.shape
    return (total[size:size + rows, size:size + cols] - total[:rows, size:size + cols]
            - total[size:size + rows, :cols] + total[:rows, :cols])


def paint_out(image: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """The greyscale scan with each marked pixel replaced by the mean of the unmarked pixels around it."""
    if not marks.any():
        return image
    keep = (~marks).astype(np.float64)
    total = _box_sum(image.astype(np.float64) * keep, FILL)
    count = _box_sum(keep, FILL)
    out = image.astype(np.float64)
    out[marks] = total[marks] / np.maximum(count[marks], 1e-3)
    return out.clip(0, 255).astype(np.uint8)
