"""Tests for imagemasknet.data.scans: every accepted format, every refusal, fuzzing, masks."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from imagemasknet.data import scans
from imagemasknet.data.scans import (WORKING_LONG_SIDE, AspectRatioError, CorruptImageError, DecompressionBombError,
                                     EmptyFileError, ImageTooSmallError, MaskError, MultiFrameError, NotAnImageError, Scan,
                                     ScanError, UnsupportedFileError, mask_from_drawing, read_mask, read_scan)

BUSI = Path(__file__).resolve().parents[1] / "data" / "busi" / "Dataset_BUSI_with_GT"  # bundled with the project
if not BUSI.is_dir():
    BUSI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
if not BUSI.is_dir():
    BUSI = Path("/work/shared/datasets/busi/Dataset_BUSI_with_GT")
BUSBRA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "busbra" / "images"
if not BUSBRA.is_dir():
    BUSBRA = Path("/work/shared/datasets/busbra/images")
SAMPLES = ["benign/images/benign (1).png", "malignant/images/malignant (1).png", "normal/images/normal (1).png"]
MASK_SAMPLE = ("benign/images/benign (10).png", "benign/masks/benign (10)_mask.png")

pytestmark = pytest.mark.skipif(not BUSI.is_dir(), reason="BUSI data set not available")


def grey_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


@pytest.fixture(scope="module", params=SAMPLES, ids=lambda p: Path(p).stem)
def grey(request) -> np.ndarray:
    return grey_of(BUSI / request.param)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def to_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def dicom_bytes(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **extra) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["imagemasknet-test"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_jpeg_bytes(g: np.ndarray, transfer_syntax: str | None = None) -> bytes:
    """Colour ultrasound DICOM as scanners write it: JPEG baseline, YBR_FULL_422."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.ascontiguousarray(np.dstack([g, g, g])), "RGB")))
    ds.PixelData = encapsulate([to_bytes(Image.fromarray(g).convert("RGB"), "JPEG", quality=95)])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = transfer_syntax or JPEGBaseline8Bit
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, good_crc: bool = True, tail: bytes = b"") -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    crc = zlib.crc32(body) if good_crc else zlib.crc32(body) ^ 1
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", crc & 0xFFFFFFFF) + tail


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


PNG_BODY = png_chunk(b"IDAT", zlib.compress(b"\0" * 10_000)) + png_chunk(b"IEND", b"")


def bmp_header(width: int, height: int, bpp: int = 8, compression: int = 0, tail: bytes = b"") -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, compression, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(tail), 0, 0, 14 + 40) + info + tail


def tiff_header(width: int, height: int, bits: int = 8, tail: bytes = b"") -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1), (279, 4, 1, max(len(tail), 1))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
        for tag, typ, count, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + tail


# --------------------------------------------------------------------------------------------
# Accepted formats
# --------------------------------------------------------------------------------------------
def _exif_rotated_jpeg(g: np.ndarray) -> bytes:
    # Orientation 6 = "rotate 90° clockwise to display": store the picture turned 90° anticlockwise.
    stored = Image.fromarray(g).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return to_bytes(stored, "JPEG", quality=95, exif=exif.tobytes())


def _stretched(g: np.ndarray) -> np.ndarray:
    lo, hi = float(g.min()), float(g.max())
    return np.rint((g - lo) * 255.0 / (hi - lo)).astype(np.uint8)


