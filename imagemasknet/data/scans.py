"""Read user-supplied scans and lesion masks robustly.

Everything a user can upload goes through :func:`read_scan` (the scan) and :func:`read_mask` /
:func:`mask_from_drawing` (an optional lesion outline).  Files we cannot or should not use are
refused with a :class:`ScanError` subclass whose message is one plain sentence naming the file;
no other exception type escapes for any bytes input.  Scans that are usable but look unusual
get human-readable entries in :attr:`Scan.warnings` instead of being refused.

Accepted inputs
---------------
PNG, JPEG, BMP, TIFF, GIF and WebP (single frame) and DICOM (single frame), recognised by their content, not
their name (a DICOM file without an extension is read). A path is read only when it is a regular file of at most
:data:`MAX_FILE_BYTES` (checked before reading): a device, a pipe or a 2 GB file is refused unread.  Greyscale, RGB, RGBA
(composited on black), palette, 1-bit and 16-bit/32-bit/float images; EXIF orientation is applied.

* 16-bit (and 32-bit / float) greyscale images are scaled to 8 bits by **their own min..max**
  (a linear stretch).  Full-range scaling (divide by 257) would turn the common "12-bit data in
  a 16-bit container" into an almost black picture; the stretch is exact for an 8-bit image
  that was multiplied up to 16 bits as long as it contains both black and white pixels, which
  ultrasound images practically always do.
* DICOM: the Modality LUT / Rescale Slope+Intercept is applied, then the VOI LUT or
  Window Center/Width when present (mapped onto the full 8-bit range using the window's own
  output range); without a VOI the values are kept as they are when they already are 8-bit
  and otherwise stretched by their min..max.  MONOCHROME1 is inverted so that higher = brighter.
  Colour DICOM (RGB, YBR_*, PALETTE COLOR) is converted to RGB and then to grey.
* Colour images become grey the same way the training data was read (Pillow ``convert("L")``,
  ITU-R 601-2 luma), so :attr:`Scan.pixels` is exactly what the model would have seen.

Security: decoding is limited to the Pillow plugins above (no EPS/Ghostscript etc.), the pixel
count from the header is checked against :data:`MAX_PIXELS` *before* any pixel is decoded, and
Pillow's own decompression-bomb error/warning is turned into :class:`DecompressionBombError`.

Its size (about 500 lines) is on purpose: this is the one gate every untrusted upload passes, so every
refusal and its sentence are read in one place. What a readable scan's statistics say is
:mod:`imagemasknet.data.scan_warnings`.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagemasknet.core.files import UnsafeFileError, read_regular
from imagemasknet.data.scan_warnings import scan_warnings

__all__ = [
    "MAX_PIXELS", "MIN_SIDE", "MAX_ASPECT",
    "ScanError", "EmptyFileError", "NotAnImageError", "UnsupportedFileError", "UnreadableFileError",
    "CorruptImageError", "DecompressionBombError",
    "ImageTooSmallError", "AspectRatioError", "MultiFrameError", "MaskError", "NotUltrasoundError",
    "Scan", "read_scan", "read_mask", "decode_mask", "check_lesion", "mask_from_drawing",
]

# --------------------------------------------------------------------------------------------
# Limits (refusals)
# --------------------------------------------------------------------------------------------
MAX_PIXELS = 50_000_000  #: larger images (width × height from the header) are refused unread
MIN_SIDE = 64  #: shorter side below this many pixels is refused
MAX_FILE_BYTES = 256 * 2**20  #: larger files are refused unread (a 50-megapixel 16-bit RGB TIFF is 300 MB: refused)
MAX_ASPECT = 6.0  #: longer side / shorter side above this is refused
#: A decoded scan is kept at most this large (longer side, px): the model reads 256 px and the page shows
#: 900, so nothing larger is ever looked at, and a 7000 × 7000 upload costs 4 MB instead of 196 MB.
WORKING_LONG_SIDE = 1024
#: Scans decoded at once in one process: on two cores more run no faster, and each holds its full-size picture.
DECODING = threading.BoundedSemaphore(2)
MASK_MIN_SHARE, MASK_MAX_SHARE = 0.0005, 0.9  #: a lesion covers at least 0.05 % and at most 90 % of a scan
MASK_GREY_SHARE = 0.1  #: a mask with more than this share of mid-grey pixels is not a binary mask

#: Pillow plugins we let near user data (also fixes which formats count as images).
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")  # JPEG also yields MPO (phone JPEGs)
_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP"),
)
_ACCEPTED = "PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class ScanError(ValueError):
    """A file the app cannot or should not use; ``str(error)`` is a sentence for the user."""


class EmptyFileError(ScanError):
    """The file has no content (0 bytes)."""


class NotAnImageError(ScanError):
    """Not an image in a format we read (or a DICOM object without a decodable image)."""


class UnsupportedFileError(NotAnImageError):
    """A file of a kind this app does not read (text, PDF, SVG, …), whatever its name says."""


class UnreadableFileError(ScanError):
    """A path that is not a regular file (a folder, a device, a pipe), or a file too large to read."""


class CorruptImageError(ScanError):
    """Recognisable image format, but damaged or truncated."""


class DecompressionBombError(ScanError):
    """More than MAX_PIXELS pixels (checked from the header, before decoding)."""


class ImageTooSmallError(ScanError):
    """Shorter side under MIN_SIDE pixels."""


class AspectRatioError(ScanError):
    """Longer side more than MAX_ASPECT times the shorter side."""


class MultiFrameError(ScanError):
    """Several frames/pages (multi-page TIFF, animated GIF/PNG, multi-frame DICOM, cine loop)."""


class MaskError(ScanError):
    """A mask file (or drawing) that cannot be used."""


class NotUltrasoundError(ScanError):
    """A picture the model cannot judge: it does not look like a breast ultrasound scan (a photograph,
    document, screenshot, chart, another modality, noise). Raised by the Predictor, which measures it
    (:mod:`imagemasknet.inference.familiarity`)."""


@dataclass
class Scan:
    """A decoded scan.

    ``pixels`` is what the model sees (uint8 greyscale H×W); ``rgb`` is for display
    (uint8 H×W×3, alpha composited on black); both at most :data:`WORKING_LONG_SIDE` on the longer side,
    ``original_hw`` the file's own size. ``warnings`` are sentences to show the user;
    ``pixel_spacing_mm`` is the (row, column) spacing of ``pixels`` when the file states it (DICOM), else None.
    """

    pixels: np.ndarray
    rgb: np.ndarray
    name: str
    source_format: str
    warnings: list[str] = field(default_factory=list)
    pixel_spacing_mm: tuple[float, float] | None = None
    original_hw: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.original_hw is None:
            self.original_hw = tuple(self.pixels.shape[:2])
        rgb = self.rgb
        self._colour = not ((rgb[..., 0] == self.pixels).all() and (rgb[..., 0] == rgb[..., 1]).all()
                            and (rgb[..., 1] == rgb[..., 2]).all())
        if not self._colour:
            # A greyscale scan's display copy is a view of its pixels: a session keeps a quarter of the memory.
            self.rgb = np.broadcast_to(self.pixels[..., None], (*self.pixels.shape, 3))

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes + (self.rgb.nbytes if self._colour else 0))

    @property
    def is_colour(self) -> bool:
        """Whether the display copy has colour (overlays, Doppler) rather than grey in all three channels."""
        return self._colour

    def working_spacing(self, file_spacing_mm: float) -> tuple[float, float]:
        """The (row, column) spacing of ``pixels`` for a pixel size in mm of the file's own pixels (what a reader
        reads off the scanner's ruler): larger, by the shrink factor, when the scan was shrunk to working size."""
        factor = max(self.original_hw) / max(self.pixels.shape[:2])
        return (file_spacing_mm * factor, file_spacing_mm * factor)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def read_scan(data: Any, name: str | None = None) -> Scan:
    """Decode a scan from bytes, a path, or a binary file object (e.g. a Streamlit upload).

    ``name`` is used in messages; it defaults to the file name of a path / file object.
    Raises a :class:`ScanError` subclass for anything we refuse; any other failure while
    decoding is reported as :class:`CorruptImageError`.
    """
    raw, name = _read_input(data, name)
    subject = _subject(name)
    if not raw:
        raise EmptyFileError(f"{subject} is empty (0 bytes).")
    notes: list[str] = []
    spacing = None
    with DECODING, _guard(subject):
        if _is_dicom(raw):
            rgb, pixels, fmt, spacing = _decode_dicom(raw, subject)
        else:
            image, fmt = _open_pil(raw, subject, check_geometry=True, what="scan")
            stored_wh = image.size
            if fmt == "JPEG" and max(stored_wh) > 2 * WORKING_LONG_SIDE:
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly: a large JPEG never exists at full size.
                image.draft(image.mode, tuple(side * WORKING_LONG_SIDE // max(stored_wh) for side in stored_wh))
            decoded_wh = image.size
            image = _load_oriented(image, subject, notes)
            turned = image.size != decoded_wh  # the EXIF orientation swapped width and height
            original_hw = (stored_wh[0], stored_wh[1]) if turned else (stored_wh[1], stored_wh[0])
            _check_geometry(*original_hw, subject)
            image, factor = _shrunk(image)  # before any array is made: a 7000 × 7000 scan never is one
            factor *= max(original_hw) / max(decoded_wh)  # a JPEG decoded at a reduced scale
            rgb, pixels = _pil_to_arrays(image)
        if _is_dicom(raw):
            _check_geometry(pixels.shape[0], pixels.shape[1], subject)
            original_hw = tuple(pixels.shape[:2])
            rgb, pixels, factor = _working_size(rgb, pixels)
        notes.extend(scan_warnings(pixels, rgb, subject))
    if spacing is not None:
        spacing = (spacing[0] * factor, spacing[1] * factor)
    return Scan(
        pixels=np.ascontiguousarray(pixels, dtype=np.uint8),
        rgb=np.ascontiguousarray(rgb, dtype=np.uint8),
        name=name or "",
        source_format=fmt,
        warnings=notes,
        pixel_spacing_mm=spacing,
        original_hw=original_hw,
    )


def _shrunk(image: Image.Image) -> tuple[Image.Image, float]:
    """The decoded picture at most :data:`WORKING_LONG_SIDE` on the longer side, and the original pixel's size in
    working pixels (1 when nothing was shrunk)."""
    factor = max(image.size) / WORKING_LONG_SIDE
    if factor <= 1:
        return image, 1.0
    if image.mode in ("1", "P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA" if image.mode != "1" else "L")  # modes Pillow resizes only by nearest
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    return image.resize(size, Image.Resampling.LANCZOS), factor


def _working_size(rgb: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A DICOM's decoded arrays at most :data:`WORKING_LONG_SIDE` on the longer side, as :func:`_shrunk` does."""
    height, width = pixels.shape
    if max(height, width) <= WORKING_LONG_SIDE:
        return rgb, pixels, 1.0
    factor = max(height, width) / WORKING_LONG_SIDE
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS))
    pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, Image.Resampling.LANCZOS))
    return rgb, pixels, factor


