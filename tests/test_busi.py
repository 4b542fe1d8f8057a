"""imagemasknet.data.busi on real BUSI / BUS-BRA files: both layouts, mask merging and resizing, the load
report, data-root discovery and CSV manifests."""
from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagemasknet.data.busi as data_module
from imagemasknet.data.busi import find_data_root, load_busi
from imagemasknet.data.dataset import CLASSES, DatasetNotFoundError, load_arrays
from imagemasknet.data.decode import read_case_mask, read_grey, resize_pair
from imagemasknet.data.owndata import load_dataset, load_labelled_csv

SIZE = 64


def original_mask(busi_case_files, case_id: str) -> np.ndarray:
    """OR of a case's mask files, decoded independently of read_case_mask."""
    image, masks = busi_case_files(case_id)
    merged = None
    for path in masks:
        with Image.open(path) as m:
            mask = np.asarray(m.convert("L")) > 127
        merged = mask if merged is None else merged | mask
    return merged


def kinds(report) -> Counter:
    return Counter(p.kind for p in report.problems)


# --------------------------------------------------------------------------- bundled layout (real)

def test_bundled_layout_loads_all_780_cases(busi_root):
    data = load_busi(busi_root)
    assert data.layout == "bundled"
    assert len(data.cases) == 780
    assert len(set(data.ids)) == 780
    assert Counter(c.label for c in data.cases) == {"normal": 133, "benign": 437, "malignant": 210}
    assert data.report.problems == [] and not data.report
    # Cases come in class order, numerically within a class (not "benign (10)" before "benign (2)").
    assert data.ids[0] == "normal (1)" and data.ids[1] == "normal (2)"
    assert [CLASSES.index(c.label) for c in data.cases] == sorted(CLASSES.index(c.label) for c in data.cases)
    by_id = data.by_id()
    # The extra masks are found and ordered _mask, _mask_1, _mask_2.
    assert [p.name for p in by_id["benign (195)"].mask_paths] == [
        "benign (195)_mask.png", "benign (195)_mask_1.png", "benign (195)_mask_2.png"]
    assert sum(len(c.mask_paths) for c in data.cases) == 798
    assert all(c.mask_paths for c in data.cases)


# --------------------------------------------------------------------------- Kaggle layout + merging

def test_kaggle_layout_merges_split_mask_back_exactly(busi_root, make_busi_copy, busi_case_files):
    root = make_busi_copy(["normal (1)", "malignant (53)"], layout="kaggle")
    # A real lesion mask cut into two halves, saved as NAME_mask.png and NAME_mask_1.png.
    lesion_id = "benign (10)"
    image_path, (mask_path,) = busi_case_files(lesion_id)
    full = original_mask(busi_case_files, lesion_id)
    columns = np.flatnonzero(full.any(0))
    cut = (columns[0] + columns[-1]) // 2
    left, right = full.copy(), full.copy()
    left[:, cut:] = False
    right[:, :cut] = False
    assert left.any() and right.any() and not (left & right).any() and np.array_equal(left | right, full)
    (root / "benign").mkdir()
    shutil.copyfile(image_path, root / "benign" / image_path.name)
    Image.fromarray(left).save(root / "benign" / f"{lesion_id}_mask.png")  # mode "1", like the copy
    Image.fromarray(right.astype(np.uint8) * 255).save(root / "benign" / f"{lesion_id}_mask_1.png")  # 0/255 L

    data = load_busi(root)
    assert data.layout == "kaggle"
    assert data.report.problems == []
    assert data.ids == ["normal (1)", "benign (10)", "malignant (53)"]
    case = data.by_id()[lesion_id]
    assert [p.name for p in case.mask_paths] == [f"{lesion_id}_mask.png", f"{lesion_id}_mask_1.png"]

    image = read_grey(case.image_path)
    assert image.shape == full.shape
    merged = read_case_mask(case.mask_paths, image.shape)
    assert merged.dtype == bool
    assert np.array_equal(merged, full)  # native size, pixel for pixel
    assert not np.array_equal(read_case_mask(case.mask_paths[:1], image.shape), full)

    # The two real masks of malignant (53) are merged by OR too.
    m53 = data.by_id()["malignant (53)"]
    assert len(m53.mask_paths) == 2
    assert np.array_equal(read_case_mask(m53.mask_paths, read_grey(m53.image_path).shape),
                          original_mask(busi_case_files, "malignant (53)"))

    # load_arrays gives the same scan and mask as the untouched bundled files.
    arrays = load_arrays(data, SIZE)
    assert arrays.ids == data.ids
    assert list(arrays.labels) == [CLASSES.index("normal"), CLASSES.index("benign"), CLASSES.index("malignant")]
    expected_image, expected_mask = resize_pair(read_grey(image_path), full, SIZE)
    row = arrays.ids.index(lesion_id)
    assert np.array_equal(arrays.images[row], expected_image)
    assert np.array_equal(arrays.masks[row], expected_mask)
    assert arrays.masks[row].any()
    assert not arrays.masks[arrays.ids.index("normal (1)")].any()


