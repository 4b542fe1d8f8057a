"""Data-parallel training under torchrun (2 gloo processes on CPU, 40 real BUSI scans at 64 px):
the run folder, losses reduced over ranks, evaluation equal to one process's, first-step gradients
equal to one process's, a killed rank, and resuming (after a killed rank, and after Ctrl-C)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imagemasknet.training.trainer as train_module
from imagemasknet import cli
from imagemasknet.core.files import read_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import CLASSES, load_arrays
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.models import build_model, get_spec
from imagemasknet.models.weights import load_model, load_state
from imagemasknet.training import distributed
from imagemasknet.core.run_folder import STATE
from imagemasknet.training.checkpoint import EMA_FILE
from imagemasknet.training.config import TrainConfig
from imagemasknet.training.step import TrainingStep, heldout_metrics

pytestmark = pytest.mark.slow

SIZE = 64
LIMIT = 40
EPOCHS = 2


def train_flags(busi_root: Path, out_dir: Path, epochs: int = EPOCHS) -> list[str]:
    return ["--arch", "lesion-resunet", "--limit", str(LIMIT), "--image-size", str(SIZE), "--epochs", str(epochs),
            "--fold", "0", "--seed", "0", "--data", str(busi_root), "--device", "cpu", "--num-workers", "0",
            "--no-progress", "--out-dir", str(out_dir)]


def torchrun(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m imagemasknet train ARGS`` (a free port picked by torchrun)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--monitor-interval", "0.2", "-m", "imagemasknet", "train", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dist_env(tmp_path_factory, shared_cache_dir, busi_root) -> dict:
    """Environment for the torchrun jobs: the session's decode cache, filled here once at 64 px so the
    ranks only read it, and a temporary runs folder."""
    env = {**os.environ, "IMAGEMASKNET_CACHE": str(shared_cache_dir),
           "IMAGEMASKNET_RUNS": str(tmp_path_factory.mktemp("dist-runs")), "OMP_NUM_THREADS": "1"}
    env.pop("IMAGEMASKNET_DATA", None)
    env.pop("IMAGEMASKNET_TEST_KILL", None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
        load_arrays(load_busi(busi_root), SIZE)
    return env


@pytest.fixture(scope="module")
def two_rank_run(dist_env, busi_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("two-ranks") / "run"
    result = torchrun(train_flags(busi_root, run_dir), dist_env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)  # printed once, by rank 0
    return run_dir


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def _assert_histories_close(a: list[dict], b: list[dict]) -> None:
    a, b = _comparable(a), _comparable(b)
    assert json.dumps(a, sort_keys=True).count(":") == json.dumps(b, sort_keys=True).count(":")

    def walk(x, y, where=""):
        if isinstance(x, dict):
            assert set(x) == set(y), where
            for key in x:
                walk(x[key], y[key], f"{where}.{key}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for n, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{n}]")
        elif isinstance(x, float):
            assert y == pytest.approx(x, rel=1e-5, abs=1e-6, nan_ok=True), where
        else:
            assert x == y, where

    walk(a, b)


def test_two_rank_run_writes_one_valid_run_folder(two_rank_run, busi_root):
    config = read_json(two_rank_run / "config.json")
    single = cli._config_from_args(cli.build_parser().parse_args(["train", *train_flags(busi_root, two_rank_run)]))
    assert config == single.to_dict()  # the same config dataclass as a single-process run
    status = read_json(two_rank_run / "status.json")
    assert status["state"] == "finished" and (status["epoch"], status["epochs"]) == (EPOCHS, EPOCHS)
    assert RunFolder(two_rank_run).state == "finished"
    history = read_json(two_rank_run / "history.json")
    assert [e["epoch"] for e in history] == list(range(1, EPOCHS + 1))
    for entry in history:
        assert set(entry["heldout"]) == set(entry["validation"]) == {"image", "mask"}
        assert 0 <= entry["heldout"]["image"]["accuracy"] <= 1 and np.isfinite(entry["train"]["loss"])
    for name in ("best.safetensors", "last.safetensors"):
        load_model("lesion-resunet", two_rank_run / name, image_size=SIZE)
    state = load_state(two_rank_run / STATE)
    assert state["epoch"] == EPOCHS and state["world_size"] == 2
    assert set(read_json(two_rank_run / "calibration.json")["temperature"]) == {"image", "mask"}
    assert not list(two_rank_run.glob(".*.tmp"))
    log = (two_rank_run / "log.txt").read_text()
    assert "2 ranks (gloo, cpu), global batch 16 = 2 × 8" in log
    assert log.count("run ") == 1  # one writer: rank 0


def test_train_loss_is_reduced_over_every_rank(two_rank_run):
    split = read_json(two_rank_run / "split.json")
    shard = len(split["train"]) // 2
    for entry in read_json(two_rank_run / "history.json"):
        train_figures = entry["train"]
        ranks = train_figures["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert all(r["scans"] == shard // 8 * 8 for r in ranks)  # full per-rank batches of 16 / 2
        assert train_figures["scans"] == sum(r["scans"] for r in ranks)
        reduced = sum(r["loss"] * r["scans"] for r in ranks) / sum(r["scans"] for r in ranks)
        assert train_figures["loss"] == pytest.approx(reduced, rel=1e-6)
        assert ranks[0]["loss"] != pytest.approx(ranks[1]["loss"])  # two shards, not rank 0's twice
        correct = sum(r["accuracy"] * r["scans"] for r in ranks)
        assert train_figures["accuracy"] == pytest.approx(correct / train_figures["scans"])


def test_heldout_metrics_equal_one_process_evaluating_the_checkpoint(two_rank_run, busi_root, shared_cache):
    arrays = load_arrays(load_busi(busi_root), SIZE)
    split = read_json(two_rank_run / "split.json")
    last = read_json(two_rank_run / "history.json")[-1]
    model = load_model("lesion-resunet", two_rank_run / "last.safetensors", image_size=SIZE)
    spec = get_spec("lesion-resunet")
    for split_name, key in (("test", "heldout"), ("validation", "validation")):
        for mode in spec.modes:
            single = heldout_metrics(predict_arrays(model, spec, arrays.take(split[split_name]), mode, torch.device("cpu")),
                                     halves=key == "validation")
            assert set(single) == set(last[key][mode])
            for metric, value in single.items():
                assert last[key][mode][metric] == pytest.approx(value, rel=1e-4, abs=1e-5), (key, mode, metric)


# --- first-step gradients: 2 gloo ranks against one process, on the same global batch -------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_step(rank: int, world: int, port: int, batch: dict, out_dir: str) -> None:
    """One forward/backward of the training step on this rank's slice of ``batch``; saves the gradients."""
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model("lesion-resunet", image_size=SIZE)
        model.train()
        # Batch norm in training mode normalises over each rank's own scans (not SyncBatchNorm, which
        # needs GPUs), and dropout draws differ per process: both are set to inference behaviour, so
        # that the forward pass of every scan is the same whichever batch it is in.
        for module in model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
                module.eval()
        config = TrainConfig(arch="lesion-resunet", image_size=SIZE, class_balanced=True)
        step = TrainingStep(model, get_spec("lesion-resunet"), config, batch["class_weight"])
        if world > 1:
            step = torch.nn.parallel.DistributedDataParallel(step)
        n = len(batch["y"]) // world
        part = slice(rank * n, (rank + 1) * n)
        loss, _ = step(batch["images"][part], batch["masks"][part], batch["y"][part], "mask", batch["given"][part])
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.detach(), "grads": grads}, Path(out_dir) / f"grads-{world}-{rank}.pt")
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def test_first_step_gradients_equal_a_single_process(busi_root, shared_cache, tmp_path):
    arrays = load_arrays(load_busi(busi_root), SIZE)
    by_class = {c: [n for n, label in enumerate(arrays.labels) if label == k] for k, c in enumerate(CLASSES)}
    # Uneven shards on purpose: rank 0 gets three normal scans (no lesion) and one benign, rank 1 four
    # lesion scans, so the class-weighted cross-entropy and the Dice term normalise differently per rank.
    rows = by_class["normal"][:3] + by_class["benign"][:1] + by_class["benign"][1:3] + by_class["malignant"][:2]
    batch = {
        "images": torch.from_numpy(arrays.images[rows]).unsqueeze(1),
        "masks": torch.from_numpy(arrays.masks[rows]).unsqueeze(1),
        "y": torch.from_numpy(arrays.labels[rows]),
        "given": torch.tensor([True, False, True, False, False, True, True, False]),
        "class_weight": torch.tensor([2.0, 0.7, 1.3]),
    }
    _first_step(0, 1, 0, batch, str(tmp_path))
    # fork: the children need nothing the parent has not imported already (spawn would re-import torch).
    torch.multiprocessing.start_processes(_first_step, args=(2, _free_port(), batch, str(tmp_path)), nprocs=2,
                                          join=True, start_method="fork")
    single = torch.load(tmp_path / "grads-1-0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"grads-2-{r}.pt", weights_only=True) for r in range(2)]

    # The global loss is the mean of the per-rank losses (each rank divides by its share of the
    # global normalisers), and DDP's averaged gradients are one process's gradients.
    assert ranks[0]["loss"].item() != pytest.approx(ranks[1]["loss"].item())
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(single["loss"].item(), rel=1e-5)
    assert set(single["grads"]) == set(ranks[0]["grads"]) == set(ranks[1]["grads"])
    scale = max(g.abs().max().item() for g in single["grads"].values())
    for name, grad in single["grads"].items():
        # float32 sums taken in another order (4 + 4 scans, then the all-reduce) differ in the last bits.
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)
        torch.testing.assert_close(ranks[1]["grads"][name], ranks[0]["grads"][name], rtol=0, atol=0, msg=name)