def read_mask(data: Any, size_hw: tuple[int, int], name: str | None = None,
              original_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask and return it as bool H×W at ``size_hw``; it must have the scan's size: ``size_hw``
    or the scan file's own ``original_hw`` (then it is shrunk as the scan was).

    A mask of another size is refused with both sizes named: it was most likely made for another scan
    (or another export of it), and stretching it would put the outline in the wrong place.  0/1,
    0..255, 16-bit or coloured masks are accepted: a pixel is lesion when its brightest channel is
    above the midpoint of the mask's darkest and brightest values (so 0/1 masks work, a grey background
    is background, and JPEG noise around black does not count).  When the mask has transparent pixels (alpha == 0), transparent =
    background and every visible pixel is lesion (how drawing tools export strokes).  A mask is read, not
    trusted: one with shades of grey (not a binary mask), no lesion, a lesion covering most of the scan, or
    values that are not numbers raises :class:`MaskError` naming what is wrong.
    """
    height, width = _check_size_hw(size_hw)
    original = _check_size_hw(original_hw) if original_hw is not None else (height, width)
    subject = _subject(name or _name_of(data), "The mask file", prefix="The mask ")
    return check_lesion(decode_mask(data, name, fits=((height, width), original)), subject)


def decode_mask(data: Any, name: str | None = None,
                fits: tuple[tuple[int, int], tuple[int, int]] | None = None) -> np.ndarray:
    """A mask file as bool (a pixel is lesion above the midpoint of its darkest and brightest values, or where it
    is not transparent); :class:`MaskError` for a file that is no black-and-white mask. Training reads its masks
    with this too, so a site's masks mean the same in training as in the app.

    With ``fits`` (the working size and the scan file's own size, each height × width) a mask of neither size is
    refused from its header, before a pixel is decoded, and one is returned at the working size: a large mask is
    shrunk (nearest) before any array exists, as a large scan is."""
    raw, name = _read_input(data, name, error=MaskError)
    subject = _subject(name, "The mask file", prefix="The mask ")
    if not raw:
        raise MaskError(f"{subject} is empty (0 bytes).")
    try:
        with DECODING, _guard(subject):
            if _is_dicom(raw):
                raise NotAnImageError(f"{subject} is a DICOM file; please upload the mask as a PNG image.")
            image, _ = _open_pil(raw, subject, check_geometry=False, what="mask")
            if fits is not None:
                _check_mask_size(_oriented_hw(image), fits[1], fits, subject)
            image = _load_oriented(image, subject, [])
            if fits is not None and image.size != (fits[0][1], fits[0][0]):
                image = image.resize((fits[0][1], fits[0][0]), Image.Resampling.NEAREST)
            return _mask_from_image(image, subject).astype(bool, copy=False)
    except MaskError:
        raise
    except ScanError as exc:
        raise MaskError(str(exc)) from exc


def _oriented_hw(image: Image.Image) -> tuple[int, int]:
    """The picture's height and width once its EXIF orientation is applied, read from the header alone."""
    try:
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
    except Exception:  # noqa: BLE001 - broken EXIF is shown as stored, as _load_oriented does
        turned = False
    return (image.width, image.height) if turned else (image.height, image.width)


def _check_mask_size(mask_hw: tuple[int, int], scan_hw: tuple[int, int], allowed, subject: str) -> None:
    if mask_hw in allowed:
        return
    shape = "size and shape" if abs(mask_hw[1] / mask_hw[0] - scan_hw[1] / scan_hw[0]) > 0.01 else "size"
    raise MaskError(f"{subject} is {mask_hw[1]} × {mask_hw[0]} pixels but the scan is {scan_hw[1]} × {scan_hw[0]}; "
                    f"a mask must have the scan's {shape}, so it was not used. Upload the mask made for this scan.")


def _name_of(data: Any) -> str | None:
    if isinstance(data, (str, os.PathLike)):
        return Path(data).name
    return os.path.basename(str(getattr(data, "name", ""))) or None


def check_lesion(lesion: np.ndarray, subject: str) -> np.ndarray:
    """``lesion`` if it can outline a lesion; :class:`MaskError` for one that marks nothing or most of the scan."""
    share = float(lesion.mean()) if lesion.size else 0.0
    if share < MASK_MIN_SHARE:
        raise MaskError(f"{subject} marks no lesion (it is empty), so it was not used; mark the lesion, or switch "
                        "mask mode off.")
    if share > MASK_MAX_SHARE:
        raise MaskError(f"{subject} marks {share:.0%} of the scan as lesion; a mask outlines the lesion alone (white "
                        "lesion on black), so it was not used. Check that it is not inverted.")
    return lesion


def mask_from_drawing(rgba: np.ndarray | None, size_hw: tuple[int, int]) -> np.ndarray:
    """Turn a canvas drawing (H×W×4 RGBA, strokes where alpha > 0) into a bool mask at ``size_hw``.

    Shapes are not filled here (the canvas fills rectangles/polygons itself); ``None``
    (nothing drawn) gives an empty mask.
    """
    height, width = _check_size_hw(size_hw)
    if rgba is None:
        return np.zeros((height, width), dtype=bool)
    arr = np.asarray(rgba)
    if arr.ndim != 3 or arr.shape[2] != 4 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MaskError(f"The drawing is not an RGBA picture (expected height × width × 4, got {arr.shape}).")
    alpha = np.nan_to_num(arr[..., 3].astype(np.float64, copy=False))
    return _resize_bool(alpha > 0, height, width)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------
def _read_input(data: Any, name: str | None, error: type[ScanError] = ScanError) -> tuple[bytes, str | None]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), name
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        name = name or path.name
        try:
            return read_regular(path, MAX_FILE_BYTES, follow_links=True), name
        except UnsafeFileError as exc:
            too_large = "bytes" in str(exc)
            raise UnreadableFileError(
                f"{_subject(name)} is larger than {MAX_FILE_BYTES // 2**20} MB, more than any scan this app reads, so "
                "it was not read." if too_large else
                f"{_subject(name)} is not a regular file (a folder, a device or a pipe), so it was not read.") from exc
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise error(f"{_subject(name)} could not be opened ({reason}).") from exc
    if hasattr(data, "getvalue") or hasattr(data, "read"):  # BytesIO, Streamlit UploadedFile, open file
        name = name or (os.path.basename(str(getattr(data, "name", ""))) or None)
        try:
            raw = data.getvalue() if hasattr(data, "getvalue") else data.read()
        except Exception as exc:  # noqa: BLE001 - a broken stream is the user's file problem
            raise error(f"{_subject(name)} could not be read.") from exc
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        return bytes(raw), name
    raise TypeError(f"expected bytes, a path or a binary file object, got {type(data).__name__}")


