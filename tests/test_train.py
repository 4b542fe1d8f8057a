"""End-to-end training on tiny real subsets: run-folder contents, determinism, the evaluate CLI,
the study preset, every --help, and cancellation. Scans are decoded at 64 px to stay quick on CPU."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import imagemasknet.models.weights as weights_module
import imagemasknet.training.step as step_module
from imagemasknet import cli
from imagemasknet.core.files import read_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import CLASSES, load_arrays
from imagemasknet.data.splits import load_folds
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.evaluation.metrics import point_metrics, softmax
from imagemasknet.models import get_spec
from imagemasknet.models.weights import load_model
from imagemasknet.training.config import TrainConfig, preset
from imagemasknet.training.step import TrainingStep
from imagemasknet.training.trainer import train

pytestmark = pytest.mark.slow

SIZE = 64
LIMIT = 24


def quick_config(busi_root: Path, out_dir: Path, **overrides) -> TrainConfig:
    values = dict(arch="lesion-resunet", epochs=1, limit=LIMIT, fold=0, image_size=SIZE, seed=0,
                  data=str(busi_root), out_dir=str(out_dir) if out_dir else None, device="cpu", num_workers=0)
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def module_env(tmp_path_factory, shared_cache_dir):
    """Module-wide env for the shared training run: the session's temporary cache and runs folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
        patch.setenv("IMAGEMASKNET_RUNS", str(tmp_path_factory.mktemp("module-runs")))
        patch.delenv("IMAGEMASKNET_DATA", raising=False)
        yield


@pytest.fixture(scope="module")
def trained_run(module_env, busi_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    returned = train(quick_config(busi_root, run_dir), progress=False)
    assert returned == run_dir
    return run_dir


@pytest.fixture(scope="module")
def busi_arrays(module_env, busi_root):
    data = load_busi(busi_root)
    return load_arrays(data, SIZE)


def test_run_folder_contents(trained_run, busi_root):
    config = read_json(trained_run / "config.json")
    assert config == quick_config(busi_root, trained_run).to_dict()

    status = read_json(trained_run / "status.json")
    assert status["state"] == "finished"
    assert (status["epoch"], status["epochs"]) == (1, 1)
    assert RunFolder(trained_run).state == "finished"

    split = read_json(trained_run / "split.json")
    train_ids, val_ids, test_ids = (set(split[k]) for k in ("train", "validation", "test"))
    fold0 = set(load_folds()[0])
    assert test_ids <= fold0 and not (train_ids | val_ids) & fold0
    assert not train_ids & val_ids
    assert len(train_ids) <= LIMIT and len(test_ids) <= LIMIT and 3 <= len(val_ids) <= LIMIT // 4 + 3
    labels = {c.id: c.label for c in load_busi(busi_root).cases}
    assert {labels[i] for i in test_ids} == set(CLASSES)  # a limited subset keeps every class

    history = read_json(trained_run / "history.json")
    assert isinstance(history, list) and len(history) == 1
    entry = history[0]
    assert entry["epoch"] == 1
    assert math.isfinite(entry["train"]["loss"]) and entry["train"]["loss"] > 0
    assert 0.0 <= entry["train"]["accuracy"] <= 1.0
    assert set(entry["heldout"]) == {"image", "mask"}
    assert set(entry["validation"]) == {"image", "mask"}
    for mode, metrics in entry["heldout"].items():
        for key in ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall", "macro_auc",
                    "recall_normal", "recall_benign", "recall_malignant", "lesion_dice"):
            assert key in metrics, (mode, key)
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
        assert all(0.0 <= metrics[f"recall_{c}"] <= 1.0 for c in CLASSES)

    calibration = read_json(trained_run / "calibration.json")
    assert calibration["fitted_on"] == "inner validation split"
    assert set(calibration["temperature"]) == {"image", "mask"}
    assert all(0.05 <= t <= 20 for t in calibration["temperature"].values())
    assert RunFolder(trained_run).temperatures == calibration["temperature"]
    assert "finished" in (trained_run / "log.txt").read_text()
    assert not list(trained_run.glob(".*.tmp"))