def test_kaggle_and_bundled_copies_decode_identically(busi_root, make_busi_copy):
    ids = ["normal (2)", "benign (4)", "malignant (1)"]  # benign (4) has an RGBA-born extra mask
    bundled = load_busi(make_busi_copy(ids, "bundled", name="bundled"))
    kaggle = load_busi(make_busi_copy(ids, "kaggle", name="kaggle"))
    assert (bundled.layout, kaggle.layout) == ("bundled", "kaggle")
    assert bundled.ids == kaggle.ids == ["normal (2)", "benign (4)", "malignant (1)"]
    a, b = load_arrays(bundled, SIZE), load_arrays(kaggle, SIZE)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert a.masks[1].any() and a.masks[2].any() and not a.masks[0].any()


# --------------------------------------------------------------------------- mask of another size

def test_mask_of_other_size_is_resized_nearest_and_binarised(busi_root, tmp_path, busi_case_files):
    lesion_id = "benign (10)"
    image_path, _ = busi_case_files(lesion_id)
    full = original_mask(busi_case_files, lesion_id)
    height, width = full.shape
    # Half-size, two grey levels: lesion 200, background 30, and one ring exactly at their midpoint, 115.
    small_size = (width // 2, height // 2)
    small = np.asarray(Image.fromarray(full.astype(np.uint8) * 255).resize(small_size, Image.Resampling.NEAREST)) > 127
    grey = np.where(small, 200, 30).astype(np.uint8)
    grey[0, :] = 115  # exactly at the threshold: must count as background
    mask_file = tmp_path / "small_mask.png"
    Image.fromarray(grey).save(mask_file)

    merged = read_case_mask((mask_file,), (height, width))
    assert merged.shape == (height, width) and merged.dtype == bool
    expected = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.NEAREST)) > 115
    assert np.array_equal(merged, expected)
    assert not merged[:2].any()
    # Nearest-neighbour upsampling of a nearest-neighbour downsample stays close to the original.
    iou = (merged & full).sum() / (merged | full).sum()
    assert iou > 0.95
    # Values are a plain OR with another (full-size) mask file.
    both = read_case_mask((mask_file, busi_case_files(lesion_id)[1][0]), (height, width))
    assert np.array_equal(both, merged | full)

    # Through the loader: a copy whose mask file is the half-size one.
    root = tmp_path / "busi"
    (root / "benign" / "images").mkdir(parents=True)
    (root / "benign" / "masks").mkdir(parents=True)
    shutil.copyfile(image_path, root / "benign" / "images" / image_path.name)
    shutil.copyfile(mask_file, root / "benign" / "masks" / f"{lesion_id}_mask.png")
    data = load_busi(root)
    arrays = load_arrays(data, SIZE)
    _, expected_small = resize_pair(read_grey(image_path), expected, SIZE)
    assert arrays.masks.dtype == bool
    assert np.array_equal(arrays.masks[0], expected_small)


# --------------------------------------------------------------------------- load report

