"""The training loop: one TrainConfig in, one consistent run folder out.

Per epoch it appends to ``history.json`` (train loss and accuracy; held-out loss, accuracy, macro
precision/recall/F1 and per-class recall for each inference mode), writes ``last.safetensors`` and,
when the inner validation loss improves, ``best.safetensors``. At the end it fits a temperature per
mode on the inner validation split (never on the test fold). Ctrl-C or SIGTERM marks the run
cancelled and leaves every file whole.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same function runs on every rank: data-parallel training
with DistributedDataParallel and a DistributedSampler, ``config.batch_size`` split evenly over the
ranks, epoch tallies reduced over ranks and held-out predictions gathered from every rank's shard, so
the figures are those of the whole data; only rank 0 writes the run folder (see ``distributed.py``).
``last.state.pt`` (optimizer, scheduler, epoch, RNG) is written with ``last.safetensors``, so
``train(..., resume=RUN)`` (``imagemasknet train --resume RUN``) continues an interrupted run.
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

from imagemasknet.training import distributed
from imagemasknet.training.config import TrainConfig
from imagemasknet.data.busi import CLASSES, Arrays, load_arrays
from imagemasknet.evaluation.evaluate import Predictions, predict_arrays
from imagemasknet.evaluation.metrics import fit_temperature, point_metrics, softmax
from imagemasknet.models import ModelSpec, build_model, get_spec
from imagemasknet.core.paths import runs_root
from imagemasknet.models.weights import load_state, save_state, save_weights
from imagemasknet.core.files import now, read_json, write_json
from imagemasknet.data.splits import inner_validation, resolve_split
from imagemasknet.data.transforms import augment_pair, build_augmentation, model_input


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


def segmentation_loss(lesion_logits: torch.Tensor, masks: torch.Tensor,
                      lesion_scans: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on every scan plus soft Dice on the scans that have a lesion.

    The Dice term is averaged over ``lesion_scans`` scans (default: this batch's lesion scans; in
    distributed training, this rank's share of the global batch's, so ranks average like one batch)."""
    target = masks.float()
    bce = F.binary_cross_entropy_with_logits(lesion_logits, target)
    has_lesion = target.flatten(1).sum(1) > 0
    if lesion_scans is None:
        lesion_scans = has_lesion.sum()
    if not lesion_scans > 0:
        return bce
    p = torch.sigmoid(lesion_logits[has_lesion]).flatten(1)
    t = target[has_lesion].flatten(1)
    soft_dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + (1 - soft_dice).sum() / lesion_scans