def test_checkpoints_load_and_reproduce_the_logged_accuracy(trained_run, busi_arrays):
    spec = get_spec("lesion-resunet")
    test_ids = read_json(trained_run / "split.json")["test"]
    arrays = busi_arrays.take(test_ids)
    heldout = read_json(trained_run / "history.json")[0]["heldout"]
    for which in ("best", "last"):
        model = load_model("lesion-resunet", trained_run / f"{which}.safetensors", image_size=SIZE)
        assert not model.training
        for mode in spec.modes:
            predictions = predict_arrays(model, spec, arrays, mode, torch.device("cpu"))
            metrics = point_metrics(softmax(predictions.logits), predictions.labels)
            # With one epoch both checkpoints are the weights the history was computed with.
            assert metrics["accuracy"] == pytest.approx(heldout[mode]["accuracy"]), (which, mode)
            assert metrics["macro_f1"] == pytest.approx(heldout[mode]["macro_f1"]), (which, mode)
    with pytest.raises(weights_module.WeightsError):
        load_model("imagemasknet2", trained_run / "best.safetensors", image_size=SIZE)


def test_same_seed_same_history(trained_run, busi_root, shared_cache, tmp_path):
    again = train(quick_config(busi_root, tmp_path / "again"), progress=False)
    first, second = read_json(trained_run / "history.json")[0], read_json(again / "history.json")[0]
    assert second["train"]["loss"] == first["train"]["loss"]
    assert second["train"]["accuracy"] == first["train"]["accuracy"]
    assert second["heldout"] == first["heldout"]
    a = weights_module.load_file(str(trained_run / "last.safetensors"))
    b = weights_module.load_file(str(again / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ...and the seed does matter.
    other = train(quick_config(busi_root, tmp_path / "other", seed=1), progress=False)
    assert read_json(other / "history.json")[0]["train"]["loss"] != first["train"]["loss"]


def test_evaluate_cli_writes_json_with_ci(trained_run, busi_root, shared_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_root))
    out = tmp_path / "eval.json"
    code = cli.main(["evaluate", "--run", str(trained_run), "--resamples", "50", "--json", str(out), "--device", "cpu"])
    assert code == 0
    assert "accuracy" in capsys.readouterr().out
    result = json.loads(out.read_text())
    test_ids = read_json(trained_run / "split.json")["test"]
    assert result["n"] == len(test_ids)
    assert result["model"] == "lesion-resunet"
    heldout = read_json(trained_run / "history.json")[0]["heldout"]
    assert set(result["modes"]) == {"image", "mask"}
    for mode, report in result["modes"].items():
        accuracy = report["metrics"]["accuracy"]
        assert set(accuracy) == {"value", "ci_low", "ci_high"}
        assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
        # Temperature scaling never changes the arg-max, so this is the logged held-out accuracy.
        assert accuracy["value"] == pytest.approx(heldout[mode]["accuracy"])
        assert np.array(report["confusion"]).sum() == len(test_ids)
    assert not (trained_run / "metrics.json").exists()  # --json given: the run folder is left alone


def test_bf16_precision_trains_like_fp32_and_saves_plain_weights(trained_run, busi_root, busi_arrays, tmp_path):
    run_dir = train(quick_config(busi_root, tmp_path / "bf16", precision="bf16"), progress=False)
    fp32, bf16 = read_json(trained_run / "history.json")[0], read_json(run_dir / "history.json")[0]
    # same seed, same batches: the bfloat16 forward pass changes the loss only in its last digits
    assert bf16["train"]["loss"] == pytest.approx(fp32["train"]["loss"], rel=0.03)
    model = load_model("lesion-resunet", run_dir / "best.safetensors", image_size=SIZE)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    predictions = predict_arrays(model, get_spec("lesion-resunet"), busi_arrays.take(read_json(run_dir / "split.json")["test"]),
                                 "image", torch.device("cpu"))
    accuracy = point_metrics(softmax(predictions.logits), predictions.labels)["accuracy"]
    assert accuracy == pytest.approx(bf16["heldout"]["image"]["accuracy"])  # evaluation runs in fp32


def test_mixup_blends_scans_masks_and_labels_alike(busi_root, busi_arrays):
    """Blend weight 1 is the plain batch and weight 0 the batch in the drawn order with masks, labels and
    class weights following their scans (the same loss, a sum over the batch); so a blend in between
    mixes all of them alike."""
    spec = get_spec("lesion-resunet")
    # The shipped weights, whose confident answers make the loss depend on the labels; eval mode for
    # fixed batch-norm statistics and no dropout.
    model = load_model(spec.name, Path(__file__).resolve().parent.parent / "weights" / spec.name / "model.safetensors",
                       image_size=SIZE).eval()
    step = TrainingStep(model, spec, quick_config(busi_root, None), class_weight=torch.tensor([2.0, 0.7, 1.3]))
    rows = [n for k in range(len(CLASSES)) for n in np.flatnonzero(busi_arrays.labels == k)[:2]]
    images = torch.from_numpy(busi_arrays.images[rows]).unsqueeze(1)
    masks = torch.from_numpy(busi_arrays.masks[rows]).unsqueeze(1)
    y = torch.from_numpy(busi_arrays.labels[rows])
    order = torch.tensor([3, 5, 4, 0, 1, 2])
    with torch.no_grad():
        for mode in ("image", "mask"):
            plain, _ = step(images, masks, y, mode)
            in_order, _ = step(images[order], masks[order], y[order], mode)
            assert step(images, masks, y, mode, mix=(order, 1.0))[0].item() == pytest.approx(plain.item(), rel=1e-5)
            assert step(images, masks, y, mode, mix=(order, 0.0))[0].item() == pytest.approx(in_order.item(), rel=1e-5)
            # The checks can fail: scans blended without their labels (or masks) give another loss.
            assert step(images[order], masks[order], y, mode)[0].item() != pytest.approx(plain.item(), rel=1e-3)
            assert step(images[order], masks, y[order], mode)[0].item() != pytest.approx(plain.item(), rel=1e-3)


def test_study_m1_preset_trains_one_epoch(busi_root, shared_cache, isolated_env, tmp_path):
    config = preset("study-m1", epochs=1, limit=12, image_size=SIZE, data=str(busi_root),
                    out_dir=str(tmp_path / "m1"), device="cpu")
    assert (config.arch, config.mask_schedule, config.val_fraction) == ("imagemasknet", "always", 0.0)
    run_dir = train(config, progress=False)
    assert read_json(run_dir / "status.json")["state"] == "finished"
    history = read_json(run_dir / "history.json")
    assert len(history) == 1 and set(history[0]["heldout"]) == {"mask"}
    assert history[0]["validation"] == {}
    assert math.isfinite(history[0]["train"]["loss"])
    assert read_json(run_dir / "split.json")["validation"] == []
    assert read_json(run_dir / "calibration.json") == {"temperature": {"mask": 1.0}, "fitted_on": "not fitted"}
    load_model("imagemasknet", run_dir / "best.safetensors", image_size=SIZE)
    assert not list(Path(isolated_env.runs).iterdir())  # out_dir given: nothing under IMAGEMASKNET_RUNS


def test_default_run_folder_goes_under_imagemasknet_runs(busi_root, shared_cache, isolated_env):
    config = quick_config(busi_root, None, limit=9, arch="imagemasknet2", mask_schedule="first-half",
                          augment="none", val_fraction=0.0)
    run_dir = train(config, progress=False)
    assert run_dir.parent == isolated_env.runs and run_dir.name.startswith("imagemasknet2-")
    assert read_json(run_dir / "status.json")["state"] == "finished"
    assert set(read_json(run_dir / "history.json")[0]["heldout"]) == {"image", "mask"}


# --------------------------------------------------------------------------- CLI help

def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command the parser knows, found by walking its sub-parsers."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, prefix + (name,))
    return paths


def test_every_command_has_working_help(capsys):
    paths = command_paths(cli.build_parser())
    expected = {(), ("train",), ("evaluate",), ("audit",), ("predict",), ("data",), ("data", "split"), ("models",)}
    assert expected <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*path, "--help"])
        assert exit_info.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: imagemasknet" + "".join(f" {p}" for p in path)), path
    # Every TrainConfig field is a train flag.
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    train_help = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in train_help, name


