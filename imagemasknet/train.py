"""The training loop: one TrainConfig in, one consistent run folder out.

Per epoch it appends to ``history.json`` (train loss and accuracy; held-out loss, accuracy, macro
precision/recall/F1 and per-class recall for each inference mode), writes ``last.safetensors`` and,
when the inner validation loss improves, ``best.safetensors``. At the end it fits a temperature per
mode on the inner validation split (never on the test fold). Ctrl-C or SIGTERM marks the run
cancelled and leaves every file whole.
"""
from __future__ import annotations

import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import TrainConfig
from .data import CLASSES, Arrays, load_arrays, load_busi
from .evaluate import Predictions, model_input, predict_arrays
from .metrics import fit_temperature, point_metrics, softmax
from .models import ModelSpec, build_model, get_spec
from .runs import now, runs_root, save_weights, write_json
from .splits import inner_validation, resolve_split
from .transforms import augment_pair, build_augmentation


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class ScanDataset(torch.utils.data.Dataset):
    """Decoded scans with their masks, augmented together on the fly."""

    def __init__(self, arrays: Arrays, augmentation: str, size: int):
        self.arrays = arrays
        self.transform = build_augmentation(augmentation, size)

    def __len__(self) -> int:
        return len(self.arrays.ids)

    def __getitem__(self, n: int):
        image = torch.from_numpy(self.arrays.images[n]).unsqueeze(0)
        mask = torch.from_numpy(self.arrays.masks[n].astype(np.uint8)).unsqueeze(0)
        image, mask = augment_pair(self.transform, image, mask)
        return image, mask.bool(), int(self.arrays.labels[n])


def evenly_spaced(ids: list[str], labels: dict[str, str], limit: int | None) -> list[str]:
    """At most ``limit`` ids, spread over each class so a small subset keeps the class mix."""
    if limit is None or limit >= len(ids):
        return ids
    chosen = []
    for c in CLASSES:
        members = [i for i in ids if labels[i] == c]
        share = max(1, round(limit * len(members) / len(ids))) if members else 0
        step = len(members) / share if share else 1
        chosen += [members[int(k * step)] for k in range(share)]
    return chosen[:limit]