@pytest.mark.parametrize("layout", ["bundled", "kaggle"])
def test_load_report_lists_problems_and_the_rest_loads(busi_root, make_busi_copy, isolated_env, layout):
    ids = ["normal (3)", "benign (11)", "benign (12)", "malignant (2)", "malignant (3)"]
    root = make_busi_copy(ids, layout)
    image_dir = (lambda label: root / label / "images") if layout == "bundled" else (lambda label: root / label)
    mask_dir = (lambda label: root / label / "masks") if layout == "bundled" else (lambda label: root / label)

    (mask_dir("benign") / "benign (11)_mask.png").unlink()  # missing mask
    corrupt = image_dir("malignant") / "malignant (2).png"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # truncated PNG
    stray_file = image_dir("normal") / "notes.txt"
    stray_file.write_text("not a scan")
    stray_folder = image_dir("benign") / "thumbnails"
    stray_folder.mkdir()
    (stray_folder / "benign (12).png").write_bytes(b"")
    top_folder = root / "other"
    top_folder.mkdir()
    top_file = root / "download.log"
    top_file.write_text("log")

    data = load_busi(root)
    problems = {(Path(p.path).name, p.kind) for p in data.report.problems}
    assert problems == {
        ("benign (11).png", "missing-mask"),
        ("notes.txt", "stray-file"),
        ("thumbnails", "stray-folder"),
        ("other", "stray-folder"),
        ("download.log", "stray-file"),
    }
    assert all(p.message for p in data.report.problems)
    # Indexing reads no pixels: every scan is still listed, the one without a mask too.
    assert data.ids == ["normal (3)", "benign (11)", "benign (12)", "malignant (2)", "malignant (3)"]
    assert data.by_id()["benign (11)"].mask_paths == ()

    arrays = load_arrays(data, SIZE)
    assert kinds(data.report)["unreadable"] == 1
    (unreadable,) = data.report.by_kind("unreadable")
    assert Path(unreadable.path) == corrupt
    assert arrays.ids == data.ids == ["normal (3)", "benign (11)", "benign (12)", "malignant (3)"]
    assert len(arrays.images) == len(arrays.masks) == len(arrays.labels) == 4
    assert list(arrays.labels) == [0, 1, 1, 2]
    assert not arrays.masks[1].any()  # loaded with an empty mask
    assert arrays.masks[2].any() and arrays.masks[3].any()
    assert all(arrays.images[n].std() > 5 for n in range(4))  # real pixels, not the zero placeholder
    # A load with unreadable files is not cached, so the next load tries them again.
    assert not list(isolated_env.cache.glob("busi-*.npz"))


def test_stray_folder_in_bundled_class_folder_is_a_stray_folder(make_busi_copy):
    root = make_busi_copy(["benign (11)"], "bundled")
    (root / "benign" / "extras").mkdir()
    data = load_busi(root)
    assert [(Path(p.path).name, p.kind) for p in data.report.problems] == [("extras", "stray-folder")]


def test_clean_copy_is_cached_and_reused(make_busi_copy, isolated_env):
    root = make_busi_copy(["normal (3)", "benign (11)"], "kaggle")
    first = load_arrays(load_busi(root), SIZE)
    (cached,) = isolated_env.cache.glob(f"scans-{SIZE}-*.npz")
    again = load_arrays(load_busi(root), SIZE)
    assert again.ids == first.ids
    assert np.array_equal(again.images, first.images) and np.array_equal(again.masks, first.masks)
    # A damaged cache file is rebuilt rather than trusted.
    cached.write_bytes(b"not a zip")
    rebuilt = load_arrays(load_busi(root), SIZE)
    assert np.array_equal(rebuilt.images, first.images)


# --------------------------------------------------------------------------- find_data_root

