"""Distillation: the loss that blends labels with a teacher's probabilities, the soft-target table a run reads
(checked, not trusted), and a run trained on one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imagemasknet import cli
from imagemasknet.core.files import file_sha256, read_json
from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import CLASSES, load_arrays
from imagemasknet.models import get_spec
from imagemasknet.models.bundle import write_out_of_fold
from imagemasknet.models.weights import load_model
from imagemasknet.training.config import TrainConfig
from imagemasknet.training.soft_targets import SoftTargetError, batch_targets, load_soft_targets
from imagemasknet.training.step import TrainingStep
from imagemasknet.training.trainer import train

SIZE = 64
MODES = ("image", "mask")
SPEC = get_spec("lesion-resunet")


def config(busi_root: Path, **overrides) -> TrainConfig:
    values = dict(arch="lesion-resunet", epochs=1, limit=24, fold=0, image_size=SIZE, seed=0, data=str(busi_root),
                  device="cpu", num_workers=0, label_smoothing=0.0)
    return TrainConfig.from_dict({**values, **overrides})


@pytest.fixture(scope="module")
def busi(busi_root):
    return load_busi(busi_root)


def table_rows(busi, ids: list[str], probabilities) -> list[dict]:
    """Out-of-fold rows for ``ids``: ``probabilities(n, case)`` → mode → class → value."""
    cases = busi.by_id()
    return [{"id": i, "source": "busi", "sha256": file_sha256(cases[i].image_path)[:16], "label": cases[i].label,
             "fold": None, "probabilities": probabilities(n, cases[i])} for n, i in enumerate(ids)]


def teacher_of(n: int, case) -> dict:
    """A teacher whose two modes differ and whose probabilities differ from scan to scan."""
    first = 0.2 + 0.1 * (n % 5)
    return {"image": dict(zip(CLASSES, (first, 0.9 - first, 0.1))), "mask": dict(zip(CLASSES, (0.1, 0.3, 0.6)))}


def write_table(path: Path, rows: list[dict]) -> Path:
    write_out_of_fold(path, "teacher", rows)
    return path


# --------------------------------------------------------------------------- the loss

@pytest.fixture(scope="module")
def batch(busi, shared_cache_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
        arrays = load_arrays(busi, SIZE)
    rows = [n for k in range(len(CLASSES)) for n in np.flatnonzero(arrays.labels == k)[:2]]
    return (torch.from_numpy(arrays.images[rows]).unsqueeze(1), torch.from_numpy(arrays.masks[rows]).unsqueeze(1),
            torch.from_numpy(arrays.labels[rows]))


@pytest.fixture(scope="module")
def shipped_model():
    # Confident answers make the loss depend on the targets; eval mode for fixed batch-norm statistics.
    return load_model(SPEC.name, Path(__file__).resolve().parent.parent / "weights" / SPEC.name / "model.safetensors",
                      image_size=SIZE).eval()


def test_the_loss_is_the_label_loss_and_the_teacher_cross_entropy_in_the_distill_weights_shares(
        busi_root, batch, shipped_model):
    images, masks, y = batch
    teacher = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])[torch.arange(len(y)) % 3]
    class_weight = torch.tensor([2.0, 0.7, 1.3])
    with torch.no_grad():
        for weight in (0.0, 0.3, 1.0):
            step = TrainingStep(shipped_model, SPEC, config(busi_root, distill_weight=weight, segmentation_weight=0.0),
                                class_weight)
            loss, logits = step(images, masks, y, "image", teacher=teacher)
            scan = class_weight[y]
            label_part = (scan * F.cross_entropy(logits, y, reduction="none")).sum()
            teacher_part = (scan * -(teacher * F.log_softmax(logits, 1)).sum(1)).sum()
            expected = ((1 - weight) * label_part + weight * teacher_part) / scan.sum()
            assert loss.item() == pytest.approx(expected.item(), rel=1e-5), weight
        # A teacher that is the labels themselves teaches what the labels do, whatever its share.
        assert step(images, masks, y, "image", teacher=torch.eye(3)[y])[0].item() == pytest.approx(
            step(images, masks, y, "image")[0].item(), rel=1e-5)
        # The check can fail: the teacher's probabilities move the loss.
        assert loss.item() != pytest.approx(step(images, masks, y, "image")[0].item(), rel=1e-3)


def test_mixup_blends_the_teachers_probabilities_with_their_scans(busi_root, batch, shipped_model):
    images, masks, y = batch
    teacher = torch.softmax(torch.arange(len(y) * 3, dtype=torch.float32).reshape(len(y), 3).sin() * 3, 1)
    order = torch.tensor([3, 5, 4, 0, 1, 2])
    step = TrainingStep(shipped_model, SPEC, config(busi_root, distill_weight=0.5))
    with torch.no_grad():
        in_order = step(images[order], masks[order], y[order], "mask", teacher=teacher[order])[0].item()
        assert step(images, masks, y, "mask", mix=(order, 0.0), teacher=teacher)[0].item() == pytest.approx(in_order, rel=1e-5)
        assert step(images[order], masks[order], y[order], "mask", teacher=teacher)[0].item() != pytest.approx(in_order, rel=1e-3)


def test_each_scan_learns_from_the_teachers_probabilities_for_the_mode_it_is_trained_in():
    targets = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], [[0.3, 0.3, 0.4], [0.5, 0.4, 0.1]]])
    items = torch.tensor([1, 0])
    assert torch.equal(batch_targets(targets, items, MODES, "image", None), targets[[1, 0], 0])
    assert torch.equal(batch_targets(targets, items, MODES, "mask", None), targets[[1, 0], 1])
    given = torch.tensor([True, False])
    assert torch.equal(batch_targets(targets, items, MODES, "mask", given),
                       torch.stack([targets[1, 1], targets[0, 0]]))


# --------------------------------------------------------------------------- the table

def test_a_table_gives_each_training_scan_its_teachers_probabilities_in_the_runs_order(busi, tmp_path):
    ids = busi.ids[::40]
    table = write_table(tmp_path / "targets.json", table_rows(busi, ids[::-1], teacher_of))
    targets = load_soft_targets(table, busi, ids, MODES)
    assert targets.shape == (len(ids), 2, 3)
    for n, image_id in enumerate(ids):
        expected = teacher_of(len(ids) - 1 - n, None)
        assert targets[n, 0] == pytest.approx([expected["image"][c] for c in CLASSES], abs=1e-6)
        assert targets[n, 1] == pytest.approx([expected["mask"][c] for c in CLASSES], abs=1e-6)


def damaged(rows: list[dict], how: str) -> list[dict] | str:
    rows = json.loads(json.dumps(rows))
    if how == "missing scan":
        return rows[1:]
    if how == "twice":
        return rows + rows[:1]
    if how == "other label":
        rows[0]["label"] = next(c for c in CLASSES if c != rows[0]["label"])
    elif how == "other file":
        rows[0]["sha256"] = "0" * 16
    elif how == "no mask mode":
        for row in rows:
            del row["probabilities"]["mask"]
    elif how == "not probabilities":
        rows[0]["probabilities"]["image"]["normal"] = 0.9
    elif how == "not a number":
        rows[0]["probabilities"]["image"]["normal"] = float("nan")
    return rows


@pytest.mark.parametrize("how, words", [
    ("missing scan", "no teacher prediction for 1 of the run's"), ("twice", "twice"), ("other label", "other data"),
    ("other file", "checksum"), ("no mask mode", "no mask-mode probabilities"),
    ("not probabilities", "sum to one"), ("not a number", "sum to one")])
def test_a_table_that_cannot_teach_the_run_is_refused_naming_the_file_and_the_fix(busi, tmp_path, how, words):
    ids = busi.ids[::40]
    table = write_table(tmp_path / "targets.json", damaged(table_rows(busi, ids, teacher_of), how))
    with pytest.raises(SoftTargetError, match=words) as refusal:
        load_soft_targets(table, busi, ids, MODES)
    assert str(table) in str(refusal.value)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"columns": ["id"], "rows": [[1, 2]]}), ""])
def test_a_file_that_is_no_table_is_refused(busi, tmp_path, content):
    table = tmp_path / "targets.json"
    table.write_text(content)
    with pytest.raises(SoftTargetError, match="cannot read the soft-target table"):
        load_soft_targets(table, busi, busi.ids[:3], MODES)


# --------------------------------------------------------------------------- a run

def test_a_run_learns_from_its_soft_targets_and_records_the_table(busi, busi_root, shared_cache, tmp_path):
    uniform = {m: dict.fromkeys(CLASSES, 1 / 3) for m in MODES}
    table = write_table(tmp_path / "targets.json", table_rows(busi, busi.ids, lambda n, case: uniform))
    plain = train(config(busi_root, out_dir=str(tmp_path / "plain")), progress=False)
    taught = train(config(busi_root, out_dir=str(tmp_path / "taught"), soft_targets=str(table), distill_weight=1.0),
                   progress=False)
    assert read_json(taught / "config.json")["soft_targets"] == str(table)
    assert read_json(taught / "status.json")["state"] == "finished"
    plain_loss, taught_loss = (read_json(run / "history.json")[0]["train"]["loss"] for run in (plain, taught))
    # Taught only by a teacher that knows nothing, the run trains on another loss than the labels'.
    assert taught_loss != pytest.approx(plain_loss, rel=1e-3)


def test_lesion_free_crops_learn_their_label_beside_the_taught_scans(busi, busi_root, shared_cache, tmp_path):
    table = write_table(tmp_path / "targets.json", table_rows(busi, busi.ids, teacher_of))
    run = train(config(busi_root, out_dir=str(tmp_path / "crops"), soft_targets=str(table), normal_crops=0.5,
                       arch="lesion-resunet"), progress=False)
    assert read_json(run / "status.json")["state"] == "finished"


def test_train_refuses_a_table_missing_training_scans_before_making_a_run_folder(busi, busi_root, shared_cache,
                                                                                 tmp_path, capsys):
    table = write_table(tmp_path / "targets.json", table_rows(busi, busi.ids[:5], teacher_of))
    out = tmp_path / "run"
    code = cli.main(["train", "--arch", "lesion-resunet", "--epochs", "1", "--limit", "24", "--image-size", str(SIZE),
                     "--data", str(busi_root), "--device", "cpu", "--soft-targets", str(table), "--out-dir", str(out),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no teacher prediction for" in err and str(table) in err and "Traceback" not in err
    assert not out.exists()


def test_the_teachers_table_of_a_finished_run_is_what_training_reads(busi, busi_root, shared_cache, tmp_path):
    """A run on a split file predicts its test scans into a table (benchmarks/distillation.py's teachers), and that
    table teaches a run whose training scans are those test scans."""
    from imagemasknet.ops.release import out_of_fold

    ids = busi.ids[::20]
    halves = {"train": ids[::2], "test": ids[1::2]}
    split = tmp_path / "half.json"
    split.write_text(json.dumps(halves))
    teacher = train(config(busi_root, out_dir=str(tmp_path / "teacher"), split_file=str(split), limit=None),
                    progress=False)
    rows = out_of_fold([teacher], familiarity=False)
    assert [r["id"] for r in rows] == halves["test"] and {r["fold"] for r in rows} == {None}
    assert all("familiarity" not in r for r in rows)
    table = write_table(tmp_path / "targets.json", rows)
    targets = load_soft_targets(table, busi, halves["test"], MODES)
    assert np.allclose(targets.sum(2), 1.0)
    with pytest.raises(SoftTargetError, match="no teacher prediction"):
        load_soft_targets(table, busi, halves["train"], MODES)
    shutil.rmtree(teacher)