def _subject(name: str | None, unnamed: str = "The file", prefix: str = "") -> str:
    return f"{prefix}'{name}'" if name else unnamed


def _check_size_hw(size_hw: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"size_hw must be (height, width), got {size_hw!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"size_hw must be positive, got {size_hw!r}")
    return height, width


class _guard:
    """Context: silence library warnings, turn Pillow's bomb warning into an error, and map
    every non-ScanError exception to the matching ScanError subclass."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> "_guard":
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._warnings.__exit__(None, None, None)
        if exc is None or isinstance(exc, ScanError) or not isinstance(exc, Exception):
            return False
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError)):
            raise DecompressionBombError(
                f"{self.subject} is too large to open safely (over {MAX_PIXELS:,} pixels)."
            ) from exc
        raise CorruptImageError(f"{self.subject} is damaged or incomplete and could not be decoded.") from exc


def _check_geometry(height: int, width: int, subject: str) -> None:
    if width * height > MAX_PIXELS:
        raise DecompressionBombError(
            f"{subject} is too large to open safely ({width} × {height} pixels; the limit is {MAX_PIXELS:,})."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmallError(
            f"{subject} is too small ({width} × {height} pixels); scans need at least {MIN_SIDE} pixels on each side."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise AspectRatioError(
            f"{subject} is too long and narrow ({width} × {height} pixels) to be an ultrasound scan."
        )


# --------------------------------------------------------------------------------------------
# Pillow formats
# --------------------------------------------------------------------------------------------
def _open_pil(raw: bytes, subject: str, *, check_geometry: bool, what: str) -> tuple[Image.Image, str]:
    try:
        image = Image.open(io.BytesIO(raw), formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        looks_like = next((fmt for sig, fmt in _SIGNATURES if raw.startswith(sig)), None)
        if looks_like:
            raise CorruptImageError(
                f"{subject} looks like a {looks_like} file but is damaged or incomplete."
            ) from None
        raise UnsupportedFileError(f"{subject} is not an image this app can read (use {_ACCEPTED}).") from None
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise DecompressionBombError(
            f"{subject} is too large to open safely ({width} × {height} pixels; the limit is {MAX_PIXELS:,})."
        )
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"{subject} has no pixels ({width} × {height}).")
    if check_geometry:
        _check_geometry(height, width, subject)
    # MPO = JPEG with extra pictures (phone depth maps, previews): the first one is the image.
    if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
        raise MultiFrameError(
            f"{subject} contains {image.n_frames} frames or pages; please upload a single {what} image."
        )
    return image, fmt


def _load_oriented(image: Image.Image, subject: str, notes: list[str]) -> Image.Image:
    image.load()
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF only loses the orientation hint
        notes.append(f"{subject} has an unreadable orientation (EXIF) tag; it is shown as stored.")
        return image
    return oriented if oriented is not None else image


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """16-/32-bit or float greyscale to uint8 by the image's own min..max (see module doc)."""
    try:
        arr = np.asarray(image)
        if arr.dtype == object or arr.ndim != 2:
            raise TypeError
    except (TypeError, ValueError):
        arr = np.asarray(image.convert("F"))
    return _stretch(arr.astype(np.float64))


def _stretch(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map lo..hi (default: finite min..max) onto 0..255; flat images become black."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if lo is None or hi is None:
        if not finite.any():
            return np.zeros(arr.shape, dtype=np.uint8)
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.where(finite, arr, lo)
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pil_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Return (rgb H×W×3, grey H×W) uint8; alpha composited on black."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        grey = _high_depth_to_uint8(image)
        return np.repeat(grey[..., None], 3, axis=2), grey
    if mode in ("1", "L"):
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), grey
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = ((rgba[..., :3] * rgba[..., 3:4] + 127) // 255).astype(np.uint8)
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return rgb, _rgb_to_grey(rgb)


def _rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    # Same conversion as the training data (Pillow's ITU-R 601-2 luma).
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").convert("L"), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
def _is_dicom(raw: bytes) -> bool:
    return len(raw) >= 132 and raw[128:132] == b"DICM"


def _dicom_spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm: Pixel Spacing (0028,0030), else the first ultrasound region
    (0018,6011) whose physical units are centimetres in both directions (code 3); None when neither says."""
    candidates = []
    try:
        if "PixelSpacing" in ds:
            row, col = (float(v) for v in ds.PixelSpacing)
            candidates.append((row, col))
        for region in ds.get("SequenceOfUltrasoundRegions", []) or []:
            if int(region.get("PhysicalUnitsXDirection", 0)) == 3 and int(region.get("PhysicalUnitsYDirection", 0)) == 3:
                candidates.append((10 * abs(float(region.PhysicalDeltaY)), 10 * abs(float(region.PhysicalDeltaX))))
    except (AttributeError, TypeError, ValueError):
        return None
    for row, col in candidates:
        if 1e-3 <= row <= 10 and 1e-3 <= col <= 10:  # mm per pixel a scanner could mean
            return row, col
    return None


def _decode_dicom(raw: bytes, subject: str) -> tuple[np.ndarray, np.ndarray, str, tuple[float, float] | None]:
    # imported here, so that only DICOM uploads pay for loading pydicom and its decoders
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder

    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=False)
    except Exception as exc:  # noqa: BLE001
        raise CorruptImageError(f"{subject} looks like a DICOM file but is damaged or incomplete.") from exc
    if "PixelData" not in ds:
        raise NotAnImageError(f"{subject} is a DICOM file without an image (for example a report or measurement).")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # noqa: BLE001
        raise CorruptImageError(f"{subject} is a DICOM file with a damaged image header.") from exc
    if rows <= 0 or cols <= 0:
        raise CorruptImageError(f"{subject} is a DICOM file whose image has no pixels.")
    if rows * cols > MAX_PIXELS:
        raise DecompressionBombError(
            f"{subject} is too large to open safely ({cols} × {rows} pixels; the limit is {MAX_PIXELS:,})."
        )
    if frames > 1:
        raise MultiFrameError(
            f"{subject} is a DICOM file with {frames} frames (a cine loop); please export a single frame."
        )
    _check_geometry(rows, cols, subject)

    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        unsupported = False
        if tsyntax is not None and tsyntax.is_compressed:
            try:
                unsupported = not get_decoder(tsyntax).is_available
            except Exception:  # noqa: BLE001 - unknown transfer syntax
                unsupported = True
        if unsupported:
            raise NotAnImageError(
                f"{subject} is a DICOM file compressed as '{tsyntax.name}', which this app cannot decode; "
                "please export it uncompressed or as PNG."
            ) from exc
        raise CorruptImageError(f"{subject} is a DICOM file whose image data is damaged or incomplete.") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    arr = np.asarray(arr)
    if photometric in ("MONOCHROME1", "MONOCHROME2") or arr.ndim == 2:
        if arr.ndim != 2:
            raise CorruptImageError(f"{subject} is a DICOM file with an unexpected image layout {arr.shape}.")
        grey = _dicom_grey(arr, ds, apply_modality_lut, apply_voi_lut)
        if photometric == "MONOCHROME1":  # stored with 0 = white
            grey = 255 - grey
        return np.repeat(grey[..., None], 3, axis=2), grey, "DICOM", _dicom_spacing(ds)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise CorruptImageError(f"{subject} is a DICOM file with an unexpected image layout {arr.shape}.")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        bits = int(ds.get("BitsStored", 16) or 16)
        top = float(max(arr.max(), 1)) if arr.dtype.kind == "f" else float(2 ** (16 if photometric == "PALETTE COLOR" else bits) - 1)
        arr = _stretch(arr, 0.0, top)
    rgb = np.ascontiguousarray(arr, dtype=np.uint8)
    return rgb, _rgb_to_grey(rgb), "DICOM", _dicom_spacing(ds)


def _dicom_grey(arr: np.ndarray, ds: Any, apply_modality_lut: Any, apply_voi_lut: Any) -> np.ndarray:
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds or ds.get("ModalityLUTSequence")
    values = apply_modality_lut(arr, ds) if has_rescale else arr
    has_voi = bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        out = apply_voi_lut(values, ds)
        # The VOI output range: map the most extreme possible inputs through the same VOI.
        probe = np.asarray(apply_voi_lut(np.array([-(2**31), 2**31 - 1], dtype=np.int64), ds), dtype=np.float64)
        lo, hi = float(probe.min()), float(probe.max())
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            return _stretch(out, lo, hi)
        return _stretch(out)
    values = np.asarray(values)
    if values.size and np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() <= 255 \
            and int(ds.get("BitsStored", 8) or 8) <= 8:
        return values.astype(np.uint8)
    return _stretch(values)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def _mask_from_image(image: Image.Image, subject: str) -> np.ndarray:
    mode = image.mode
    alpha = None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[..., 3]
        value = rgba[..., :3].max(axis=2).astype(np.float32)
    elif mode.startswith("I") or mode == "F":
        try:
            value = np.asarray(image).astype(np.float32)
            if value.ndim != 2:
                raise TypeError
        except (TypeError, ValueError):
            value = np.asarray(image.convert("F"), dtype=np.float32)
    elif mode in ("1", "L"):
        value = np.asarray(image.convert("L"), dtype=np.float32)
    else:
        value = np.asarray(image.convert("RGB")).max(axis=2).astype(np.float32)
    if not np.isfinite(value).all() or (value < 0).any():
        raise MaskError(f"{subject} holds values that are not brightness (negative or not a number), so it was not "
                        "used; save the mask as a black-and-white PNG.")
    if alpha is not None and (alpha == 0).any():
        return alpha > 0
    low, high = (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(value.shape, dtype=bool) if high <= 0 else np.ones(value.shape, dtype=bool)
    spread = high - low
    grey = (value > low + 0.1 * spread) & (value < high - 0.1 * spread)
    if grey.mean() > MASK_GREY_SHARE:
        raise MaskError(f"{subject} is not a black-and-white mask ({grey.mean():.0%} of it is shades of grey: a "
                        "gradient or a picture?), so it was not used; save the lesion in white on black.")
    return value > (low + high) / 2


def _resize_bool(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.astype(bool, copy=True)
    image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127
