"""Whether a readable scan looks like the B-mode breast ultrasound the model was trained on: grey-level
statistics, colour, and the warnings (never refusals) :func:`~imagemasknet.data.scans.read_scan` attaches to
scans that differ."""
from __future__ import annotations

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------
# Warning heuristics (see :func:`scan_warnings`).  Calibrated on all 780 BUSI and 532 BUS-BRA
# images: none of them triggers a warning.  Observed ranges in brackets.
# --------------------------------------------------------------------------------------------
#: A pixel is "strongly coloured" when max(R,G,B) - min(R,G,B) exceeds this (0..255).
COLOUR_CHROMA_LEVEL = 50
#: Warn about colour (e.g. colour Doppler) when more than this share of pixels is strongly
#: coloured [BUSI/BUS-BRA: at most 0.8 %, from small coloured annotation marks].
COLOUR_WARN_FRACTION = 0.02
#: Statistics are computed on a copy whose longer side is at most this many pixels, so that
#: they do not depend on the resolution of the upload.
STATS_LONG_SIDE = 256
#: Mean grey level range typical of B-mode ultrasound [15.4 .. 186.9].
UNLIKE_MEAN_RANGE = (8.0, 200.0)
#: Contrast (standard deviation of grey levels) range [15.5 .. 74.4].
UNLIKE_STD_RANGE = (10.0, 90.0)
#: Pixels at or below this grey level count as near-black.
NEAR_BLACK_LEVEL = 10
#: Largest share of near-black pixels [at most 0.65: wide black borders are common].
UNLIKE_MAX_NEAR_BLACK = 0.85
#: Largest share of pixels in the upper half of the grey range (>= 128) [at most 0.89].
UNLIKE_MAX_BRIGHT = 0.95
#: "Roughness" = mean absolute difference between neighbouring pixels / standard deviation.
#: Speckle gives [0.069 .. 0.40]; independent pixel noise gives about 1.13, smooth gradients,
#: drawings and most photos of objects give well under 0.04.
UNLIKE_ROUGHNESS_RANGE = (0.04, 0.7)


def grey_statistics(pixels: np.ndarray) -> dict[str, float]:
    """Statistics behind the "unlike the training data" warning (see module constants).

    Computed on a copy whose longer side is at most :data:`STATS_LONG_SIDE` (box filter):
    ``mean``, ``std`` (contrast), ``near_black`` (share <= NEAR_BLACK_LEVEL), ``bright``
    (share >= 128) and ``roughness`` (mean absolute neighbour difference / std; 0 if flat).
    """
    grey = _downscale(Image.fromarray(np.asarray(pixels, dtype=np.uint8)), STATS_LONG_SIDE)
    g = np.asarray(grey, dtype=np.float64)
    std = float(g.std())
    diffs = []
    if g.shape[1] > 1:
        diffs.append(np.abs(np.diff(g, axis=1)).mean())
    if g.shape[0] > 1:
        diffs.append(np.abs(np.diff(g, axis=0)).mean())
    neighbour = float(np.mean(diffs)) if diffs else 0.0
    return {
        "mean": float(g.mean()),
        "std": std,
        "near_black": float((g <= NEAR_BLACK_LEVEL).mean()),
        "bright": float((g >= 128).mean()),
        "roughness": neighbour / std if std > 1e-6 else 0.0,
    }


def colour_fraction(rgb: np.ndarray) -> float:
    """Share of strongly coloured pixels (max(R,G,B) - min(R,G,B) > COLOUR_CHROMA_LEVEL)."""
    small = np.asarray(_downscale(Image.fromarray(np.asarray(rgb, dtype=np.uint8)), 2 * STATS_LONG_SIDE))
    if small.ndim != 3:
        return 0.0
    small = small.astype(np.int16)
    chroma = small.max(axis=2) - small.min(axis=2)
    return float((chroma > COLOUR_CHROMA_LEVEL).mean())


def _downscale(image: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def scan_warnings(pixels: np.ndarray, rgb: np.ndarray, subject: str) -> list[str]:
    """Warnings (not refusals) for scans that differ from the training data.

    * Colour: colour-Doppler overlays, elastography maps and photos have many pixels whose
      channels differ a lot (high chroma = max(R,G,B) - min(R,G,B)).  B-mode ultrasound is grey;
      the training sets have at most ~1 % such pixels (coloured calipers/annotations).  The model
      only sees the grey version, so colour overlays become unfamiliar grey blobs.
    * Unlike the training data: B-mode ultrasound has a moderate mean grey level, moderate
      contrast, is not mostly black or mostly bright, and its texture is speckle, which sits
      between pixel-level noise (neighbours independent) and smooth gradients/graphics
      (neighbours nearly equal).  Any statistic outside the calibrated range is named.
    """
    notes = []
    share = colour_fraction(rgb)
    if share > COLOUR_WARN_FRACTION:
        notes.append(
            f"{subject} is strongly coloured ({share:.0%} of the picture, e.g. a colour Doppler overlay); "
            "the model was trained on greyscale B-mode scans and only sees the grey version, "
            "so its result may be unreliable."
        )
    stats = grey_statistics(pixels)
    reasons = []
    if stats["mean"] < UNLIKE_MEAN_RANGE[0]:
        reasons.append("it is much darker overall")
    elif stats["mean"] > UNLIKE_MEAN_RANGE[1]:
        reasons.append("it is much brighter overall")
    if stats["std"] < UNLIKE_STD_RANGE[0]:
        reasons.append("it has almost no contrast")
    elif stats["std"] > UNLIKE_STD_RANGE[1]:
        reasons.append("it has extreme contrast")
    if stats["near_black"] > UNLIKE_MAX_NEAR_BLACK:
        reasons.append("it is almost entirely black")
    if stats["bright"] > UNLIKE_MAX_BRIGHT:
        reasons.append("it is almost entirely bright")
    if stats["std"] >= UNLIKE_STD_RANGE[0]:  # texture is meaningless on a flat image
        if stats["roughness"] > UNLIKE_ROUGHNESS_RANGE[1]:
            reasons.append("its texture looks like random pixel noise rather than ultrasound speckle")
        elif stats["roughness"] < UNLIKE_ROUGHNESS_RANGE[0]:
            reasons.append("it is far smoother than ultrasound speckle, as drawings, gradients and photos are")
    if reasons:
        notes.append(
            f"{subject} does not look like the B-mode breast ultrasound scans the model was trained on "
            f"({'; '.join(reasons)}), so its result may be unreliable."
        )
    return notes
