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
very small marks. What it marks is shown wherever it is used.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

THIN = 5  # px: an opening this wide (or tall) removes what is thinner
STROKE = 4  # px: a stroke runs at least this far along the beam
CONTRAST = 40  # grey levels above the opening
GLYPH_REACH = (9, 21)  # px (up-down, across): how far from a stroke the rest of its glyph lies
MARGIN = 5  # px: the found marks are widened by this square, antialiased edges included
COLOUR_SPREAD = 30  # grey levels between the brightest and darkest channel of an overlay pixel
FILL = 15  # px: the window whose unmarked pixels fill a painted-out mark


def _pool(x: torch.Tensor, height: int, width: int, largest: bool) -> torch.Tensor:
    """Sliding max (or min) over a height×width window, the output the size of the input."""
    rows, cols = x.shape[-2:]
    if largest:
        return F.max_pool2d(x, (height, width), 1, (height // 2, width // 2))[..., :rows, :cols]
    return -F.max_pool2d(-x, (height, width), 1, (height // 2, width // 2))[..., :rows, :cols]


def _opening(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return _pool(_pool(x, height, width, False), height, width, True)


def find_annotations(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the burnt-in marks of a greyscale (H, W) or colour (H, W, 3) uint8 scan."""
    colour = None
    if image.ndim == 3:
        channels = image[..., :3].astype(np.int16)
        colour = channels.max(-1) - channels.min(-1) > COLOUR_SPREAD
        image = channels.mean(-1)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    narrow = (x - _opening(x, 1, THIN)) > CONTRAST  # thinner than THIN across
    flat = (x - _opening(x, THIN, 1)) > CONTRAST  # thinner than THIN up and down
    strokes = _opening(narrow.float(), STROKE, 1) > 0
    near = _pool(strokes.float(), *GLYPH_REACH, largest=True) > 0
    marks = strokes | ((narrow | flat) & near)
    found = _pool(marks.float(), MARGIN, MARGIN, largest=True)[0, 0].numpy() > 0
    return found | colour if colour is not None else found


def paint_out(image: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """The greyscale scan with each marked pixel replaced by the mean of the unmarked pixels around it."""
    if not marks.any():
        return image
    keep = torch.from_numpy((~marks).astype(np.float32))[None, None]
    values = torch.from_numpy(image.astype(np.float32))[None, None] * keep
    window = torch.ones(1, 1, FILL, FILL)
    total = F.conv2d(values, window, padding=FILL // 2)[0, 0]
    count = F.conv2d(keep, window, padding=FILL // 2)[0, 0]
    fill = (total / count.clamp(min=1e-3)).numpy()
    out = image.astype(np.float32)
    out[marks] = fill[marks]
    return out.clip(0, 255).astype(np.uint8)
