"""A site's own labelled scans, end to end: both forms (class folders, CSV manifest) built from real
BUS-BRA scans in a temporary folder, with bad entries; `imagemasknet evaluate --data` with the
suggested malignant-probability threshold and the saved site threshold; and training with
`--data … --data-mode add|replace`, patient-aware.

BUS-BRA is the project's external test set (its README forbids training, tuning or choosing
thresholds on it for any reported result), so the threshold chosen on it here lives only in a
temporary runs folder, and the training tests use BUSI scans as the "own" data instead.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import imagemasknet.evaluation.evaluate as evaluate_module
from imagemasknet import cli
from imagemasknet.core.files import file_sha256, read_json
from imagemasknet.core.paths import runs_root
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.dataset import CLASSES, load_arrays
from imagemasknet.data.owndata import load_dataset
from imagemasknet.data.owndata import OWN_SOURCE
from imagemasknet.data.sources import load_training_set
from imagemasknet.data.splits import inner_validation, load_folds, resolve_split
from imagemasknet.evaluation.decision import GIVEN_LESION, malignant_given_lesion
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.evaluation.metrics import softmax
from imagemasknet.inference.predictor import Predictor
from imagemasknet.evaluation.site_threshold import (choose_threshold, load_site_threshold, site_operating_point,
                                                    site_threshold_mismatch)
from imagemasknet.models import get_spec
from imagemasknet.models.weights import load_model

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights" / "lesion-resunet" / "model.safetensors"
N_EACH = 8


def threshold_of(*args, **kwargs) -> float | None:
    point = site_operating_point(*args, **kwargs)
    return point and point["threshold"]


# --------------------------------------------------------------------------- building own data

def busbra_rows(busbra_root: Path, n_each: int = N_EACH) -> list[dict]:
    with open(busbra_root / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r for c in ("benign", "malignant") for r in [r for r in rows if r["pathology"] == c][::20][:n_each]]


def class_folders(busbra_root: Path, dest: Path) -> Path:
    """benign/ and malignant/ (no normal/: two classes are enough), each scan with NAME_mask.png beside
    it; plus an unknown class folder and a stray file, which are reported, not fatal."""
    for row in busbra_rows(busbra_root):
        folder = dest / row["pathology"]
        folder.mkdir(parents=True, exist_ok=True)
        image = busbra_root / row["image"]
        shutil.copyfile(image, folder / image.name)
        shutil.copyfile(busbra_root / row["mask"], folder / f"{image.stem}_mask.png")
    (dest / "unsure").mkdir()
    shutil.copyfile(busbra_root / row["image"], dest / "unsure" / "second-opinion.png")
    (dest / "notes.txt").write_text("exported from the PACS on Monday\n")
    return dest


def csv_manifest(busbra_root: Path, dest: Path) -> Path:
    """images/ and masks/ with site.csv (image,label,mask,patient); after the 16 good rows, one row
    with an unknown label, one naming a missing file and one repeating a scan."""
    rows = busbra_rows(busbra_root)
    lines = []
    for row in rows:
        for column in ("image", "mask"):
            (dest / row[column]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(busbra_root / row[column], dest / row[column])
        lines.append({"image": row["image"], "label": row["pathology"], "mask": row["mask"],
                      "patient": f"P{row['patient']}"})
    lines.append({**lines[0], "label": "BI-RADS 3"})
    lines.append({**lines[1], "image": "images/not-exported.png"})
    lines.append(dict(lines[2]))
    manifest = dest / "site.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "mask", "patient"])
        writer.writeheader()
        writer.writerows(lines)
    return manifest


@pytest.fixture(params=["folders", "csv"])
def own_data(request, busbra_root, tmp_path) -> tuple[str, Path]:
    if request.param == "folders":
        return "folders", class_folders(busbra_root, tmp_path / "clinic-scans")
    return "csv", csv_manifest(busbra_root, tmp_path / "clinic-export")


def test_both_forms_load_with_bad_entries_reported(own_data):
    form, path = own_data
    data = load_dataset(path)
    assert len(data.cases) == 2 * N_EACH
    assert {c.label for c in data.cases} == {"benign", "malignant"}
    assert all(len(c.mask_paths) == 1 for c in data.cases)
    kinds = sorted(p.kind for p in data.report.problems)
    if form == "folders":
        assert kinds == ["stray-file", "stray-folder"]
        assert all(c.patient is None for c in data.cases)
    else:
        assert kinds == ["duplicate-row", "missing-file", "unknown-label"]
        assert all(c.patient and c.patient.startswith("P") for c in data.cases)


def test_scans_sharing_a_name_in_two_class_folders_get_distinct_ids(busbra_root, tmp_path):
    root = class_folders(busbra_root, tmp_path / "scans")
    clash = next((root / "benign").glob("bus_*[!k].png"))
    shutil.copyfile(clash, root / "malignant" / clash.name)
    data = load_dataset(root)
    assert len(set(data.ids)) == len(data.ids) == 2 * N_EACH + 1
    assert f"benign/{clash.stem}" in data.ids and f"malignant/{clash.stem}" in data.ids


# --------------------------------------------------------------------------- evaluate --data

def test_evaluate_own_data_end_to_end(own_data, tmp_path, isolated_env, monkeypatch, capsys):
    form, path = own_data
    seen_clusters = []
    real = evaluate_module.evaluate_model

    def spy(*args, **kwargs):
        seen_clusters.append(kwargs.get("clusters"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_model", spy)
    out = tmp_path / "report.json"
    assert cli.main(["evaluate", "--weights", str(WEIGHTS), "--arch", "lesion-resunet", "--data", str(path),
                     "--json", str(out), "--resamples", "50", "--device", "cpu", "--save-threshold"]) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["n"] == 2 * N_EACH and set(result["modes"]) == {"image", "mask"}
    # Patient-clustered bootstrap exactly when patients are given.
    if form == "csv":
        assert seen_clusters[0] is not None and len(set(seen_clusters[0])) == 2 * N_EACH
    else:
        assert seen_clusters[0] is None
    # The bad entries were reported on stderr, and the run went on.
    assert printed.err.count("warning:") >= (3 if form == "csv" else 2)

    data = load_dataset(path)
    arrays = load_arrays(data, 256)
    card = read_json(WEIGHTS.with_suffix(".json"))
    model = load_model("lesion-resunet", WEIGHTS, 256, "cpu")
    for mode, report in result["modes"].items():
        assert report["metrics"]["accuracy"]["ci_low"] <= report["metrics"]["accuracy"]["value"] <= \
            report["metrics"]["accuracy"]["ci_high"]
        lesions = report["lesions"]
        assert lesions["n_lesion_scans"] == 2 * N_EACH and 0 <= lesions["benign_vs_malignant_auc"] <= 1
        assert 0 <= lesions["lesions_called_normal"] <= 1
        point = report["operating_point"]
        assert point["target_sensitivity"] == 0.95 and point["n_malignant"] == N_EACH and point["n_benign"] == N_EACH
        # Recomputed here from the model's calibrated probabilities: the threshold reaches the
        # sensitivity on the data it was chosen on, and the specificity is what it costs there.
        # In mask mode on the footing the app applies there, P(malignant | a lesion).
        predictions = predict_arrays(model, get_spec("lesion-resunet"), arrays, mode, "cpu")
        calibrated = softmax(predictions.logits, card["temperature"][mode])
        p = malignant_given_lesion(calibrated) if mode == "mask" else calibrated[:, CLASSES.index("malignant")]
        lesion = predictions.labels != CLASSES.index("normal")
        p, malignant = p[lesion], predictions.labels[lesion] == CLASSES.index("malignant")
        assert point["footing"] == (GIVEN_LESION if mode == "mask" else "P(malignant)")
        assert (p[malignant] >= point["threshold"]).mean() >= 0.95
        assert point["sensitivity"] == pytest.approx((p[malignant] >= point["threshold"]).mean())
        assert point["specificity"] == pytest.approx((p[~malignant] < point["threshold"]).mean())
        # ... and it is the highest such threshold: just above it, a malignant scan is missed.
        assert (p[malignant] >= np.nextafter(point["threshold"], 2)).mean() < 0.95
        assert f"{mode}: {point['footing']} >= {point['threshold']:.4f}" in printed.out

    # The report is also a folder the Training page lists, like a run.
    (folder,) = [p for p in runs_root().iterdir() if p.is_dir()]
    assert folder.name.startswith("owndata-site-" if form == "csv" else "owndata-clinic-scans-")
    assert str(folder) in printed.out
    assert json.loads((folder / "metrics.json").read_text()) == result
    assert read_json(folder / "config.json")["data"] == str(path)
    assert read_json(folder / "status.json")["state"] == "finished"
    run = RunFolder(folder)
    assert run.state == "finished" and set(run.metrics["metrics"]["modes"]) == {"image", "mask"}
    assert run.complete and not run.problems  # listed like a finished run, not as an incomplete one

    # The site threshold was saved where the app looks for it.
    site = load_site_threshold()
    assert site is not None and (runs_root() / "site_threshold.json").is_file()
    image_point = result["modes"]["image"]["operating_point"]
    assert site["threshold"] == image_point["threshold"] and site["mode"] == "image"
    assert {"threshold", "sensitivity", "specificity", "data", "model", "date"} <= set(site)
    assert site["data"] == str(path) and site["model"] == "lesion-resunet"
    assert threshold_of("mask") == result["modes"]["mask"]["operating_point"]["threshold"]
    # Each mode quotes its own footing, the sensitivity reached in that mode and the target, not image mode's.
    predictor = Predictor.shipped("lesion-resunet", device="cpu")
    for mode, point in ((m, result["modes"][m]["operating_point"]) for m in ("image", "mask")):
        threshold, source, target = predictor.malignancy_threshold(mode)
        assert (threshold, target) == (point["threshold"], 0.95) and "never lower" not in source
        assert predictor.trust_figures(mode)["tested"] == point["sensitivity"]
    # It applies to the weights it was chosen for, and to no others.
    assert site["weights_sha256"] == file_sha256(WEIGHTS)
    assert threshold_of("image", "lesion-resunet", weights_sha256=file_sha256(WEIGHTS)) == site["threshold"]
    assert threshold_of("image", "imagemasknet2") is None
    assert "the model lesion-resunet" in site_threshold_mismatch(site, "imagemasknet2")
    assert threshold_of("image", "lesion-resunet", weights_sha256="0" * 64) is None
    assert "other weights" in site_threshold_mismatch(site, "lesion-resunet", "0" * 64)


def test_evaluate_own_data_without_masks_leaves_mask_mode_out(busbra_root, tmp_path, capsys):
    root = class_folders(busbra_root, tmp_path / "no-masks")
    for mask in root.rglob("*_mask.png"):
        mask.unlink()
    out = tmp_path / "report.json"
    assert cli.main(["evaluate", "--weights", str(WEIGHTS), "--arch", "lesion-resunet", "--data", str(root),
                     "--json", str(out), "--resamples", "20", "--device", "cpu",
                     "--sensitivity", "0.9", "--save-threshold", str(tmp_path / "site.json")]) == 0
    assert "mask mode left out" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert list(result["modes"]) == ["image"]
    assert result["modes"]["image"]["operating_point"]["target_sensitivity"] == 0.9
    assert load_site_threshold(tmp_path / "site.json")["threshold"] == result["modes"]["image"]["operating_point"]["threshold"]
    assert load_site_threshold() is None  # the default place was left alone


def test_evaluate_a_shipped_model_by_name_uses_its_bundle_and_card(busbra_root, tmp_path):
    """`evaluate --model NAME` scores the bundle the app uses, calibrated by its card, with no paths to type."""
    root = class_folders(busbra_root, tmp_path / "scans")
    by_name, by_file = tmp_path / "by-name.json", tmp_path / "by-file.json"
    common = ["--data", str(root), "--resamples", "20", "--device", "cpu", "--mode", "image"]
    assert cli.main(["evaluate", "--model", "lesion-resunet", "--json", str(by_name), *common]) == 0
    assert cli.main(["evaluate", "--weights", str(WEIGHTS), "--arch", "lesion-resunet", "--json", str(by_file), *common]) == 0
    named, filed = json.loads(by_name.read_text()), json.loads(by_file.read_text())
    assert Path(named["weights"]) == WEIGHTS and named["modes"]["image"]["temperature"] == read_json(
        WEIGHTS.with_suffix(".json"))["temperature"]["image"]
    assert named["modes"] == filed["modes"]
    with pytest.raises(SystemExit, match="no-such-model"):
        cli.main(["evaluate", "--model", "no-such-model", *common])


# --------------------------------------------------------------------------- choosing the threshold

def test_choose_threshold_reaches_the_sensitivity_at_the_highest_threshold():
    rng = np.random.default_rng(0)
    for n_malignant in (1, 7, 20, 40, 101):
        y = np.r_[np.ones(n_malignant, bool), np.zeros(60, bool)]
        p = np.r_[rng.beta(4, 2, n_malignant), rng.beta(2, 4, 60)]
        for target in (0.5, 0.8, 0.9, 0.95, 1.0):
            point = choose_threshold(y, p, target)
            t = point["threshold"]
            assert (p[y] >= t).mean() >= target - 1e-12
            assert point["sensitivity"] == (p[y] >= t).mean()
            assert point["specificity"] == (p[~y] < t).mean()
            higher = p[y][p[y] > t]
            if len(higher):
                assert (p[y] >= higher.min()).mean() < target  # no higher threshold would do
            assert point["malignant_missed"] == (p[y] < t).sum()
            assert point["benign_flagged"] == (p[~y] >= t).sum()
    # 0.95 of 20 is exactly 19 scans, despite floating point (0.95 * 20 = 19.000000000000004).
    y = np.r_[np.ones(20, bool), np.zeros(5, bool)]
    p = np.r_[np.linspace(0.2, 0.99, 20), np.full(5, 0.1)]
    assert choose_threshold(y, p, 0.95)["threshold"] == pytest.approx(p[1])
    # Ties at the threshold are flagged together.
    point = choose_threshold(np.array([1, 1, 1, 0], bool), np.array([0.7, 0.5, 0.5, 0.5]), 0.6)
    assert point["threshold"] == 0.5 and point["sensitivity"] == 1.0 and point["specificity"] == 0.0


def test_choose_threshold_edge_cases():
    point = choose_threshold(np.zeros(4, bool), np.linspace(0, 1, 4))
    assert point["threshold"] is None and "no malignant" in point["note"]
    assert choose_threshold(np.ones(3, bool), np.array([0.2, 0.6, 0.9]), 1.0)["specificity"] is None
    assert "only 3 malignant" in choose_threshold(np.ones(3, bool), np.array([0.2, 0.6, 0.9]))["note"]
    with pytest.raises(ValueError, match="sensitivity"):
        choose_threshold(np.ones(3, bool), np.ones(3), 1.5)


def test_a_missing_or_damaged_site_threshold_is_none(isolated_env):
    assert load_site_threshold() is None and threshold_of("image") is None
    (isolated_env.runs / "site_threshold.json").write_text("{not json")
    assert load_site_threshold() is None and threshold_of("image") is None


# --------------------------------------------------------------------------- training on own data

def busi_csv(busi_root: Path, dest: Path, case_ids: list[str], per_patient: int = 3) -> Path:
    """A CSV manifest of real BUSI cases, every ``per_patient`` consecutive scans given one patient id
    (BUSI has none; the grouping is invented to exercise patient-aware splits)."""
    dest.mkdir(parents=True)
    lines = []
    for n, case_id in enumerate(case_ids):
        label = case_id.split(" (")[0]
        image = busi_root / label / "images" / f"{case_id}.png"
        mask = busi_root / label / "masks" / f"{case_id}_mask.png"
        shutil.copyfile(image, dest / f"scan{n:03d}.png")
        shutil.copyfile(mask, dest / f"scan{n:03d}_mask.png")
        lines.append(f"scan{n:03d}.png,{label},scan{n:03d}_mask.png,site-{n // per_patient}\n")
    manifest = dest / "labels.csv"
    manifest.write_text("image,label,mask,patient\n" + "".join(lines))
    return manifest


def own_case_ids() -> list[str]:
    folds = load_folds()
    return [i for i in folds[2][::8] if not i.startswith("normal")][:30]


def test_replace_builds_patient_aware_folds_on_the_fly(busi_root, tmp_path):
    manifest = busi_csv(busi_root, tmp_path / "site", own_case_ids())
    data = load_training_set(data=str(manifest), mode="replace")
    patient = {c.id: c.patient for c in data.cases}
    tests = []
    for fold in range(5):
        train_ids, test_ids = resolve_split(data, fold, None)
        assert test_ids and sorted(train_ids + test_ids) == sorted(data.ids)
        assert not {patient[i] for i in train_ids} & {patient[i] for i in test_ids}
        inner, val = inner_validation(train_ids, data, 0.25, seed=0)
        assert val and not {patient[i] for i in inner} & {patient[i] for i in val}
        tests += test_ids
    assert sorted(tests) == sorted(data.ids)  # the five test folds partition the data


def test_train_add_and_replace_from_the_command_line(busi_root, make_busi_copy, tmp_path, monkeypatch):
    folds = load_folds()
    small_busi = make_busi_copy(folds[0][::25] + folds[1][::25], "bundled", name="busi-small")
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(small_busi))  # "BUSI" for --data-mode add
    manifest = busi_csv(busi_root, tmp_path / "site", own_case_ids())
    common = ["--arch", "lesion-resunet", "--epochs", "1", "--image-size", "64", "--batch-size", "8",
              "--device", "cpu", "--no-progress", "--fold", "0", "--val-fraction", "0.2"]

    added = tmp_path / "run-add"
    assert cli.main(["train", *common, "--data", str(manifest), "--data-mode", "add", "--out-dir", str(added)]) == 0
    config, split = read_json(added / "config.json"), read_json(added / "split.json")
    assert config["data"] == str(manifest) and config["data_mode"] == "add"
    own = {f"{OWN_SOURCE}:{c.id}": c.patient for c in load_dataset(manifest).cases}
    # The site's scans are a source of their own: folded by patient like the others, so fold 0 tests some.
    assert set(own) <= set(split["train"]) | set(split["validation"]) | set(split["test"])
    own_test = {i for i in split["test"] if i in own}
    assert own_test and set(split["test"]) - own_test <= set(folds[0])  # BUSI's part is BUSI's fold 0
    parts = [{own[i] for i in split[k] if i in own} for k in ("train", "validation", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])  # patients kept whole
    assert read_json(added / "status.json")["state"] == "finished"
    # evaluate --run rebuilds the same BUSI + own data.
    out = tmp_path / "added.json"
    assert cli.main(["evaluate", "--run", str(added), "--resamples", "10", "--json", str(out), "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["n"] == len(split["test"])

    replaced = tmp_path / "run-replace"
    assert cli.main(["train", *common, "--data", str(manifest), "--data-mode", "replace",
                     "--out-dir", str(replaced)]) == 0
    split = read_json(replaced / "split.json")
    patient = {c.id: c.patient for c in load_dataset(manifest).cases}
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(patient)
    assert split["test"], "fold 0 of folds built on the fly by patient"
    parts = [{patient[i] for i in split[k]} for k in ("train", "validation", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])

    with pytest.raises(SystemExit):
        cli.main(["train", *common, "--data", str(manifest), "--data-mode", "sideways"])
