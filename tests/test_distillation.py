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
from imagemasknet.ops.release import out_of_fold
from imagemasknet.training import trainer as train_module
from imagemasknet.training.config import TrainConfig
from imagemasknet.training.soft_targets import SoftTargetError, load_soft_targets
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
    image_teacher = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])[torch.arange(len(y)) % 3]
    teacher = torch.stack([image_teacher, image_teacher.flip(1)], 1)  # [scans, modes, classes]
    class_weight = torch.tensor([2.0, 0.7, 1.3])
    with torch.no_grad():
        for weight in (0.0, 0.3, 1.0):
            step = TrainingStep(shipped_model, SPEC, config(busi_root, distill_weight=weight, segmentation_weight=0.0),
                                class_weight)
            loss, logits = step(images, masks, y, "image", teacher=teacher)
            scan = class_weight[y]
            label_part = (scan * F.cross_entropy(logits, y, reduction="none")).sum()
            teacher_part = (scan * -(image_teacher * F.log_softmax(logits, 1)).sum(1)).sum()
            expected = ((1 - weight) * label_part + weight * teacher_part) / scan.sum()
            assert loss.item() == pytest.approx(expected.item(), rel=1e-5), weight
        # A teacher that is the labels themselves teaches what the labels do, whatever its share.
        as_labels = torch.eye(3)[y][:, None].repeat(1, 2, 1)
        assert step(images, masks, y, "image", teacher=as_labels)[0].item() == pytest.approx(
            step(images, masks, y, "image")[0].item(), rel=1e-5)
        # The check can fail: the teacher's probabilities move the loss.
        assert loss.item() != pytest.approx(step(images, masks, y, "image")[0].item(), rel=1e-3)


def test_mixup_blends_the_teachers_probabilities_with_their_scans(busi_root, batch, shipped_model):
    images, masks, y = batch
    teacher = torch.softmax(torch.arange(len(y) * 6, dtype=torch.float32).reshape(len(y), 2, 3).sin() * 3, 2)
    order = torch.tensor([3, 5, 4, 0, 1, 2])
    step = TrainingStep(shipped_model, SPEC, config(busi_root, distill_weight=0.5))
    with torch.no_grad():
        in_order = step(images[order], masks[order], y[order], "mask", teacher=teacher[order])[0].item()
        assert step(images, masks, y, "mask", mix=(order, 0.0), teacher=teacher)[0].item() == pytest.approx(in_order, rel=1e-5)
        assert step(images[order], masks[order], y[order], "mask", teacher=teacher)[0].item() != pytest.approx(in_order, rel=1e-3)


def test_each_example_learns_from_the_teacher_of_the_mode_it_is_trained_in(busi_root, batch, shipped_model):
    """Each example takes its teacher's row for the mode drawn for its place in the batch; a blend of two scans
    takes both scans' rows for that mode, not the partner's own."""
    images, masks, y = batch
    image_rows = torch.softmax(torch.arange(len(y) * 3, dtype=torch.float32).reshape(len(y), 3).cos() * 3, 1)
    mask_rows = image_rows.roll(1, 1)
    teacher = torch.stack([image_rows, mask_rows], 1)
    given = torch.tensor([True, False, True, True, False, False])
    order = torch.tensor([3, 5, 4, 0, 1, 2])
    step = TrainingStep(shipped_model, SPEC, config(busi_root, distill_weight=1.0, segmentation_weight=0.0))

    def cross_entropy(rows, logits):
        return -(rows * F.log_softmax(logits, 1)).sum(1)

    with torch.no_grad():
        own = torch.where(given[:, None], mask_rows, image_rows)
        loss, logits = step(images, masks, y, "mask", given, None, teacher)
        assert loss.item() == pytest.approx(cross_entropy(own, logits).mean().item(), rel=1e-5)
        loss, logits = step(images, masks, y, "mask", given, (order, 0.7), teacher)
        partner = torch.where(given[:, None], mask_rows[order], image_rows[order])
        expected = 0.7 * cross_entropy(own, logits) + 0.3 * cross_entropy(partner, logits)
        assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
        # The check can fail: the partner's rows in the partner's own mode give another loss.
        partners_mode = torch.where(given[order][:, None], mask_rows[order], image_rows[order])
        other = 0.7 * cross_entropy(own, logits) + 0.3 * cross_entropy(partners_mode, logits)
        assert loss.item() != pytest.approx(other.mean().item(), rel=1e-4)


# --------------------------------------------------------------------------- the table