# --- a killed rank, and resuming --------------------------------------------------------------------------


def test_killed_rank_fails_the_job_clearly_and_resume_finishes_it(two_rank_run, dist_env, busi_root, tmp_path):
    run_dir = tmp_path / "killed"
    result = torchrun(train_flags(busi_root, run_dir), {**dist_env, "IMAGEMASKNET_TEST_KILL": "1:2:1"})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "ChildFailedError" in output and "SIGKILL" in output  # torchrun names the rank that died, and how
    assert "rank      : 1" in output.split("Root Cause")[1]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and status["epoch"] == 1
    assert "another rank" in status["error"] or "SIGTERM" in status["error"]
    assert "failed: " in (run_dir / "log.txt").read_text()
    assert len(read_json(run_dir / "history.json")) == 1
    load_model("lesion-resunet", run_dir / "last.safetensors", image_size=SIZE)  # whole and loadable
    assert load_state(run_dir / STATE)["epoch"] == 1
    assert RunFolder(run_dir).state == "failed"

    resumed = torchrun(["--resume", str(run_dir), "--no-progress"], dist_env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert read_json(run_dir / "status.json")["state"] == "finished"
    assert "resumed after epoch 1" in (run_dir / "log.txt").read_text()
    # Epoch 2 trained after the restart is the uninterrupted run's epoch 2.
    _assert_histories_close(read_json(run_dir / "history.json"), read_json(two_rank_run / "history.json"))


def test_two_ranks_with_loader_workers_resume_into_the_uninterrupted_run(dist_env, busi_root, tmp_path):
    workers = ["--num-workers", "1"]  # after train_flags' 0: the last one counts
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert torchrun([*train_flags(busi_root, full), *workers], dist_env).returncode == 0
    killed = torchrun([*train_flags(busi_root, cut), *workers], {**dist_env, "IMAGEMASKNET_TEST_KILL": "1:2:1"})
    assert killed.returncode != 0 and len(read_json(cut / "history.json")) == 1
    resumed = torchrun(["--resume", str(cut), "--no-progress"], dist_env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # Each rank's epoch-2 workers draw the uninterrupted run's augmentations.
    _assert_histories_close(read_json(cut / "history.json"), read_json(full / "history.json"))


@pytest.mark.parametrize("variant", [[], ["--ema-decay", "0.9"], ["--mixup-alpha", "0.4"], ["--num-workers", "1"]],
                         ids=["weights", "moving-average", "mixup", "loader-worker"])
def test_single_process_resume_after_ctrl_c_repeats_the_uninterrupted_run(variant, busi_root, shared_cache, monkeypatch,
                                                                          tmp_path, capsys):
    def train_flags_(out_dir: Path) -> list[str]:
        return [*train_flags(busi_root, out_dir), *variant]

    assert cli.main(["train", *train_flags_(tmp_path / "full")]) == 0
    real_fault = distributed.injected_fault

    def ctrl_c_at_epoch_2(epoch: int, batch: int) -> None:
        if (epoch, batch) == (2, 1):
            raise KeyboardInterrupt
        real_fault(epoch, batch)

    monkeypatch.setattr(train_module.distributed, "injected_fault", ctrl_c_at_epoch_2)
    cut = tmp_path / "cut"
    assert cli.main(["train", *train_flags_(cut)]) == 130
    assert read_json(cut / "status.json")["state"] == "cancelled"
    assert len(read_json(cut / "history.json")) == 1
    monkeypatch.setattr(train_module.distributed, "injected_fault", real_fault)

    assert cli.main(["train", "--resume", str(cut), "--epochs", "5"]) == 2  # its own settings only
    assert "leave out --epochs" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(cut), "--no-progress"]) == 0
    assert read_json(cut / "status.json")["state"] == "finished"
    _assert_histories_close(read_json(cut / "history.json"), read_json(tmp_path / "full" / "history.json"))
    assert cli.main(["train", "--resume", str(cut)]) == 2  # finished: nothing to resume
    assert "already finished" in capsys.readouterr().err
    if "--ema-decay" in variant:  # the held-out figures are the moving average's, not the last step's weights'
        arrays = load_arrays(load_busi(busi_root), SIZE).take(read_json(cut / "split.json")["test"])
        logged = read_json(cut / "history.json")[-1]["heldout"]["image"]["loss"]
        for weights, matches in ((EMA_FILE, True), ("last.safetensors", False)):
            model = load_model("lesion-resunet", cut / weights, image_size=SIZE)
            loss = heldout_metrics(predict_arrays(model, get_spec("lesion-resunet"), arrays, "image", torch.device("cpu")))["loss"]
            assert (loss == pytest.approx(logged, abs=1e-5)) is matches