class TrainingStep(torch.nn.Module):
    """One batch's loss as a module, the one thing DistributedDataParallel wraps.

    The loss is a sum over the batch's scans divided by normalisers (scans or summed class weights;
    lesion scans for Dice) that :func:`distributed.share_denominators` turns into this rank's share of
    the global batch's, so the gradients DDP averages equal one process's on the whole global batch
    (batch-norm statistics aside: each rank normalises over its own scans). DDP sees only the loss,
    so parameters a step leaves unused (the lesion head in mask mode) are recognised as unused.
    With ``mix = (order, weight)`` (mixup) each scan is blended with scan ``order[i]`` of the batch:
    images and masks as ``weight * own + (1 - weight) * other``, and the loss is the same blend of the
    losses against the two labels. Returns ``(loss, detached class logits)``.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, config: TrainConfig,
                 class_weight: torch.Tensor | None = None):
        super().__init__()
        self.model, self.spec = model, spec
        self.label_smoothing, self.segmentation_weight = config.label_smoothing, config.segmentation_weight
        self.class_weight = class_weight
        self.bf16 = config.precision == "bf16"

    def forward(self, images: torch.Tensor, masks: torch.Tensor, y: torch.Tensor, mode: str,
                given: torch.Tensor | None = None,
                mix: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = y.device
        order, weight = mix if mix is not None else (None, 1.0)
        if order is not None:
            images = weight * images + (1 - weight) * images[order]
            masks = masks.float()
            masks = weight * masks + (1 - weight) * masks[order]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if given is not None:  # models that pick the given or the predicted lesion per scan
                output = self.model(*model_input(self.spec, images, masks, "mask", device), mask_given=given)
                segmenting = True
            else:
                output = self.model(*model_input(self.spec, images, masks, mode, device))
                segmenting = mode == "image"
        logits = output.logits.float()
        lesion_logits = output.lesion_logits.float() if output.lesion_logits is not None else None
        masks = masks.to(device)
        has_lesion = masks.flatten(1).any(1)
        labels = [(y, weight)] + ([(y[order.to(device)], 1 - weight)] if order is not None else [])
        weights = sum(share * (self.class_weight[target] if self.class_weight is not None else torch.ones(len(y), device=device))
                      for target, share in labels)
        shares = distributed.share_denominators(torch.stack([weights.sum(), has_lesion.sum().float()]))
        loss = sum(share * F.cross_entropy(logits, target, weight=self.class_weight, label_smoothing=self.label_smoothing,
                                           reduction="sum") for target, share in labels) / shares[0]
        if lesion_logits is not None and segmenting and self.segmentation_weight > 0:
            loss = loss + self.segmentation_weight * segmentation_loss(lesion_logits, masks, shares[1])
        return loss, logits.detach()


class EpochAverage:
    """The running mean of a model's weights and buffers at the end of each epoch from ``first`` on
    (integer buffers, such as batch-norm step counts, keep their latest value)."""

    def __init__(self, first: int):
        self.first, self.count, self.sums = first, 0, {}

    def add(self, epoch: int, model: torch.nn.Module) -> None:
        if epoch < self.first:
            return
        self.count += 1
        for name, value in model.state_dict().items():
            value = value.detach().to("cpu")
            if value.is_floating_point():
                self.sums[name] = self.sums[name] + value.double() if name in self.sums else value.double()
            else:
                self.sums[name] = value.clone()

    def module_like(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the average."""
        import copy

        averaged = copy.deepcopy(model)
        reference = model.state_dict()
        averaged.load_state_dict({name: (total / self.count if total.is_floating_point() else total).to(reference[name].dtype)
                                  for name, total in self.sums.items()})
        return averaged

    def state_dict(self) -> dict:
        return {"first": self.first, "count": self.count, "sums": self.sums}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.first, self.count, self.sums = int(state["first"]), int(state["count"]), dict(state["sums"])


def uses_mask(config: TrainConfig, spec: ModelSpec, epoch: int, rng: random.Random) -> bool:
    if spec.needs_mask or config.mask_schedule == "always":
        return True
    if not spec.accepts_mask or config.mask_schedule == "never":
        return False
    if config.mask_schedule == "first-half":
        return epoch < config.epochs // 2
    return rng.random() < 0.5


def heldout_metrics(predictions: Predictions, halves: bool = False) -> dict[str, float]:
    """``halves``: also the loss on each half of the scans (alternate scans in split order), so a
    checkpoint rule that picks an epoch by validation loss can be scored on the half it did not see."""
    logits = torch.from_numpy(predictions.logits)
    labels = torch.from_numpy(predictions.labels)
    loss = F.cross_entropy(logits, labels).item()
    metrics = point_metrics(softmax(predictions.logits), predictions.labels)
    keep = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc"] + [f"recall_{c}" for c in CLASSES]
    out = {"loss": loss, **{k: metrics[k] for k in keep}}
    if halves and len(labels) > 1:
        out["loss_halves"] = [F.cross_entropy(logits[start::2], labels[start::2]).item() for start in (0, 1)]
    if not np.isnan(predictions.dice).all():
        out["lesion_dice"] = float(np.nanmean(predictions.dice))
    return out


@dataclass
class _Status:
    path: Path
    started: str
    last_write: float = 0.0
    enabled: bool = True  # False on ranks other than 0: only rank 0 writes the run folder

    def write(self, state: str, force: bool = True, **fields) -> None:
        if not self.enabled or (not force and time.monotonic() - self.last_write < 1.0):
            return
        self.last_write = time.monotonic()
        write_json(self.path, {"state": state, "started": self.started, "updated": now(), "pid": os.getpid(), **fields})