def test_cli_rejects_a_bad_config_value(capsys):
    assert cli.main(["train", "--epochs", "0", "--no-progress"]) == 2
    assert "epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------- cancellation

def test_interrupt_while_writing_a_checkpoint_leaves_a_consistent_cancelled_run(
        busi_root, shared_cache, monkeypatch, tmp_path, capsys):
    """Ctrl-C arrives while best.safetensors is half written (the second weights write of the run)."""
    real_write = weights_module.atomic_write
    calls = []

    def write_then_interrupt(path, write, mode=None):
        if not str(path).endswith(".safetensors"):
            return real_write(path, write, mode)
        calls.append(path)
        if len(calls) == 1:
            return real_write(path, write, mode)

        def half(tmp):
            Path(tmp).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt

        return real_write(path, half, mode)

    monkeypatch.setattr(weights_module, "atomic_write", write_then_interrupt)
    run_dir = tmp_path / "cancelled"
    code = cli.main(["train", "--arch", "lesion-resunet", "--epochs", "1", "--limit", str(LIMIT), "--fold", "0",
                     "--image-size", str(SIZE), "--data", str(busi_root), "--out-dir", str(run_dir),
                     "--device", "cpu", "--no-progress"])
    assert code == 130
    assert "cancelled" in capsys.readouterr().err
    assert len(calls) == 2
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and status["epoch"] == 1
    for name in ("config.json", "split.json", "history.json"):
        json.loads((run_dir / name).read_text())
    assert len(json.loads((run_dir / "history.json").read_text())) == 1
    assert not (run_dir / "best.safetensors").exists()  # never replaced by the half-written file
    assert not list(run_dir.glob(".*.tmp"))
    assert not (run_dir / "calibration.json").exists()
    load_model("lesion-resunet", run_dir / "last.safetensors", image_size=SIZE)
    assert RunFolder(run_dir).state == "cancelled"
    assert "cancelled" in (run_dir / "log.txt").read_text()


