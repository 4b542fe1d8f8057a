"""Predictor behaviour: every accepted format gives the label of the original PNG, masks are
checked, Grad-CAM is well-formed and points at lesions, and threads share one instance safely."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from imagemasknet.data.scans import MaskError, read_mask, read_scan
from imagemasknet.data.splits import load_folds
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import DEFAULT_MODEL


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.shipped(DEFAULT_MODEL, device="cpu")


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> bytes:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    stored = 255 - pixels if photometric == "MONOCHROME1" else pixels
    ds.PixelData = stored.astype(np.uint8).tobytes()
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_every_accepted_format_gives_the_png_label(predictor, busi_root):
    path = busi_root / "malignant" / "images" / "malignant (2).png"
    original = predictor.predict(read_scan(path))
    grey = Image.open(path).convert("L")
    pixels = np.asarray(grey)
    sixteen = Image.fromarray(pixels.astype(np.uint16) * 257)
    rotated = grey.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": undoes the counter-clockwise rotation above
    variants = {
        "rgb.png": _encode(grey.convert("RGB"), "PNG"),
        "rgba.png": _encode(grey.convert("RGBA"), "PNG"),
        "palette.png": _encode(grey.convert("RGB").quantize(256), "PNG"),
        "scan.bmp": _encode(grey, "BMP"),
        "scan16.tif": _encode(sixteen, "TIFF"),
        "scan.jpg": _encode(grey, "JPEG", quality=95),
        "rotated.jpg": _encode(rotated, "JPEG", quality=95, exif=exif),
        "scan.dcm": _dicom_bytes(pixels),
        "inverted.dcm": _dicom_bytes(pixels, "MONOCHROME1"),
    }
    for name, data in variants.items():
        scan = read_scan(data, name=name)
        assert scan.pixels.shape == pixels.shape, name
        assert predictor.predict(scan).predicted_class == original.predicted_class, name


def test_mask_for_a_model_that_takes_none_is_a_clear_error(predictor, busi_root, monkeypatch):
    scan = read_scan(busi_root / "benign" / "images" / "benign (1).png")
    monkeypatch.setattr(predictor, "spec", predictor.spec.__class__(**{**predictor.spec.__dict__, "accepts_mask": False}))
    with pytest.raises(MaskError, match="takes no mask"):
        predictor.predict(scan, np.zeros(scan.pixels.shape, bool))


def test_a_mask_of_another_size_never_reaches_the_model(predictor, busi_root):
    scan = read_scan(busi_root / "benign" / "images" / "benign (1).png")
    small = Image.open(busi_root / "benign" / "masks" / "benign (1)_mask.png").convert("L").resize((100, 80))
    with pytest.raises(MaskError, match=r"100 × 80 pixels but the scan is"):
        read_mask(_encode(small, "PNG"), scan.pixels.shape)
    with pytest.raises(MaskError, match="a mask must have the scan's size"):
        predictor.predict(scan, np.zeros((80, 100), dtype=bool))


def test_grad_cam_is_well_formed_in_both_modes(predictor, busi_root):
    scan = read_scan(busi_root / "malignant" / "images" / "malignant (3).png")
    mask = read_mask(busi_root / "malignant" / "masks" / "malignant (3)_mask.png", scan.pixels.shape)
    for given in (None, mask):
        heat = predictor.grad_cam(scan, "malignant", given)
        assert heat.shape == scan.pixels.shape
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
        np.testing.assert_array_equal(heat, predictor.grad_cam(scan, "malignant", given))


def test_grad_cam_peak_falls_in_the_lesion_far_more_often_than_chance(predictor, busi_root):
    """On the first 12 malignant scans of fold 0, the Grad-CAM peak must land inside the drawn lesion
    at least twice as often as a uniformly random pixel would. (Over all 42 malignant fold-0 scans the
    shipped model's peak is inside on 18: 43 %, short of "most"; see the README.)"""
    ids = [i for i in load_folds()[0] if i.startswith("malignant")][:12]
    inside, lesion_share = 0, []
    for image_id in ids:
        scan = read_scan(busi_root / "malignant" / "images" / f"{image_id}.png")
        truth = read_mask(busi_root / "malignant" / "masks" / f"{image_id}_mask.png", scan.pixels.shape)
        heat = predictor.grad_cam(scan, "malignant")
        inside += bool(truth[np.unravel_index(np.argmax(heat), heat.shape)])
        lesion_share.append(truth.mean())
    assert inside / len(ids) >= 2 * np.mean(lesion_share), f"peak inside on {inside}/{len(ids)}"


def test_eight_threads_match_sequential_results(predictor, busi_root):
    paths = [busi_root / c / "images" / f"{c} ({n}).png" for c in ("benign", "malignant", "normal") for n in (4, 5, 6)]
    scans = [read_scan(p) for p in paths]
    sequential = [predictor.predict(s).probabilities for s in scans]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda s: predictor.predict(s).probabilities, scans * 2))
    for expected, got in zip(sequential * 2, threaded):
        assert got == expected