def test_a_table_gives_each_training_scan_its_teachers_probabilities_in_the_runs_order(busi, tmp_path):
    ids = busi.ids[::40]
    table = write_table(tmp_path / "targets.json", table_rows(busi, ids[::-1], teacher_of))
    loaded = load_soft_targets(table, busi, ids, [], MODES)
    targets = loaded.probabilities
    assert targets.shape == (len(ids), 2, 3) and loaded.table == table.read_bytes()
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
    elif how == "true":
        rows[0]["probabilities"]["image"]["normal"] = True
    elif how == "id not text":
        rows[0]["id"] = [rows[0]["id"]]
    return rows


@pytest.mark.parametrize("how, words", [
    ("missing scan", "no teacher prediction for 1 of the run's"), ("twice", "twice"), ("other label", "other data"),
    ("other file", "checksum"), ("no mask mode", "no mask-mode probabilities"),
    ("not probabilities", "sum to one"), ("not a number", "sum to one"), ("true", "not a number"),
    ("id not text", "not text")])
def test_a_table_that_cannot_teach_the_run_is_refused_naming_the_file_and_the_fix(busi, tmp_path, how, words):
    ids = busi.ids[::40]
    table = write_table(tmp_path / "targets.json", damaged(table_rows(busi, ids, teacher_of), how))
    with pytest.raises(SoftTargetError, match=words) as refusal:
        load_soft_targets(table, busi, ids, [], MODES)
    assert str(table) in str(refusal.value) and "benchmarks/distillation.py" in str(refusal.value)


def test_a_table_that_lists_a_held_out_scan_is_refused_since_its_teachers_trained_on_it(busi, tmp_path):
    """In an out-of-fold table each scan's teacher trained on the other scans listed, so a released model's table
    (every scan of the cross-validation) would have the run's validation and test scans teach its training scans."""
    ids = busi.ids[::40]
    table = write_table(tmp_path / "targets.json", table_rows(busi, ids, teacher_of))
    with pytest.raises(SoftTargetError, match="lists 1 of this run's validation and test scans"):
        load_soft_targets(table, busi, ids[1:], ids[:1], MODES)
    assert load_soft_targets(table, busi, ids, [busi.ids[1]], MODES).probabilities.shape == (len(ids), 2, 3)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"columns": ["id"], "rows": [[1, 2]]}), "",
                                     "[" * 100_000])
def test_a_file_that_is_no_table_is_refused(busi, tmp_path, content):
    table = tmp_path / "targets.json"
    table.write_text(content)
    with pytest.raises(SoftTargetError, match="cannot read the soft-target table"):
        load_soft_targets(table, busi, busi.ids[:3], [], MODES)


# --------------------------------------------------------------------------- a run

def distinct_teacher(n: int, case) -> dict:
    first = 0.05 + 0.8 * (n % 97) / 97
    return {"image": dict(zip(CLASSES, (first, 0.95 - first, 0.05))), "mask": dict(zip(CLASSES, (0.05, first, 0.95 - first)))}


def split_file(busi, tmp_path: Path) -> tuple[Path, list[str]]:
    """A split file for a run with no validation split: its training scans are the file's ``train`` list."""
    ids = busi.ids[::20]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ids[::2], "test": ids[1::2]}))
    return path, ids[::2]


def test_every_example_trains_on_its_own_scans_teacher_row_and_crops_on_their_label(
        busi, busi_root, shared_cache, tmp_path, monkeypatch):
    split, train_ids = split_file(busi, tmp_path)
    table = write_table(tmp_path / "targets.json", table_rows(busi, train_ids, distinct_teacher))
    key = lambda row: tuple(np.round(row, 5).ravel())  # noqa: E731
    label_of = {key(r): busi.by_id()[i].label
                for r, i in zip(load_soft_targets(table, busi, train_ids, [], MODES).probabilities, train_ids)}
    seen, forward = [], TrainingStep.forward

    def spy(self, images, masks, y, mode, given=None, mix=None, teacher=None):
        seen.extend(zip(teacher.numpy(), y.tolist()))
        return forward(self, images, masks, y, mode, given, mix, teacher)

    monkeypatch.setattr(TrainingStep, "forward", spy)
    run = train(config(busi_root, split_file=str(split), limit=None, val_fraction=0.0, normal_crops=0.5,
                       soft_targets=str(table), out_dir=str(tmp_path / "run")), progress=False)
    scans = [(row, y) for row, y in seen if key(row) in label_of]
    crops = [(row, y) for row, y in seen if key(row) not in label_of]
    assert all(label_of[key(row)] == CLASSES[y] for row, y in scans)  # each scan its own row
    assert len({key(row) for row, _ in scans}) == len(scans) >= len(train_ids) - 16  # once each (a last part batch dropped)
    assert crops and all(CLASSES[y] == "normal" and np.array_equal(row, np.eye(3)[[0, 0]]) for row, y in crops)
    assert (run / "soft-targets.json").read_bytes() == table.read_bytes()