class _Log:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(f"{now()} {message}\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM: under torchrun, the launcher stopping this rank (another rank failed, or the job was
    cancelled); otherwise handled like Ctrl-C."""


def _raise_interrupt(signum, frame):
    raise Terminated(f"signal {signum}")


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


STATE_FILE = "last.state.pt"
AVERAGE_FILE = "average.safetensors"  # the average of the last epochs' weights (runs with averaged_epochs > 0)
EMA_FILE = "last-ema.safetensors"  # the moving average at the last checkpoint (runs with ema_decay > 0)


def resume_config(run_dir: Path | str) -> TrainConfig:
    """The config of a run folder, to continue it with ``train(config, resume=run_dir)``."""
    values = read_json(Path(run_dir) / "config.json")
    if not isinstance(values, dict):
        raise FileNotFoundError(f"{run_dir} is not a run folder (no readable config.json)")
    return TrainConfig.from_dict(values)


def _check_resumable(run_dir: Path, config: TrainConfig) -> dict:
    """The run's status, after checking that it can be continued with ``config``."""
    from imagemasknet.core.run_folder import RunFolder

    run = RunFolder(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    if not (run_dir / STATE_FILE).is_file() or not (run_dir / "last.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint to resume from (last.safetensors + {STATE_FILE}): "
                                "it stopped before its first epoch ended; start it again")
    if run.state == "running":
        raise ValueError(f"{run_dir} is still running (pid {run.status.get('pid')}); stop it before resuming")
    if run.state == "finished":
        raise ValueError(f"{run_dir} already finished; nothing to resume")
    if TrainConfig.from_dict(run.config).to_dict() != config.to_dict():  # settings added since count as defaults
        raise ValueError(f"resume {run_dir} with its own config.json (train --resume takes no other settings)")
    from safetensors import safe_open

    state_epoch = load_state(run_dir / STATE_FILE).get("epoch")
    for name in ("last.safetensors", EMA_FILE) if config.ema_decay > 0 else ("last.safetensors",):
        try:
            with safe_open(str(run_dir / name), "pt") as weights:
                weights_epoch = (weights.metadata() or {}).get("epoch")
        except OSError:
            weights_epoch = None
        if str(weights_epoch) != str(state_epoch):
            raise ValueError(f"cannot resume {run_dir}: {name} is from epoch {weights_epoch} but "
                             f"{STATE_FILE} from epoch {state_epoch} (the run stopped between the writes)")
    return run.status


def train(config: TrainConfig, progress: bool = True, resume: Path | str | None = None) -> Path:
    """Train as ``config`` says; returns the run folder.

    ``resume``: a run folder that stopped early (cancelled, failed, killed); training continues after
    its last checkpoint, with the run's own config (:func:`resume_config`). Under torchrun every rank
    calls this with the same arguments (see the module docstring); a job torchrun restarts after a
    failure (``--max-restarts``) with ``--out-dir`` resumes that folder by itself.
    """
    config.validated()
    world, device = distributed.init(config.device)
    try:
        return _train(config, progress, resume, world, device)
    finally:
        if world.enabled:
            distributed.cleanup()


def _train(config: TrainConfig, progress: bool, resume: Path | str | None, world: distributed.World,
           device: torch.device) -> Path:
    spec = get_spec(config.arch)
    if config.batch_size % world.world_size:
        raise ValueError(f"batch_size: the global batch of {config.batch_size} does not split evenly over "
                         f"{world.world_size} ranks; use a multiple of {world.world_size}")
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if resume is None and world.enabled and restarted and config.out_dir and (Path(config.out_dir) / STATE_FILE).is_file():
        resume = config.out_dir  # torchrun restarted the job after a failure: continue the same run
    resume = distributed.broadcast(resume)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from imagemasknet.data.owndata import load_training_data

    data = load_training_data(config.data, config.data_mode)  # BUSI, the user's data, or both
    with distributed.main_first():  # rank 0 decodes and fills the cache; the other ranks then read it
        arrays = load_arrays(data, config.image_size, progress=progress and world.is_main)
    if resume is not None:
        run_dir = Path(resume)
        previous = distributed.on_main(lambda: _check_resumable(run_dir, config))
        split = read_json(run_dir / "split.json", {}) or {}
        train_ids, val_ids, test_ids = (list(split.get(k, [])) for k in ("train", "validation", "test"))
        missing = set(train_ids + val_ids + test_ids) - set(arrays.ids)
        if missing or not train_ids:
            raise ValueError(f"cannot resume {run_dir}: its split.json names {len(missing)} scans the data set "
                             "does not have" if missing else f"cannot resume {run_dir}: no training scans in split.json")
        started = previous.get("started") or now()
    else:
        labels = {c.id: c.label for c in data.cases}
        train_ids, test_ids = resolve_split(data, config.fold, config.split_file)
        train_ids, val_ids = inner_validation(train_ids, labels, data, config.val_fraction, config.seed)
        train_ids = evenly_spaced(train_ids, labels, config.limit)
        val_ids = evenly_spaced(val_ids, labels, config.limit and max(3, config.limit // 4))
        test_ids = evenly_spaced(test_ids, labels, config.limit)
        run_dir = Path(distributed.on_main(lambda: str(new_run_dir(config))))
        started = now()

    main = world.is_main
    log = _Log(run_dir / "log.txt", enabled=main)
    status = _Status(run_dir / "status.json", started, enabled=main)
    state = load_state(run_dir / STATE_FILE) if resume is not None else None
    if main and state is None:
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "split.json", {"train": train_ids, "validation": val_ids, "test": test_ids})
        write_json(run_dir / "history.json", [])
    first_epoch = int(state["epoch"]) if state else 0
    status.write("running", epoch=first_epoch, epochs=config.epochs, batch=0, batches=0)
    where = f"{device}" if not world.enabled else (
        f"{world.world_size} ranks ({world.backend}, {device.type}), global batch {config.batch_size} = "
        f"{world.world_size} × {config.batch_size // world.world_size}")
    log(f"{'resumed after epoch ' + str(first_epoch) + ' of' if state else 'run'} {run_dir.name}: {spec.name} on "
        f"{where}, {len(train_ids)} train / {len(val_ids)} validation / {len(test_ids)} test scans")
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        _fit(config, spec, device, arrays, train_ids, val_ids, test_ids, run_dir, status, log, progress and main,
             world, state)
    except BaseException as error:
        try:
            _record_stop(error, world, run_dir, status, log)
        except KeyboardInterrupt:  # the launcher's SIGTERM landed while the first error was being recorded
            _record_stop(error, world, run_dir, status, log)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return run_dir


def _record_stop(error: BaseException, world: distributed.World, run_dir: Path, status: _Status, log: _Log) -> None:
    """Mark the run cancelled (Ctrl-C; SIGTERM in a single process) or failed, with a message that
    says, under torchrun, whether another rank failed (and which, when it could tell)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: a SIGTERM must not cut this short
    if isinstance(error, KeyboardInterrupt) and not (world.enabled and isinstance(error, Terminated)):
        log("cancelled")
        status.write("cancelled", **_progress_fields(run_dir))
        return
    if isinstance(error, Terminated):
        notice = distributed.failure_notice() if world.is_main else None
        message = (f"another rank failed: {notice}" if notice else "stopped by SIGTERM from the launcher: another "
                   "rank failed or the job was cancelled (torchrun's output names which rank and why)")
    else:
        message = f"{type(error).__name__}: {error}"
        if world.enabled and distributed.is_comm_error(error):
            notice = distributed.failure_notice() if world.is_main else None
            message = (f"lost contact with another rank ({notice or 'it stopped; torchrun names which and why'}): "
                       f"{message}")
        elif world.enabled and isinstance(error, Exception):
            distributed.report_failure(error)
    log(f"failed: {message}")
    status.write("failed", error=message, **_progress_fields(run_dir))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress_fields(run_dir: Path) -> dict:
    from imagemasknet.core.files import read_json

    history = read_json(run_dir / "history.json", []) or []
    return {"epoch": len(history)}


def _fit(config, spec, device, arrays, train_ids, val_ids, test_ids, run_dir, status, log, progress,
         world: distributed.World | None = None, state: dict | None = None):
    world = world or distributed.World()
    main = world.is_main
    model = build_model(spec.name, pretrained=True, image_size=config.image_size).to(device)
    if config.frozen_blocks:
        model.freeze_encoder(config.frozen_blocks)
    if config.precision == "bf16":
        model = model.to(memory_format=torch.channels_last)  # oneDNN's bfloat16 convolutions are fastest on it
    dataset = ScanDataset(arrays.take(train_ids), config.augment, config.image_size)
    generator = torch.Generator().manual_seed(config.seed)
    per_rank = config.batch_size // world.world_size
    sampler = None
    if world.enabled:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=config.seed,
            drop_last=len(dataset) >= world.world_size)  # every rank gets as many scans, so batches match
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_rank, shuffle=sampler is None, sampler=sampler,
        generator=generator if sampler is None else None, num_workers=config.num_workers,
        drop_last=len(sampler if sampler is not None else dataset) > per_rank,
        persistent_workers=config.num_workers > 0, pin_memory=device.type == "cuda",
    )
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                weight_decay=config.weight_decay)
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
    step = TrainingStep(model, spec, config, class_weight)
    # What is evaluated, checkpointed and shipped: the weights themselves, or their moving average.
    averaged = None
    if config.ema_decay > 0:
        averaged = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    evaluated = averaged.module if averaged is not None else model
    window = EpochAverage(config.epochs - config.averaged_epochs) if config.averaged_epochs else None
    if world.enabled:
        # Every parameter takes part in each step only when the model picks its mask per scan and segments.
        all_used = config.mask_schedule == "random" and spec.per_scan_mask_choice and config.segmentation_weight > 0
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=not all_used)
    mask_rng = random.Random(config.seed)
    mask_generator = torch.Generator().manual_seed(config.seed)
    test_arrays, val_arrays = arrays.take(test_ids), arrays.take(val_ids)
    primary_mode = spec.modes[0]
    best_val = math.inf
    history: list[dict] = []
    first_epoch = 0
    if state is not None:
        from imagemasknet.models.weights import load_weights

        load_weights(run_dir / "last.safetensors", model)
        if averaged is not None:
            load_weights(run_dir / EMA_FILE, averaged.module)
            averaged.n_averaged.fill_(1)  # any count above zero: the next update averages, not copies
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch, best_val = int(state["epoch"]), float(state["best_val"])
        if window is not None:
            window.load_state_dict(state.get("epoch_average") or {})
        generator.set_state(state["rng"]["loader"])
        mask_generator.set_state(state["rng"]["mask"])
        mask_rng.setstate(_as_tuple(state["rng"]["mask_rng"]))
        if not world.enabled:
            torch.set_rng_state(state["rng"]["torch"])
        history = (read_json(run_dir / "history.json", []) or [])[:first_epoch]
        if main:
            write_json(run_dir / "history.json", history)  # epochs after the checkpoint are trained again
    last_saved = -math.inf  # "last" is written after the first epoch, then as below
    started = time.monotonic()
    steps_left = (config.epochs - first_epoch) * len(loader)
    epochs = tqdm(range(first_epoch, config.epochs), desc=f"{spec.name}", unit="epoch", disable=not progress)
    for epoch in epochs:
        if sampler is not None:
            sampler.set_epoch(epoch)
            # Each rank its own augmentation and dropout draws, fixed per epoch so a resumed run repeats them.
            torch.manual_seed(config.seed * 1_000_003 + 4099 * epoch + world.rank)
        step.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False, disable=not progress)
        for batch_index, (images, masks, y) in enumerate(batches):
            distributed.injected_fault(epoch + 1, batch_index + 1)
            y = y.to(device)
            given, mode = None, "mask"
            if config.mask_schedule == "random" and spec.per_scan_mask_choice:
                # One draw for the global batch, the same on every rank; each rank takes its slice.
                draw = torch.rand(len(y) * world.world_size, generator=mask_generator) < 0.5
                given = draw[world.rank * len(y):(world.rank + 1) * len(y)].to(device)
            else:
                mode = "mask" if uses_mask(config, spec, epoch, mask_rng) else "image"
            mix = None
            if config.mixup_alpha > 0:
                # Drawn from (seed, epoch, batch, rank) alone, so a resumed run blends as the uninterrupted one.
                blend_rng = np.random.default_rng([config.seed, epoch, batch_index, world.rank])
                mix = (torch.from_numpy(blend_rng.permutation(len(y))), float(blend_rng.beta(config.mixup_alpha, config.mixup_alpha)))
            loss, logits = step(images, masks, y, mode, given, mix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            loss_sum += loss.item() * len(y)
            dominant = y[mix[0].to(device)] if mix is not None and mix[1] < 0.5 else y  # a blend counts as its larger part
            correct += (logits.argmax(1) == dominant).sum().item()
            seen += len(y)
            elapsed = time.monotonic() - started
            done = (epoch - first_epoch) * len(loader) + batch_index + 1
            status.write("running", force=False, epoch=epoch, epochs=config.epochs, batch=batch_index + 1,
                         batches=len(loader), seconds_left=round(elapsed / done * (steps_left - done)))
        # Train figures over every rank's scans: sums reduced over ranks, per-rank tallies kept beside them.
        total_loss, total_correct, total_seen = distributed.all_reduce_sum([loss_sum, correct, seen])
        train_entry = {"loss": total_loss / max(total_seen, 1), "accuracy": total_correct / max(total_seen, 1)}
        if world.enabled:
            tallies = distributed.all_gather((loss_sum, correct, seen))
            train_entry.update(scans=int(total_seen), ranks=[
                {"rank": r, "loss": l / max(n, 1), "accuracy": c / max(n, 1), "scans": n} for r, (l, c, n) in enumerate(tallies)])
        entry = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - started, 1),
                 "train": train_entry, "heldout": {}, "validation": {}}
        distributed.sync_buffers(model)  # evaluate and save rank 0's batch-norm statistics on every rank
        if averaged is not None:
            distributed.sync_buffers(evaluated)
        for mode in spec.modes:
            if test_ids:
                entry["heldout"][mode] = heldout_metrics(_predict(evaluated, spec, test_arrays, mode, device))
            if val_ids:
                entry["validation"][mode] = heldout_metrics(_predict(evaluated, spec, val_arrays, mode, device), halves=True)
        history.append(entry)
        if window is not None:
            window.add(epoch, evaluated)
        tag = {"arch": spec.name, "epoch": str(epoch + 1)}
        final = epoch + 1 == config.epochs
        improved = bool(val_ids) and entry["validation"][primary_mode]["loss"] < best_val
        if improved:
            best_val = entry["validation"][primary_mode]["loss"]
        if main:
            write_json(run_dir / "history.json", history)
            # Large models write hundreds of MB per checkpoint: refresh "last" at most every two minutes,
            # but always after the first and final epochs and with every new best (so a resumed run never
            # holds a best checkpoint newer than its last one).
            if final or improved or time.monotonic() - last_saved > 120:
                save_weights(run_dir / "last.safetensors", model, tag)
                if averaged is not None:
                    save_weights(run_dir / EMA_FILE, evaluated, tag)
                save_state(run_dir / STATE_FILE, {
                    "epoch": epoch + 1, "best_val": best_val, "world_size": world.world_size,
                    "epoch_average": window.state_dict() if window is not None else {},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": {"loader": generator.get_state(), "mask": mask_generator.get_state(),
                            "mask_rng": list(mask_rng.getstate()), "torch": torch.get_rng_state()},
                })
                last_saved = time.monotonic()
            if final and window is not None:
                save_weights(run_dir / AVERAGE_FILE, window.module_like(evaluated),
                             {**tag, "averaged_epochs": f"{window.first + 1}-{epoch + 1}"})
            if config.checkpoint == "lowest-loss" and (improved or (not val_ids and final)):
                save_weights(run_dir / "best.safetensors", evaluated, tag)
            elif config.checkpoint != "lowest-loss" and final:
                chosen = window.module_like(evaluated) if config.checkpoint == "average" else evaluated
                save_weights(run_dir / "best.safetensors", chosen, {**tag, "rule": config.checkpoint})
        summary = {m: round(v["accuracy"], 3) for m, v in entry["heldout"].items()}
        log(f"epoch {epoch + 1}: train loss {entry['train']['loss']:.4f} acc {entry['train']['accuracy']:.3f}; held-out acc {summary}")
        epochs.set_postfix(loss=f"{entry['train']['loss']:.3f}", **{f"acc_{m}": a for m, a in summary.items()})
        status.write("running", epoch=epoch + 1, epochs=config.epochs, batch=len(loader), batches=len(loader))

    calibration = {}
    if main:
        if val_ids:
            from imagemasknet.models.weights import load_weights

            load_weights(run_dir / "best.safetensors", model)
            for mode in spec.modes:
                predictions = predict_arrays(model, spec, val_arrays, mode, device)
                calibration[mode] = fit_temperature(predictions.logits, predictions.labels)
        write_json(run_dir / "calibration.json", {"temperature": {m: calibration.get(m, 1.0) for m in spec.modes},
                                                  "fitted_on": "inner validation split" if val_ids else "not fitted"})
    log(f"finished; temperature {calibration or 'not fitted (no validation split)'}")
    status.write("finished", epoch=config.epochs, epochs=config.epochs, batch=len(loader), batches=len(loader))
    distributed.barrier()


def _predict(model, spec, arrays: Arrays, mode: str, device) -> Predictions:
    """Held-out predictions over all of ``arrays``: in one process directly, under torchrun each rank
    its shard, gathered in order (the same predictions either way)."""
    return distributed.gather_predictions(lambda ids: predict_arrays(model, spec, arrays.take(ids), mode, device),
                                          list(arrays.ids))


def _as_tuple(value):
    """``random.Random.getstate()`` back from its saved lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