def test_find_data_root_error_names_every_place(tmp_path, monkeypatch):
    missing_shared = tmp_path / "nowhere" / "Dataset_BUSI_with_GT"
    missing_bundled = tmp_path / "no-bundled" / "busi" / "Dataset_BUSI_with_GT"
    monkeypatch.setattr(data_module, "SHARED_COPY", missing_shared)
    monkeypatch.setattr(data_module, "BUNDLED_COPY", missing_bundled)
    monkeypatch.delenv("IMAGEMASKNET_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as error:
        find_data_root()
    message = str(error.value)
    assert "IMAGEMASKNET_DATA" in message
    assert "./data/Dataset_BUSI_with_GT" in message
    assert str(missing_shared) in message
    assert str(missing_bundled) in message and "git checkout -- data/busi" in message
    with pytest.raises(DatasetNotFoundError):
        load_busi()

    # A set-but-wrong IMAGEMASKNET_DATA is named with its path.
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(tmp_path / "typo"))
    with pytest.raises(DatasetNotFoundError, match="typo"):
        find_data_root()

    # And each place is used when it exists, in order: env, bundled, ./data/…, shared.
    local = tmp_path / "data" / "Dataset_BUSI_with_GT"
    local.mkdir(parents=True)
    assert find_data_root().resolve() == local.resolve()
    missing_bundled.mkdir(parents=True)
    assert find_data_root() == missing_bundled
    env_dir = tmp_path / "elsewhere"
    env_dir.mkdir()
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(env_dir))
    assert find_data_root() == env_dir
    with pytest.raises(DatasetNotFoundError, match="not found"):
        find_data_root(tmp_path / "explicit-missing")
    # An existing folder without class folders is refused with a clear message.
    with pytest.raises(DatasetNotFoundError, match="holds no BUSI images"):
        load_busi(env_dir)


def test_find_data_root_falls_back_to_shared_copy(busi_root, tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "SHARED_COPY", busi_root)
    monkeypatch.setattr(data_module, "BUNDLED_COPY", tmp_path / "no-bundled-copy")
    monkeypatch.chdir(tmp_path)
    assert find_data_root() == busi_root


# --------------------------------------------------------------------------- CSV manifests

def test_labelled_csv_reports_bad_rows_and_keeps_patients(busbra_root, tmp_path):
    with open(busbra_root / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    benign = [r for r in rows if r["pathology"] == "benign"][:2]
    malignant = [r for r in rows if r["pathology"] == "malignant"][:2]
    good = [benign[0], malignant[0], benign[1], malignant[1]]
    for row in good:
        for column in ("image", "mask"):
            target = tmp_path / row[column]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(busbra_root / row[column], target)
    unknown = {**good[0], "pathology": "BI-RADS 4"}
    missing = {**good[1], "image": "images/not_there.png"}
    duplicate = dict(good[2])
    written = [good[0], good[1], unknown, good[2], missing, duplicate, good[3]]
    manifest = tmp_path / "external.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(written)

    data = load_labelled_csv(manifest)
    assert data.layout == "csv"
    # Rows are numbered as in a spreadsheet: header is line 1.
    assert {(p.path, p.kind) for p in data.report.problems} == {
        ("external.csv:4", "unknown-label"),
        ("external.csv:6", "missing-file"),
        ("external.csv:7", "duplicate-row"),
    }
    assert [c.id for c in data.cases] == [Path(r["image"]).stem for r in good]
    assert [c.label for c in data.cases] == [r["pathology"] for r in good]
    assert [c.patient for c in data.cases] == [r["patient"] for r in good]
    assert all(c.patient for c in data.cases)
    assert [c.mask_paths[0].name for c in data.cases] == [Path(r["mask"]).name for r in good]

    # load_dataset dispatches a file to the CSV reader; the pixels decode with their (non-empty) masks.
    again = load_dataset(manifest)
    assert [c.id for c in again.cases] == [c.id for c in data.cases]
    arrays = load_arrays(again, SIZE)
    assert arrays.ids == [c.id for c in data.cases]
    assert all(arrays.masks[n].any() for n in range(len(good)))
    assert list(arrays.labels) == [CLASSES.index(r["pathology"]) for r in good]


def test_labelled_csv_without_required_columns_is_refused(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("file,class\na.png,benign\n")
    with pytest.raises(DatasetNotFoundError, match="image,label"):
        load_labelled_csv(manifest)
