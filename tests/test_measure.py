"""Lesion size: the long and short axis of an outline, from the pixel spacing a DICOM states (written here with
pydicom, both as Pixel Spacing and as an ultrasound region) or a typed scale; the record carries them."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from imagemasknet.core.paths import BUNDLED_COPY
from imagemasknet.data.decode import read_case_mask
from imagemasknet.data.scans import read_scan
from imagemasknet.inference.measure import lesion_axes_mm
from imagemasknet.inference.predictor import Predictor

SCAN = BUNDLED_COPY / "malignant" / "images" / "malignant (1).png"
MASK = BUNDLED_COPY / "malignant" / "masks" / "malignant (1)_mask.png"


def ellipse(shape, centre, semi_axes, angle_deg=0.0) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]].astype(np.float64) + 0.5
    theta = np.deg2rad(angle_deg)
    y, x = rows - centre[0], cols - centre[1]
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    return (u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2 <= 1


@pytest.mark.parametrize("angle", [0, 30, 90])
def test_an_ellipse_measures_its_two_diameters_at_any_angle(angle):
    outline = ellipse((300, 300), (150, 150), (80, 30), angle)
    long_axis, short_axis = lesion_axes_mm(outline, (0.1, 0.1))
    assert long_axis == pytest.approx(16.0, abs=0.3) and short_axis == pytest.approx(6.0, abs=0.3)


def test_unequal_row_and_column_spacing_scales_each_direction():
    outline = ellipse((200, 400), (100, 200), (150, 40))  # 300 px across, 80 px down
    long_axis, short_axis = lesion_axes_mm(outline, (0.2, 0.1))  # rows 0.2 mm, columns 0.1 mm
    assert long_axis == pytest.approx(30.0, abs=0.4) and short_axis == pytest.approx(16.0, abs=0.4)


def test_nothing_to_measure_gives_none():
    assert lesion_axes_mm(np.zeros((10, 10), bool), (0.1, 0.1)) is None
    assert lesion_axes_mm(np.ones((10, 10), bool), (0.0, 0.1)) is None
    assert lesion_axes_mm(np.ones((10, 10), bool), (float("nan"), 0.1)) is None
    one = np.zeros((10, 10), bool)
    one[4, 4] = True
    assert lesion_axes_mm(one, (0.5, 0.5)) == pytest.approx((0.5 * 2 ** 0.5, 0.5 * 2 ** 0.5))  # corner to corner


def dicom_bytes(pixels: np.ndarray, spacing: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    if spacing == "pixel-spacing":
        ds.PixelSpacing = [0.08, 0.08]  # mm
    elif spacing == "region":
        region = Dataset()
        region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3  # cm
        region.PhysicalDeltaX, region.PhysicalDeltaY = 0.008, 0.008
        ds.SequenceOfUltrasoundRegions = [region]
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("spacing", ["pixel-spacing", "region"])
def test_a_dicom_scan_with_its_spacing_gets_the_lesion_measured(spacing):
    png = read_scan(SCAN)
    scan = read_scan(dicom_bytes(png.pixels, spacing), name="case.dcm")
    assert scan.pixel_spacing_mm == pytest.approx((0.08, 0.08))
    mask = read_case_mask((MASK,), scan.pixels.shape)
    prediction = Predictor.shipped(device="cpu").predict(scan, mask)
    assert prediction.lesion_axes_mm == pytest.approx(lesion_axes_mm(mask, (0.08, 0.08)))
    assert prediction.record("case.dcm")["lesion_axes_mm"] == list(prediction.lesion_axes_mm)
    assert 5 < prediction.lesion_axes_mm[0] < 40  # a BUSI lesion at 0.08 mm a pixel


def test_a_dicom_without_spacing_and_a_png_are_not_measured():
    png = read_scan(SCAN)
    assert png.pixel_spacing_mm is None
    assert read_scan(dicom_bytes(png.pixels, "none"), name="x.dcm").pixel_spacing_mm is None
    prediction = Predictor.shipped(device="cpu").predict(png, read_case_mask((MASK,), png.pixels.shape))
    assert prediction.lesion_axes_mm is None and prediction.record("x")["lesion_axes_mm"] is None


def test_a_typed_pixel_size_of_a_shrunk_scan_measures_in_the_files_own_millimetres():
    """Review of issue 25: a reader types the millimetres per pixel of the file, but a scan over 1024 px is
    measured at working size, so the typed value must grow by the shrink factor."""
    from PIL import Image

    picture = np.random.default_rng(0).integers(0, 255, (2400, 3000), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    scan = read_scan(buffer.getvalue(), name="large.png")
    factor = 3000 / max(scan.pixels.shape)
    assert factor > 2 and scan.working_spacing(0.1) == pytest.approx((0.1 * factor, 0.1 * factor))
    outline = ellipse(scan.pixels.shape, (400, 500), (300 / factor, 150 / factor))  # 600 × 300 file pixels
    long_axis, short_axis = lesion_axes_mm(outline, scan.working_spacing(0.1))
    assert long_axis == pytest.approx(60, rel=0.02) and short_axis == pytest.approx(30, rel=0.02)