def segmentation_loss(lesion_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on every scan plus soft Dice on the scans that have a lesion."""
    target = masks.float()
    bce = F.binary_cross_entropy_with_logits(lesion_logits, target)
    has_lesion = target.flatten(1).sum(1) > 0
    if not has_lesion.any():
        return bce
    p = torch.sigmoid(lesion_logits[has_lesion]).flatten(1)
    t = target[has_lesion].flatten(1)
    soft_dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + (1 - soft_dice).mean()


def uses_mask(config: TrainConfig, spec: ModelSpec, epoch: int, rng: random.Random) -> bool:
    if spec.needs_mask or config.mask_schedule == "always":
        return True
    if not spec.accepts_mask or config.mask_schedule == "never":
        return False
    if config.mask_schedule == "first-half":
        return epoch < config.epochs // 2
    return rng.random() < 0.5


def heldout_metrics(predictions: Predictions) -> dict[str, float]:
    logits = torch.from_numpy(predictions.logits)
    loss = F.cross_entropy(logits, torch.from_numpy(predictions.labels)).item()
    metrics = point_metrics(softmax(predictions.logits), predictions.labels)
    keep = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc"] + [f"recall_{c}" for c in CLASSES]
    out = {"loss": loss, **{k: metrics[k] for k in keep}}
    if not np.isnan(predictions.dice).all():
        out["lesion_dice"] = float(np.nanmean(predictions.dice))
    return out


@dataclass
class _Status:
    path: Path
    started: str
    last_write: float = 0.0

    def write(self, state: str, force: bool = True, **fields) -> None:
        if not force and time.monotonic() - self.last_write < 1.0:
            return
        self.last_write = time.monotonic()
        write_json(self.path, {"state": state, "started": self.started, "updated": now(), "pid": os.getpid(), **fields})


class _Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(f"{now()} {message}\n")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def new_run_dir(config: TrainConfig) -> Path:
    if config.out_dir:
        path = Path(config.out_dir)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"run folder {path} already exists and is not empty")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = runs_root() / f"{config.arch}-{stamp}"
        suffix = 1
        while path.exists():
            path = runs_root() / f"{config.arch}-{stamp}-{suffix}"
            suffix += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train as ``config`` says; returns the run folder."""
    config.validated()
    spec = get_spec(config.arch)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = load_busi(config.data)
    arrays = load_arrays(data, config.image_size, progress=progress)
    labels = {c.id: c.label for c in data.cases}
    train_ids, test_ids = resolve_split(data, config.fold, config.split_file)
    train_ids, val_ids = inner_validation(train_ids, labels, data, config.val_fraction, config.seed)
    train_ids = evenly_spaced(train_ids, labels, config.limit)
    val_ids = evenly_spaced(val_ids, labels, config.limit and max(3, config.limit // 4))
    test_ids = evenly_spaced(test_ids, labels, config.limit)

    run_dir = new_run_dir(config)
    log = _Log(run_dir / "log.txt")
    status = _Status(run_dir / "status.json", now())
    write_json(run_dir / "config.json", config.to_dict())
    write_json(run_dir / "split.json", {"train": train_ids, "validation": val_ids, "test": test_ids})
    write_json(run_dir / "history.json", [])
    status.write("running", epoch=0, epochs=config.epochs, batch=0, batches=0)
    log(f"run {run_dir.name}: {spec.name} on {device}, {len(train_ids)} train / {len(val_ids)} validation / "
        f"{len(test_ids)} test scans")
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        _fit(config, spec, device, arrays, train_ids, val_ids, test_ids, run_dir, status, log, progress)
    except KeyboardInterrupt:
        log("cancelled")
        status.write("cancelled", **_progress_fields(run_dir))
        raise
    except Exception as error:
        log(f"failed: {type(error).__name__}: {error}")
        status.write("failed", error=f"{type(error).__name__}: {error}", **_progress_fields(run_dir))
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return run_dir


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress_fields(run_dir: Path) -> dict:
    from .runs import read_json

    history = read_json(run_dir / "history.json", []) or []
    return {"epoch": len(history)}


def _fit(config, spec, device, arrays, train_ids, val_ids, test_ids, run_dir, status, log, progress):
    model = build_model(spec.name, image_size=config.image_size).to(device)
    dataset = ScanDataset(arrays.take(train_ids), config.augment, config.image_size)
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
        num_workers=config.num_workers, drop_last=len(dataset) > config.batch_size,
        persistent_workers=config.num_workers > 0, pin_memory=device.type == "cuda",
    )
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(loader)
    warmup = min(len(loader), total_steps // 10)

    def lr_factor(step: int) -> float:
        if config.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    counts = np.bincount(dataset.arrays.labels, minlength=len(CLASSES)).astype(np.float64)
    class_weight = None
    if config.class_balanced:
        class_weight = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    mask_rng = random.Random(config.seed)
    mask_generator = torch.Generator().manual_seed(config.seed)
    test_arrays, val_arrays = arrays.take(test_ids), arrays.take(val_ids)
    primary_mode = spec.modes[0]
    best_val = math.inf
    last_saved = time.monotonic()
    history: list[dict] = []
    started = time.monotonic()
    epochs = tqdm(range(config.epochs), desc=f"{spec.name}", unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False, disable=not progress)
        for batch_index, (images, masks, y) in enumerate(batches):
            y = y.to(device)
            if config.mask_schedule == "random" and spec.per_scan_mask_choice:
                given = torch.rand(len(y), generator=mask_generator) < 0.5
                output = model(*model_input(spec, images, masks, "mask", device), mask_given=given.to(device))
                segmenting = True
            else:
                mode = "mask" if uses_mask(config, spec, epoch, mask_rng) else "image"
                output = model(*model_input(spec, images, masks, mode, device))
                segmenting = mode == "image"
            loss = F.cross_entropy(output.logits, y, weight=class_weight, label_smoothing=config.label_smoothing)
            if output.lesion_logits is not None and segmenting and config.segmentation_weight > 0:
                loss = loss + config.segmentation_weight * segmentation_loss(output.lesion_logits, masks.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (output.logits.argmax(1) == y).sum().item()
            seen += len(y)
            elapsed = time.monotonic() - started
            done = epoch * len(loader) + batch_index + 1
            status.write("running", force=False, epoch=epoch, epochs=config.epochs, batch=batch_index + 1,
                         batches=len(loader), seconds_left=round(elapsed / done * (total_steps - done)))
        entry = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - started, 1),
                 "train": {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}, "heldout": {}, "validation": {}}
        for mode in spec.modes:
            if test_ids:
                entry["heldout"][mode] = heldout_metrics(predict_arrays(model, spec, test_arrays, mode, device))
            if val_ids:
                entry["validation"][mode] = heldout_metrics(predict_arrays(model, spec, val_arrays, mode, device))
        history.append(entry)
        write_json(run_dir / "history.json", history)
        tag = {"arch": spec.name, "epoch": str(epoch + 1)}
        final = epoch + 1 == config.epochs
        # Large models write hundreds of MB per checkpoint: refresh "last" at most every two minutes.
        if final or time.monotonic() - last_saved > 120:
            save_weights(run_dir / "last.safetensors", model, tag)
            last_saved = time.monotonic()
        if val_ids and entry["validation"][primary_mode]["loss"] < best_val:
            best_val = entry["validation"][primary_mode]["loss"]
            save_weights(run_dir / "best.safetensors", model, tag)
        elif not val_ids and final:
            save_weights(run_dir / "best.safetensors", model, tag)
        summary = {m: round(v["accuracy"], 3) for m, v in entry["heldout"].items()}
        log(f"epoch {epoch + 1}: train loss {entry['train']['loss']:.4f} acc {entry['train']['accuracy']:.3f}; held-out acc {summary}")
        epochs.set_postfix(loss=f"{entry['train']['loss']:.3f}", **{f"acc_{m}": a for m, a in summary.items()})
        status.write("running", epoch=epoch + 1, epochs=config.epochs, batch=len(loader), batches=len(loader))

    calibration = {}
    if val_ids:
        from .runs import load_weights

        load_weights(run_dir / "best.safetensors", model)
        for mode in spec.modes:
            predictions = predict_arrays(model, spec, val_arrays, mode, device)
            calibration[mode] = fit_temperature(predictions.logits, predictions.labels)
    write_json(run_dir / "calibration.json", {"temperature": {m: calibration.get(m, 1.0) for m in spec.modes},
                                              "fitted_on": "inner validation split" if val_ids else "not fitted"})
    log(f"finished; temperature {calibration or 'not fitted (no validation split)'}")
    status.write("finished", epoch=config.epochs, epochs=config.epochs, batch=len(loader), batches=len(loader))
