"""Lesion size: the long and short axis of an outline in millimetres, as a sonographer measures them.

The long axis is the outline's greatest diameter (the largest distance between two of its points); the short
axis is its greatest extent at right angles to the long one. Both are measured on the corners of the outline's
pixels, scaled by the pixel spacing (rows and columns may differ), so a one-pixel outline measures one pixel.
"""
from __future__ import annotations

import numpy as np


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of 2-D points (Andrew's monotone chain), counter-clockwise."""
    points = np.unique(points, axis=0)
    if len(points) <= 2:
        return points

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for point in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], point) <= 0:
            lower.pop()
        lower.append(point)
    upper: list = []
    for point in points[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], point) <= 0:
            upper.pop()
        upper.append(point)
    return np.array(lower[:-1] + upper[:-1])


def lesion_axes_mm(outline: np.ndarray, spacing_mm: tuple[float, float]) -> tuple[float, float] | None:
    """(long, short) axis in mm of a boolean outline, given the (row, column) pixel spacing in mm; None for an
    empty outline or a spacing that is not two positive numbers."""
    rows_mm, cols_mm = (float(v) for v in spacing_mm)
    if not (rows_mm > 0 and cols_mm > 0) or not np.isfinite([rows_mm, cols_mm]).all() or not outline.any():
        return None
    rows, cols = np.nonzero(outline)
    edge = (outline.shape[0] - 1, outline.shape[1] - 1)
    # Only boundary pixels can lie on the hull; their four corners are the outline's extent.
    inner = np.zeros_like(outline)
    inner[1:-1, 1:-1] = (outline[1:-1, 1:-1] & outline[:-2, 1:-1] & outline[2:, 1:-1]
                         & outline[1:-1, :-2] & outline[1:-1, 2:])
    boundary = ~inner[rows, cols] | (rows == 0) | (cols == 0) | (rows == edge[0]) | (cols == edge[1])
    rows, cols = rows[boundary], cols[boundary]
    corners = np.concatenate([np.stack([rows + dr, cols + dc], 1) for dr in (0, 1) for dc in (0, 1)])
    hull = _hull(corners.astype(np.float64) * np.array([rows_mm, cols_mm]))
    if len(hull) < 2:
        return None
    gaps = hull[:, None, :] - hull[None, :, :]
    lengths = np.linalg.norm(gaps, axis=-1)
    i, j = np.unravel_index(int(lengths.argmax()), lengths.shape)
    long_axis = float(lengths[i, j])
    across = np.array([-gaps[i, j, 1], gaps[i, j, 0]]) / long_axis
    projected = hull @ across
    return long_axis, float(projected.max() - projected.min())