def test_global_batch_must_split_evenly_over_ranks(busi_root):
    config = TrainConfig(arch="lesion-resunet", batch_size=16, image_size=SIZE, data=str(busi_root))
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        train_module._train(config, False, None, distributed.World(0, 3, 0, "gloo"), torch.device("cpu"))


# --- folds trained as independent jobs, merged by `imagemasknet evaluate --cv` ----------------------------


def test_evaluate_merges_independent_fold_runs_into_one_cv_report(two_rank_run, busi_root, shared_cache, tmp_path,
                                                                   capsys):
    fold1 = tmp_path / "fold1"
    flags = train_flags(busi_root, fold1, epochs=1)
    flags[flags.index("--fold") + 1] = "1"
    assert cli.main(["train", *flags]) == 0  # fold 0 came from the torchrun job, fold 1 from one process
    out = tmp_path / "cv.json"
    assert cli.main(["evaluate", "--cv", str(two_rank_run), str(fold1), "--resamples", "20", "--json", str(out),
                     "--device", "cpu"]) == 0
    assert "2-fold cross-validation" in capsys.readouterr().out
    cv = read_json(out)["cross_validation"]
    sizes = [len(read_json(r / "split.json")["test"]) for r in (two_rank_run, fold1)]
    assert [f["fold"] for f in cv["folds"]] == [0, 1] and [f["n"] for f in cv["folds"]] == sizes
    assert cv["n"] == sum(sizes)
    for mode, entry in cv["modes"].items():
        rows = entry["per_fold"]
        assert entry["mean_sd"]["accuracy"]["mean"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))
        assert entry["pooled"]["n"] == sum(sizes)
        pooled_accuracy = sum(r["accuracy"] * r["n"] for r in rows) / sum(sizes)
        assert entry["pooled"]["metrics"]["accuracy"]["value"] == pytest.approx(pooled_accuracy)

    # The same fold twice would count its scans twice: refused.
    assert cli.main(["evaluate", "--cv", str(fold1), str(fold1), "--resamples", "5", "--device", "cpu"]) == 2
    assert "folds overlap" in capsys.readouterr().err


def test_lesion_free_normals_train_under_torchrun_each_rank_its_share(dist_env, busi_root, tmp_path):
    run_dir = tmp_path / "crops"
    result = torchrun([*train_flags(busi_root, run_dir, epochs=1), "--normal-crops", "0.5"], dist_env)
    assert result.returncode == 0, result.stderr[-4000:]
    train = len(read_json(run_dir / "split.json")["train"])
    ranks = read_json(run_dir / "history.json")[0]["train"]["ranks"]
    assert ranks[0]["scans"] == ranks[1]["scans"] > train // 2 // 8 * 8  # the crops join every rank's share
    assert ranks[0]["scans"] <= (train + round(0.5 * train)) // 2  # a share of the draw, not all of it