def test_a_run_learns_from_its_soft_targets(busi, busi_root, shared_cache, tmp_path):
    split, train_ids = split_file(busi, tmp_path)
    uniform = {m: dict.fromkeys(CLASSES, 1 / 3) for m in MODES}
    table = write_table(tmp_path / "targets.json", table_rows(busi, train_ids, lambda n, case: uniform))
    common = dict(split_file=str(split), limit=None, val_fraction=0.0)
    plain = train(config(busi_root, out_dir=str(tmp_path / "plain"), **common), progress=False)
    taught = train(config(busi_root, out_dir=str(tmp_path / "taught"), soft_targets=str(table), distill_weight=1.0,
                          **common), progress=False)
    assert read_json(taught / "status.json")["state"] == "finished"
    plain_loss, taught_loss = (read_json(run / "history.json")[0]["train"]["loss"] for run in (plain, taught))
    # Taught only by a teacher that knows nothing, the run trains on another loss than the labels'.
    assert taught_loss != pytest.approx(plain_loss, rel=1e-3)


def test_a_resumed_run_learns_from_the_table_it_kept_not_the_file_rebuilt_since(
        busi, busi_root, shared_cache, tmp_path, monkeypatch):
    split, train_ids = split_file(busi, tmp_path)
    table = write_table(tmp_path / "targets.json", table_rows(busi, train_ids, distinct_teacher))
    flags = dict(split_file=str(split), limit=None, val_fraction=0.0, epochs=2, soft_targets=str(table))
    full = train(config(busi_root, out_dir=str(tmp_path / "full"), **flags), progress=False)

    def ctrl_c_at_epoch_2(epoch: int, batch: int) -> None:
        if (epoch, batch) == (2, 1):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.distributed, "injected_fault", ctrl_c_at_epoch_2)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config(busi_root, out_dir=str(cut), **flags), progress=False)
    monkeypatch.undo()
    write_table(table, table_rows(busi, train_ids, teacher_of))  # the table rebuilt with other teachers
    train(TrainConfig.from_dict(read_json(cut / "config.json")), progress=False, resume=cut)
    resumed, uninterrupted = (read_json(run / "history.json")[-1]["train"]["loss"] for run in (cut, full))
    assert resumed == pytest.approx(uninterrupted, rel=1e-4)
    # The check can fail: the rebuilt table teaches otherwise.
    other = train(config(busi_root, out_dir=str(tmp_path / "other"), **flags), progress=False)
    assert read_json(other / "history.json")[-1]["train"]["loss"] != pytest.approx(uninterrupted, rel=1e-4)


def test_train_refuses_a_table_missing_training_scans_before_making_a_run_folder(busi, busi_root, shared_cache,
                                                                                 tmp_path, capsys):
    split, train_ids = split_file(busi, tmp_path)
    table = write_table(tmp_path / "targets.json", table_rows(busi, train_ids[1:], teacher_of))
    out = tmp_path / "run"
    code = cli.main(["train", "--arch", "lesion-resunet", "--epochs", "1", "--split-file", str(split), "--val-fraction",
                     "0", "--image-size", str(SIZE), "--data", str(busi_root), "--device", "cpu", "--soft-targets",
                     str(table), "--out-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no teacher prediction for" in err and str(table) in err and "Traceback" not in err
    assert not out.exists()


def test_the_teachers_table_of_a_finished_run_is_what_training_reads(busi, busi_root, shared_cache, tmp_path):
    """A run on a split file predicts its test scans into a table (benchmarks/distillation.py's teachers), and that
    table teaches a run whose training scans are those test scans."""
    split, _ = split_file(busi, tmp_path)
    halves = json.loads(split.read_text())
    teacher = train(config(busi_root, out_dir=str(tmp_path / "teacher"), split_file=str(split), limit=None),
                    progress=False)
    rows = out_of_fold([teacher], familiarity=False)
    assert [r["id"] for r in rows] == halves["test"] and {r["fold"] for r in rows} == {None}
    assert all("familiarity" not in r for r in rows)
    table = write_table(tmp_path / "targets.json", rows)
    targets = load_soft_targets(table, busi, halves["test"], [], MODES).probabilities
    assert np.allclose(targets.sum(2), 1.0)
    with pytest.raises(SoftTargetError, match="no teacher prediction"):
        load_soft_targets(table, busi, halves["train"], [], MODES)
    shutil.rmtree(teacher)