WRITERS = {
    # name: (make bytes from grey, expected pixels from grey, max mean abs diff, source_format)
    "png-grey": (lambda g: to_bytes(Image.fromarray(g), "PNG"), None, 0.0, "PNG"),
    "png-rgb": (lambda g: to_bytes(Image.fromarray(g).convert("RGB"), "PNG"), None, 0.0, "PNG"),
    # white picture whose alpha is the scan: composited on black it is the scan again
    "png-rgba": (lambda g: to_bytes(Image.fromarray(np.dstack([np.full_like(g, 255)] * 3 + [g]), "RGBA"), "PNG"),
                 None, 0.6, "PNG"),
    "png-palette": (lambda g: to_bytes(Image.fromarray(g).convert("RGB").quantize(256), "PNG"), None, 2.0, "PNG"),
    "png-16bit": (lambda g: to_bytes(Image.fromarray(g.astype(np.uint16) * 257), "PNG"), _stretched, 0.0, "PNG"),
    "tiff-8bit": (lambda g: to_bytes(Image.fromarray(g), "TIFF"), None, 0.0, "TIFF"),
    "tiff-16bit": (lambda g: to_bytes(Image.fromarray(g.astype(np.uint16) * 257), "TIFF"), _stretched, 0.0, "TIFF"),
    "tiff-16bit-12bit-data": (lambda g: to_bytes(Image.fromarray(g.astype(np.uint16) * 16), "TIFF"), _stretched, 0.0, "TIFF"),
    "bmp": (lambda g: to_bytes(Image.fromarray(g).convert("RGB"), "BMP"), None, 0.0, "BMP"),
    "gif": (lambda g: to_bytes(Image.fromarray(g), "GIF"), None, 0.0, "GIF"),
    "jpeg": (lambda g: to_bytes(Image.fromarray(g), "JPEG", quality=95), None, 3.0, "JPEG"),
    "jpeg-exif-rotated": (_exif_rotated_jpeg, None, 3.0, "JPEG"),
    "dicom-mono2": (lambda g: dicom_bytes(g), None, 0.0, "DICOM"),
    "dicom-mono1": (lambda g: dicom_bytes(255 - g, "MONOCHROME1"), None, 0.0, "DICOM"),
    "dicom-rescale-window": (
        # stored s = g, modality value 2s - 100 in [-100, 410], window [-100, 411) -> back to g
        lambda g: dicom_bytes(g.astype(np.uint16), bits_stored=12, RescaleSlope=2, RescaleIntercept=-100,
                              WindowCenter=155.5, WindowWidth=512),
        None, 1.0, "DICOM"),
    "dicom-mono1-window": (
        lambda g: dicom_bytes((255 - g.astype(np.uint16)) * 16, "MONOCHROME1", bits_stored=12,
                              WindowCenter=2048, WindowWidth=4096),
        None, 1.0, "DICOM"),
    "dicom-16bit-no-window": (lambda g: dicom_bytes(g.astype(np.uint16) * 16, bits_stored=12), _stretched, 0.0, "DICOM"),
    "dicom-rgb": (lambda g: dicom_bytes(np.ascontiguousarray(np.dstack([g, g, g])), "RGB"), None, 0.0, "DICOM"),
    "dicom-jpeg-ybr": (dicom_jpeg_bytes, None, 3.0, "DICOM"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_accepted_formats_match_the_original(fmt, grey, tmp_path):
    make, expected, tolerance, source = WRITERS[fmt]
    path = tmp_path / f"scan-{fmt}.bin"
    path.write_bytes(make(grey))
    scan = read_scan(path)
    want = expected(grey) if expected else grey
    assert isinstance(scan, Scan)
    assert scan.pixels.dtype == np.uint8 and scan.pixels.shape == grey.shape
    assert scan.rgb.dtype == np.uint8 and scan.rgb.shape == grey.shape + (3,)
    assert mad(scan.pixels, want) <= tolerance
    assert scan.name == path.name and scan.source_format == source
    assert scan.warnings == []


def test_bytes_path_and_file_object_agree(tmp_path):
    g = grey_of(BUSI / SAMPLES[0])
    data = to_bytes(Image.fromarray(g), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    by_bytes = read_scan(data)
    by_path = read_scan(str(tmp_path / "a.png"))
    with open(tmp_path / "a.png", "rb") as handle:
        by_file = read_scan(handle)
    assert by_bytes.name == "" and by_path.name == "a.png" and by_file.name == "a.png"
    assert read_scan(data, name="given.png").name == "given.png"
    for scan in (by_bytes, by_path, by_file):
        np.testing.assert_array_equal(scan.pixels, g)


def test_rgba_transparent_areas_become_black():
    g = grey_of(BUSI / SAMPLES[1])
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    rgba[:, : g.shape[1] // 2, :3] = 255
    rgba[:, : g.shape[1] // 2, 3] = 0
    scan = read_scan(to_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (scan.pixels[:, : g.shape[1] // 2] == 0).all()
    assert (scan.rgb[:, : g.shape[1] // 2] == 0).all()
    np.testing.assert_array_equal(scan.pixels[:, g.shape[1] // 2:], g[:, g.shape[1] // 2:])


def test_colour_image_uses_training_greyscale_and_keeps_colour_for_display():
    g = grey_of(BUSI / SAMPLES[0])
    rgb = np.dstack([g, (g * 0.8).astype(np.uint8), (g * 0.6).astype(np.uint8)])
    scan = read_scan(to_bytes(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(scan.rgb, rgb)
    np.testing.assert_array_equal(scan.pixels, np.asarray(Image.fromarray(rgb).convert("L")))


# --------------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------------
def test_training_like_scans_get_no_warnings():
    # A deterministic sample here (the full calibration over all 780 BUSI + 532 BUS-BRA images
    # takes ~40 s on 2 cores); see the constants in imagemasknet/scans.py.
    files = sorted(BUSI.glob("*/images/*.png"))[::15] + (sorted(BUSBRA.glob("*"))[::15] if BUSBRA.is_dir() else [])
    assert len(files) > 50
    warned = {f.name: read_scan(f).warnings for f in files}
    assert {k: v for k, v in warned.items() if v} == {}


def _unlike(scan: Scan) -> bool:
    return any("does not look like" in w for w in scan.warnings)


def _coloured(scan: Scan) -> bool:
    return any("strongly coloured" in w for w in scan.warnings)


def test_unlike_training_data_warnings():
    rng = np.random.default_rng(0)
    h, w = 400, 500
    cases = {
        "noise.png": rng.integers(0, 256, (h, w), dtype=np.uint8),
        "white.png": np.full((h, w), 255, np.uint8),
        "black.png": np.zeros((h, w), np.uint8),
        "gradient.png": np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8),
        "radial.png": np.clip(np.hypot(*np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))) * 170, 0, 255).astype(np.uint8),
    }
    for name, pixels in cases.items():
        scan = read_scan(to_bytes(Image.fromarray(pixels), "PNG"), name=name)
        assert _unlike(scan), name
        assert scan.warnings[0].startswith(f"'{name}'")
    # a colour "photo": random colour noise is both coloured and unlike
    photo = read_scan(to_bytes(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG"))
    assert _unlike(photo) and _coloured(photo)


def test_colour_doppler_like_scan_warns_but_is_read():
    g = grey_of(BUSI / SAMPLES[0])
    rgb = np.dstack([g, g, g])
    h, w = g.shape
    box = rgb[h // 3: h // 3 + h // 4, w // 3: w // 3 + w // 4]
    box[..., 0] = 230
    box[..., 1] = 30
    box[..., 2] = np.where(np.arange(box.shape[1]) % 2, 200, 20)
    scan = read_scan(to_bytes(Image.fromarray(rgb), "PNG"), name="doppler.png")
    assert _coloured(scan) and not _unlike(scan)
    # the normal grey scan is not "coloured"
    assert not _coloured(read_scan(to_bytes(Image.fromarray(g).convert("RGB"), "PNG")))


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------
_SMALL_SCAN = np.asarray(Image.fromarray(grey_of(BUSI / SAMPLES[0])).resize((120, 100)))


def _jpeg_ls_available() -> bool:
    from pydicom.pixels import get_decoder

    return get_decoder("1.2.840.10008.1.2.4.80").is_available


def _real_png() -> bytes:
    return (BUSI / SAMPLES[0]).read_bytes()


def _multi_tiff() -> bytes:
    g = grey_of(BUSI / SAMPLES[0])
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, "TIFF", save_all=True, append_images=[Image.fromarray(255 - g)])
    return buf.getvalue()


def _animated_gif() -> bytes:
    g = grey_of(BUSI / SAMPLES[0])
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, "GIF", save_all=True, append_images=[Image.fromarray(255 - g)], duration=100)
    return buf.getvalue()


def _dicom_no_pixels() -> bytes:
    data = dicom_bytes(np.zeros((100, 100), np.uint8))
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


REFUSALS = {
    "empty": (lambda: b"", EmptyFileError),
    "text": (lambda: b"Patient notes: nothing to see here.\n" * 20, UnsupportedFileError),
    "pdf": (lambda: b"%PDF-1.4\n" + bytes(range(256)) * 4, UnsupportedFileError),
    "eps-not-attempted": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n", UnsupportedFileError),
    "truncated-png": (lambda: _real_png()[: len(_real_png()) // 2], CorruptImageError),
    "truncated-png-header": (lambda: _real_png()[:20], CorruptImageError),
    "png-bad-crc": (lambda: png_header(500, 400, good_crc=False, tail=_real_png()[33:]), CorruptImageError),
    "truncated-jpeg": (lambda: to_bytes(Image.fromarray(grey_of(BUSI / SAMPLES[0])), "JPEG")[:3000], CorruptImageError),
    "png-over-our-cap": (lambda: png_header(8000, 8000, tail=PNG_BODY), DecompressionBombError),
    "png-over-pillow-cap": (lambda: png_header(100_000, 100_000, tail=PNG_BODY), DecompressionBombError),
    "bmp-huge": (lambda: bmp_header(60_000, 60_000), DecompressionBombError),
    "tiff-huge": (lambda: tiff_header(30_000, 30_000), DecompressionBombError),
    "dicom-huge": (lambda: dicom_bytes(np.zeros((64, 64), np.uint8), Rows=10_000, Columns=10_000), DecompressionBombError),
    "too-small": (lambda: to_bytes(Image.fromarray(np.zeros((40, 300), np.uint8)), "PNG"), ImageTooSmallError),
    "dicom-too-small": (lambda: dicom_bytes(np.zeros((32, 32), np.uint8)), ImageTooSmallError),
    "too-narrow": (lambda: to_bytes(Image.fromarray(np.zeros((64, 500), np.uint8)), "PNG"), AspectRatioError),
    "too-tall": (lambda: to_bytes(Image.fromarray(np.zeros((700, 100), np.uint8)), "BMP"), AspectRatioError),
    "multi-page-tiff": (_multi_tiff, MultiFrameError),
    "animated-gif": (_animated_gif, MultiFrameError),
    "multi-frame-dicom": (lambda: dicom_bytes(np.zeros((2 * 100, 100), np.uint8), Rows=100, NumberOfFrames=2), MultiFrameError),
    "dicom-no-pixels": (_dicom_no_pixels, NotAnImageError),
    # JPEG-LS needs a decoder plugin (not a dependency): refused with an "export it" message
    "dicom-unsupported-compression": (lambda: dicom_jpeg_bytes(_SMALL_SCAN, "1.2.840.10008.1.2.4.80"),
                                      CorruptImageError if _jpeg_ls_available() else NotAnImageError),
    "truncated-dicom": (lambda: dicom_bytes(grey_of(BUSI / SAMPLES[0]))[:5000], CorruptImageError),
    "dicom-short-pixel-data": (lambda: dicom_bytes(np.zeros((100, 100), np.uint8), Rows=200), CorruptImageError),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_raise_their_specific_error(case):
    make, error = REFUSALS[case]
    with pytest.raises(error) as info:
        read_scan(make(), name=f"{case}.img")
    message = str(info.value)
    assert type(info.value) is error
    assert f"'{case}.img'" in message
    assert message.endswith(".") and "\n" not in message and message.count(". ") == 0
    # unnamed bytes still get a readable message
    with pytest.raises(error) as info:
        read_scan(make())
    assert str(info.value).startswith("The file ")


def test_empty_message_and_error_family():
    with pytest.raises(EmptyFileError, match=r"^'x\.png' is empty \(0 bytes\)\.$"):
        read_scan(b"", name="x.png")
    for error in (EmptyFileError, NotAnImageError, CorruptImageError, DecompressionBombError,
                  ImageTooSmallError, AspectRatioError, MultiFrameError, MaskError):
        assert issubclass(error, ScanError) and issubclass(error, ValueError)


def test_missing_path_is_a_scan_error(tmp_path):
    with pytest.raises(ScanError, match="'nope.png' could not be opened"):
        read_scan(tmp_path / "nope.png")


def test_pillow_decompression_bomb_warning_is_refused(monkeypatch):
    # Lower Pillow's own limit below ours: its warning must be turned into our error too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(DecompressionBombError):
        read_scan(to_bytes(Image.fromarray(np.zeros((400, 400), np.uint8)), "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(DecompressionBombError):
        read_scan(to_bytes(Image.fromarray(np.zeros((400, 400), np.uint8)), "PNG"))


def test_pixel_cap_is_checked_before_decoding(monkeypatch):
    monkeypatch.setattr(scans, "MAX_PIXELS", 300 * 300)
    calls = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1))
    with pytest.raises(DecompressionBombError):
        read_scan(to_bytes(Image.fromarray(np.zeros((400, 400), np.uint8)), "PNG"))
    assert calls == []


# --------------------------------------------------------------------------------------------
# Fuzzing: only ScanError subclasses (or a valid Scan) may come out
# --------------------------------------------------------------------------------------------
_SMALL = np.asarray(Image.fromarray(grey_of(BUSI / SAMPLES[0])).resize((96, 80)))
_SEEDS = [
    to_bytes(Image.fromarray(_SMALL), "PNG"),
    to_bytes(Image.fromarray(_SMALL).convert("RGB"), "JPEG", quality=80),
    to_bytes(Image.fromarray(_SMALL), "BMP"),
    to_bytes(Image.fromarray(_SMALL), "TIFF"),
    to_bytes(Image.fromarray(_SMALL), "GIF"),
    to_bytes(Image.fromarray(_SMALL).convert("RGB").quantize(64), "PNG"),
    to_bytes(Image.fromarray(_SMALL.astype(np.uint16) * 257), "TIFF"),
    dicom_bytes(_SMALL),
]
_REAL_PNG = (BUSI / SAMPLES[2]).read_bytes()

_sizes = st.integers(min_value=0, max_value=2**32 - 1) | st.integers(min_value=0, max_value=20_000)
_malformed = st.one_of(
    st.binary(max_size=3000),
    st.integers(min_value=0, max_value=len(_REAL_PNG)).map(lambda n: _REAL_PNG[:n]),
    st.tuples(st.sampled_from(_SEEDS), st.integers(0, 10_000)).map(lambda t: t[0][: t[1]]),
    st.tuples(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
    .map(lambda t: _flip(*t)),
    st.builds(png_header, _sizes, _sizes, st.sampled_from([1, 2, 4, 8, 16, 3]), st.sampled_from([0, 2, 3, 4, 6, 5]),
              st.booleans(), st.sampled_from([b"", PNG_BODY]) | st.binary(max_size=300)),
    st.builds(bmp_header, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1),
              st.sampled_from([1, 4, 8, 16, 24, 32, 0, 7]), st.integers(0, 6), st.binary(max_size=300)),
    st.builds(tiff_header, st.integers(0, 2**32 - 1) | st.integers(0, 9000), st.integers(0, 2**32 - 1) | st.integers(0, 9000),
              st.sampled_from([1, 8, 16, 32, 12]), st.binary(max_size=300)),
    st.tuples(st.sampled_from(_SEEDS), st.binary(min_size=1, max_size=64), st.integers(0, 10**6)).map(lambda t: _splice(*t)),
)


def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


def _splice(data: bytes, chunk: bytes, pos: int) -> bytes:
    pos %= len(data)
    return data[:pos] + chunk + data[pos + len(chunk):]


@settings(max_examples=500, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_malformed)
def test_fuzz_only_scan_errors_escape(data):
    try:
        scan = read_scan(data, name="fuzz.bin")
    except ScanError as exc:
        assert str(exc)
    else:
        assert scan.pixels.dtype == np.uint8 and scan.pixels.ndim == 2
        assert scan.rgb.shape == scan.pixels.shape + (3,)
    try:
        mask = read_mask(data, (80, 96), name="fuzz-mask.bin")
    except MaskError as exc:
        assert str(exc)
    else:
        assert mask.dtype == bool and mask.shape == (80, 96)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def busi_mask() -> np.ndarray:
    with Image.open(BUSI / MASK_SAMPLE[1]) as im:
        return np.asarray(im.convert("L")) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_mask_0_255_and_0_1(busi_mask):
    hw = busi_mask.shape
    assert busi_mask.any() and not busi_mask.all()
    m255 = read_mask((BUSI / MASK_SAMPLE[1]), hw)
    np.testing.assert_array_equal(m255, busi_mask)
    m01 = read_mask(to_bytes(Image.fromarray(busi_mask.astype(np.uint8)), "PNG"), hw)
    np.testing.assert_array_equal(m01, busi_mask)
    m16 = read_mask(to_bytes(Image.fromarray(busi_mask.astype(np.uint16) * 65535), "PNG"), hw)
    np.testing.assert_array_equal(m16, busi_mask)
    bilevel = read_mask(to_bytes(Image.fromarray(busi_mask), "PNG"), hw)
    np.testing.assert_array_equal(bilevel, busi_mask)


def test_a_mask_of_another_size_or_shape_is_refused_naming_both_sizes(busi_mask):
    hw = busi_mask.shape
    half = Image.fromarray(busi_mask.astype(np.uint8) * 255).resize((hw[1] // 2, hw[0] // 2), Image.Resampling.NEAREST)
    with pytest.raises(MaskError, match=rf"{hw[1] // 2} × {hw[0] // 2} pixels but the scan is {hw[1]} × {hw[0]}; a mask must have the scan's size,"):
        read_mask(to_bytes(half, "PNG"), hw, name="other.png")
    square = Image.fromarray(busi_mask.astype(np.uint8) * 255).resize((hw[0], hw[0]), Image.Resampling.NEAREST)
    with pytest.raises(MaskError, match="size and shape"):
        read_mask(to_bytes(square, "PNG"), hw)
    assert read_mask(to_bytes(Image.fromarray(busi_mask.astype(np.uint8) * 255), "PNG"), hw).shape == hw


def test_mask_coloured_and_jpeg(busi_mask):
    hw = busi_mask.shape
    coloured = np.zeros(hw + (3,), np.uint8)
    coloured[busi_mask] = (200, 0, 0)
    coloured[busi_mask & (np.arange(hw[1]) < hw[1] // 2)] = (0, 0, 90)  # any non-black colour
    np.testing.assert_array_equal(read_mask(to_bytes(Image.fromarray(coloured), "PNG"), hw), busi_mask)
    jpeg = to_bytes(Image.fromarray(busi_mask.astype(np.uint8) * 255), "JPEG", quality=75)
    assert _iou(read_mask(jpeg, hw), busi_mask) > 0.97


def test_mask_rgba_transparent_is_background(busi_mask):
    hw = busi_mask.shape
    rgba = np.zeros(hw + (4,), np.uint8)
    rgba[busi_mask] = (0, 255, 0, 120)  # translucent green strokes on a transparent canvas
    np.testing.assert_array_equal(read_mask(to_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), hw), busi_mask)
    rgba[busi_mask] = (0, 0, 0, 255)  # black strokes still count: they are visible
    rgba[~busi_mask] = (255, 255, 255, 0)  # white but fully transparent background
    np.testing.assert_array_equal(read_mask(to_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), hw), busi_mask)
    opaque = np.dstack([busi_mask.astype(np.uint8) * 255] * 3 + [np.full(hw, 255, np.uint8)])
    np.testing.assert_array_equal(read_mask(to_bytes(Image.fromarray(opaque, "RGBA"), "PNG"), hw), busi_mask)
    palette = Image.fromarray(busi_mask.astype(np.uint8)).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    np.testing.assert_array_equal(read_mask(to_bytes(palette, "PNG", transparency=0), hw), busi_mask)


def _float_tiff(values: np.ndarray) -> bytes:
    return to_bytes(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


@pytest.mark.parametrize("data, says", [
    (to_bytes(Image.fromarray(np.zeros((50, 70), np.uint8)), "PNG"), "marks no lesion"),
    (to_bytes(Image.fromarray(np.zeros((50, 70, 4), np.uint8), "RGBA"), "PNG"), "marks no lesion"),
    (to_bytes(Image.fromarray(np.full((50, 70), 255, np.uint8)), "PNG"), "marks 100% of the scan"),
    (to_bytes(Image.fromarray(np.tile(np.linspace(0, 255, 70).astype(np.uint8), (50, 1))), "PNG"), "shades of grey"),
    (_float_tiff(np.where(np.eye(50, 70) > 0, np.nan, 1.0)), "not brightness"),
    (_float_tiff(-np.ones((50, 70))), "not brightness"),
], ids=["black", "transparent", "all-white", "gradient", "nan", "negative"])
def test_an_odd_mask_is_refused_naming_what_is_wrong(data, says):
    """Issue 28: a mask is read, not trusted (these were used without a word: a gradient thresholded at a
    quarter, an all-white mask as a scan-wide lesion, NaN and negative masks as empty ones)."""
    with pytest.raises(MaskError) as info:
        read_mask(data, (50, 70), name="odd.png")
    assert "'odd.png'" in str(info.value) and says in str(info.value)


def test_a_mask_at_the_scan_files_own_size_follows_the_shrunk_scan():
    big = np.zeros((2400, 3000), np.uint8)
    big[600:1200, 900:1800] = 255
    scan = read_scan(to_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3000), np.uint8)), "PNG"))
    assert max(scan.pixels.shape) == WORKING_LONG_SIDE and scan.original_hw == (2400, 3000)
    assert scan.rgb.shape[:2] == scan.pixels.shape
    mask = read_mask(to_bytes(Image.fromarray(big), "PNG"), scan.pixels.shape, original_hw=scan.original_hw)
    assert mask.shape == scan.pixels.shape and abs(mask.mean() - 0.075) < 0.005
    with pytest.raises(MaskError, match="but the scan is 3000 × 2400"):
        read_mask(to_bytes(Image.fromarray(big[:1000]), "PNG"), scan.pixels.shape, original_hw=scan.original_hw)


def test_a_mask_of_the_wrong_size_is_refused_from_its_header_before_decoding():
    """Review of issue 28: masks were decoded at full size (up to 50 MP, as float64) before their size was
    compared with the scan's. A 7000 × 7000 header whose pixels are missing is refused for its size, not as a
    damaged file: nothing was decoded."""
    with pytest.raises(MaskError, match="is 7000 × 7000 pixels but the scan is 300 × 200"):
        read_mask(png_header(7000, 7000, tail=PNG_BODY), (200, 300), name="huge.png")


@pytest.mark.parametrize("data", [
    b"", b"not a mask at all", _REAL_PNG[:200], png_header(100_000, 100_000, tail=PNG_BODY), _multi_tiff(), dicom_bytes(_SMALL),
], ids=["empty", "text", "truncated", "bomb", "multi-page", "dicom"])
def test_mask_garbage_raises_mask_error(data):
    with pytest.raises(MaskError) as info:
        read_mask(data, (100, 100), name="m.png")
    assert "'m.png'" in str(info.value)


def test_mask_bad_size_argument():
    with pytest.raises(ValueError):
        read_mask(to_bytes(Image.fromarray(np.zeros((50, 70), np.uint8)), "PNG"), (0, 10))


def test_mask_from_drawing():
    canvas = np.zeros((200, 300, 4), np.uint8)
    canvas[50:100, 60:120] = (255, 0, 0, 77)
    got = mask_from_drawing(canvas, (400, 600))
    assert got.dtype == bool and got.shape == (400, 600)
    assert got[100:200, 120:240].all() and got.sum() == 100 * 120
    assert not mask_from_drawing(np.zeros((200, 300, 4), np.uint8), (40, 60)).any()
    assert not mask_from_drawing(None, (40, 60)).any()
    with pytest.raises(MaskError):
        mask_from_drawing(np.zeros((200, 300, 3), np.uint8), (40, 60))