def test_interrupt_mid_epoch_marks_run_cancelled(busi_root, shared_cache, monkeypatch, tmp_path):
    real_input = step_module.model_input
    batches = []

    def interrupt_on_second_batch(*args, **kwargs):
        batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return real_input(*args, **kwargs)

    monkeypatch.setattr(step_module, "model_input", interrupt_on_second_batch)
    run_dir = tmp_path / "mid-epoch"
    with pytest.raises(KeyboardInterrupt):
        train(quick_config(busi_root, run_dir, batch_size=8), progress=False)
    assert len(batches) == 2
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and status["epoch"] == 0
    assert json.loads((run_dir / "history.json").read_text()) == []
    assert not list(run_dir.glob("*.safetensors")) and not list(run_dir.glob(".*.tmp"))


def test_evaluate_run_uses_the_runs_own_data_folder(busi_root, make_busi_copy, monkeypatch, tmp_path):
    import imagemasknet.data.busi as data_module

    folds = load_folds()
    root = make_busi_copy(folds[0][::20] + folds[1][::20], "kaggle", name="own-data")
    run_dir = train(quick_config(busi_root, tmp_path / "run", data=str(root), val_fraction=0.0, limit=None),
                    progress=False)
    monkeypatch.setattr(data_module, "SHARED_COPY", tmp_path / "no-shared-copy")
    monkeypatch.setattr(data_module, "BUNDLED_COPY", tmp_path / "no-bundled-copy")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--run", str(run_dir), "--resamples", "10", "--json", str(out),
                     "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["n"] == len(read_json(run_dir / "split.json")["test"])


def test_the_checkpoint_rule_decides_what_best_holds(module_env, busi_root, tmp_path):
    """``checkpoint="last"`` keeps the final epoch as best.safetensors; ``"average"`` keeps the mean of the last
    epochs' weights, which average.safetensors also holds; the validation loss is recorded per half too."""
    from safetensors.torch import load_file

    last = train(quick_config(busi_root, tmp_path / "last", epochs=2, checkpoint="last"), progress=False)
    best, final = load_file(str(last / "best.safetensors")), load_file(str(last / "last.safetensors"))
    assert all(torch.equal(best[k], final[k]) for k in final)
    halves = read_json(last / "history.json")[-1]["validation"]["image"]["loss_halves"]
    assert len(halves) == 2 and all(h > 0 for h in halves)

    averaged = train(quick_config(busi_root, tmp_path / "average", epochs=3, checkpoint="average", average_epochs=2),
                     progress=False)
    best, kept = load_file(str(averaged / "best.safetensors")), load_file(str(averaged / "average.safetensors"))
    assert all(torch.equal(best[k], kept[k]) for k in kept)
    assert not torch.equal(best["classify.1.weight"], load_file(str(averaged / "last.safetensors"))["classify.1.weight"])


def test_epoch_average_is_the_mean_of_the_epochs_it_covers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    window = step_module.EpochAverage(first=1)
    seen = []
    for epoch in range(4):
        with torch.no_grad():
            model[0].weight.fill_(float(epoch))
        model[1].num_batches_tracked.fill_(epoch)
        window.add(epoch, model)
        seen.append(float(epoch))
    average = window.module_like(model)
    assert torch.allclose(average[0].weight, torch.full((2, 3), np.mean(seen[1:])))
    assert int(average[1].num_batches_tracked) == 3  # integer buffers keep the latest value
    restored = step_module.EpochAverage(first=0)
    restored.load_state_dict(window.state_dict())
    assert torch.equal(restored.module_like(model)[0].weight, average[0].weight)
