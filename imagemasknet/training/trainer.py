"""The training loop: one TrainConfig in, one consistent run folder out.

Per epoch it appends to ``history.json`` (train loss and accuracy; held-out loss, accuracy, macro
precision/recall/F1 and per-class recall for each inference mode) and hands the weights to the
:class:`~imagemasknet.training.checkpoint.Checkpointer` (``last`` and ``best``). At the end it fits a
temperature per mode on the inner validation split (never on the test fold). Ctrl-C or SIGTERM marks the
run cancelled and leaves every file whole.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same function runs on every rank: data-parallel training
with DistributedDataParallel and a DistributedSampler (or, with ``normal_crops`` or ``source_balanced``, one
shared EpochDraw split between the ranks), ``config.batch_size`` split evenly over the
ranks, epoch tallies reduced over ranks and held-out predictions gathered from every rank's shard, so
the figures are those of the whole data; only rank 0 writes the run folder (see ``distributed.py``).
``train(..., resume=RUN)`` (``imagemasknet train --resume RUN``) continues an interrupted run from its
last checkpoint.
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from imagemasknet.core.files import now
from imagemasknet.core.paths import runs_root
from imagemasknet.core.run_folder import BEST, SOFT_TARGETS, STATE, RunFolder, new_run_name
from imagemasknet.data.dataset import CLASSES, Arrays, Dataset, load_arrays
from imagemasknet.data.lesion_free import lesion_free_crops
from imagemasknet.data.sources import load_training_set
from imagemasknet.data.splits import inner_validation, resolve_split
from imagemasknet.evaluation.evaluate import Predictions, predict_arrays
from imagemasknet.evaluation.metrics import fit_temperature
from imagemasknet.models import ModelSpec, build_model, get_spec
from imagemasknet.models.weights import load_weights
from imagemasknet.training import distributed
from imagemasknet.training.checkpoint import Checkpointer, Trainables, check_resumable
from imagemasknet.training.config import TrainConfig
from imagemasknet.training.soft_targets import SoftTargets, label_targets, load_soft_targets
from imagemasknet.training.step import (EpochAverage, EpochDraw, ScanDataset, TrainingStep, concatenate,
                                        heldout_metrics, uses_mask)


@dataclass(frozen=True)
class Split:
    """The scans a run trains on, picks its checkpoint and calibrates on (validation), and reports (test)."""

    train: list[str]
    validation: list[str]
    test: list[str]


@dataclass
class _Reporter:
    """Where a run says how it goes: status.json, log.txt and (on the main rank) the progress bars."""

    status: "_Status"
    log: "_Log"
    progress: bool


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


def new_split(config: TrainConfig, data: Dataset) -> Split:
    """The scans a new run of ``config`` on ``data`` trains on, validates on and reports on (a resumed run reads
    its own split.json instead)."""
    labels = {c.id: c.label for c in data.cases}
    train, test = resolve_split(data, config.fold, config.split_file)
    train, validation = inner_validation(train, data, config.val_fraction, config.seed)
    return Split(evenly_spaced(train, labels, config.limit),
                 evenly_spaced(validation, labels, config.limit and max(3, config.limit // 4)),
                 evenly_spaced(test, labels, config.limit))


@dataclass
class _Status:
    folder: RunFolder
    started: str
    last_write: float = 0.0
    enabled: bool = True  # False on ranks other than 0: only rank 0 writes the run folder

    def write(self, state: str, force: bool = True, **fields) -> None:
        if not self.enabled or (not force and time.monotonic() - self.last_write < 1.0):
            return
        self.last_write = time.monotonic()
        self.folder.write_status(state, started=self.started, pid=os.getpid(), **fields)


class _Log:
    def __init__(self, folder: RunFolder, enabled: bool = True):
        self.folder, self.enabled = folder, enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            self.folder.append_log(message)


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
        path = runs_root() / new_run_name(config.arch, runs_root())
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    if resume is None and world.enabled and restarted and config.out_dir and (Path(config.out_dir) / STATE).is_file():
        resume = config.out_dir  # torchrun restarted the job after a failure: continue the same run
    resume = distributed.broadcast(resume)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = load_training_set(config.sources, config.data, config.data_mode)
    with distributed.main_first():  # rank 0 decodes and fills the cache; the other ranks then read it
        arrays = load_arrays(data, config.image_size, progress=progress and world.is_main,
                             paint_out_annotations=config.paint_out_annotations)
    if resume is not None:
        run_dir = Path(resume)
        previous = distributed.on_main(lambda: check_resumable(run_dir, config))
        split = RunFolder(run_dir).split
        train_ids, val_ids, test_ids = (split.get(k, []) for k in ("train", "validation", "test"))
        missing = set(train_ids + val_ids + test_ids) - set(arrays.ids)
        if missing or not train_ids:
            raise ValueError(f"cannot resume {run_dir}: its split.json names {len(missing)} scans the data set "
                             "does not have" if missing else f"cannot resume {run_dir}: no training scans in split.json")
        started = previous.get("started") or now()
    else:
        planned = new_split(config, data)
        train_ids, val_ids, test_ids = planned.train, planned.validation, planned.test
    teacher = None
    if config.soft_targets:  # checked before a run folder exists; a resumed run reads the copy it kept
        kept = Path(resume) / SOFT_TARGETS if resume is not None else None
        teacher = load_soft_targets(kept if kept is not None and kept.is_file() else config.soft_targets, data,
                                    train_ids, val_ids + test_ids, spec.modes)
    if resume is None:
        run_dir = Path(distributed.on_main(lambda: str(new_run_dir(config))))
        started = now()

    main = world.is_main
    folder = RunFolder(run_dir)
    log = _Log(folder, enabled=main)
    status = _Status(folder, started, enabled=main)
    checkpointer = Checkpointer(run_dir, config, world.world_size, writes=main)
    state = checkpointer.saved_state() if resume is not None else None
    if main and state is None:
        folder.write_config(config.to_dict())
        folder.write_split(train_ids, val_ids, test_ids)
        if teacher is not None:
            folder.write_soft_targets(teacher.table)
        folder.write_history([])
    first_epoch = int(state["epoch"]) if state else 0
    status.write("running", epoch=first_epoch, epochs=config.epochs, batch=0, batches=0)
    where = f"{device}" if not world.enabled else (
        f"{world.world_size} ranks ({world.backend}, {device.type}), global batch {config.batch_size} = "
        f"{world.world_size} × {config.batch_size // world.world_size}")
    log(f"{'resumed after epoch ' + str(first_epoch) + ' of' if state else 'run'} {run_dir.name}: {spec.name} on "
        f"{where}, {len(train_ids)} train / {len(val_ids)} validation / {len(test_ids)} test scans")
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        _fit(config, spec, device, data, arrays, Split(train_ids, val_ids, test_ids), teacher, checkpointer,
             _Reporter(status, log, progress and main), world, state)
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
    return threading.current_thread() is threading.main_thread()


def _progress_fields(run_dir: Path) -> dict:
    return {"epoch": RunFolder(run_dir).epochs_done}


def _fit(config: TrainConfig, spec: ModelSpec, device: torch.device, data: Dataset, arrays: Arrays, split: Split,
         teacher: SoftTargets | None, checkpointer: Checkpointer, report: _Reporter, world: distributed.World,
         state: dict | None) -> None:
    """Train, evaluate and checkpoint epoch by epoch (from the checkpoint in ``state``, when resuming), then
    calibrate. ``teacher``: the training scans' soft targets (distillation), in ``split.train``'s order."""
    loop = _build(config, spec, device, arrays.take(split.train), teacher.probabilities if teacher else None, data,
                  world)
    resumed = (checkpointer.restore(state, loop.parts, restore_torch_rng=not world.enabled) if state is not None
               else None)
    history = resumed.history if resumed else []
    first_epoch = resumed.first_epoch if resumed else 0
    best_val = resumed.best_val if resumed else math.inf
    test_arrays, val_arrays = arrays.take(split.test), arrays.take(split.validation)
    primary_mode = spec.modes[0]
    started = time.monotonic()
    epochs = tqdm(range(first_epoch, config.epochs), desc=f"{spec.name}", unit="epoch", disable=not report.progress)
    for epoch in epochs:
        train_entry = _train_epoch(loop, config, spec, device, epoch, first_epoch, started, report, world)
        entry = {"epoch": epoch + 1, "lr": loop.parts.scheduler.get_last_lr()[0],
                 "seconds": round(time.monotonic() - started, 1), "train": train_entry,
                 **_evaluate(loop.parts, spec, device, test_arrays, val_arrays)}
        history.append(entry)
        if loop.parts.window is not None:
            loop.parts.window.add(epoch, loop.parts.evaluated)
        final = epoch + 1 == config.epochs
        improved = bool(split.validation) and entry["validation"][primary_mode]["loss"] < best_val
        if improved:
            best_val = entry["validation"][primary_mode]["loss"]
        if world.is_main:
            RunFolder(checkpointer.run_dir).write_history(history)
        checkpointer.save(loop.parts, epoch, best_val, final=final, improved=improved,
                          validated=bool(split.validation))
        summary = {m: round(v["accuracy"], 3) for m, v in entry["heldout"].items()}
        report.log(f"epoch {epoch + 1}: train loss {train_entry['loss']:.4f} acc {train_entry['accuracy']:.3f}; "
                   f"held-out acc {summary}")
        epochs.set_postfix(loss=f"{train_entry['loss']:.3f}", **{f"acc_{m}": a for m, a in summary.items()})
        report.status.write("running", epoch=epoch + 1, epochs=config.epochs, batch=len(loop.loader),
                            batches=len(loop.loader))
        # Every rank waits for the epoch's checkpoint: a rank that dies early in the next epoch would otherwise
        # have the main process killed between writing the weights and the state, and nothing could resume.
        distributed.barrier()
    calibration = _calibrate(loop.parts.model, spec, device, val_arrays, checkpointer.run_dir) if world.is_main else {}
    report.log(f"finished; temperature {calibration or 'not fitted (no validation split)'}")
    report.status.write("finished", epoch=config.epochs, epochs=config.epochs, batch=len(loop.loader),
                        batches=len(loop.loader))
    distributed.barrier()


@dataclass
class _Loop:
    parts: Trainables
    loader: torch.utils.data.DataLoader
    sampler: DistributedSampler | None  # the EpochDraw needs no epoch: it draws from the saved generator
    step: torch.nn.Module  # the TrainingStep, wrapped in DistributedDataParallel under torchrun
    teacher: torch.Tensor | None  # each training item's soft targets per mode (distillation), by dataset index


def _build(config: TrainConfig, spec: ModelSpec, device: torch.device, train_arrays: Arrays,
           teacher: np.ndarray | None, data: Dataset, world: distributed.World) -> _Loop:
    """The model from its ImageNet weights, the loader, the optimiser and schedule, the averages, and the
    step (in this order: each draws from the seeded generators, so a run is reproducible). ``data``: where the
    lesion-free crops are cut from (``normal_crops``); their soft targets are their label."""
    model = build_model(spec.name, pretrained=True, image_size=config.image_size).to(device)
    if config.frozen_blocks:
        model.freeze_encoder(config.frozen_blocks)
    if config.precision == "bf16":
        model = model.to(memory_format=torch.channels_last)  # oneDNN's bfloat16 convolutions are fastest on it
    generator = torch.Generator().manual_seed(config.seed)
    per_rank = config.batch_size // world.world_size
    sampler = None
    if config.source_balanced or config.normal_crops:
        extra = round(config.normal_crops * len(train_arrays.ids))
        crops = (lesion_free_crops(data.subset(train_arrays.ids), config.image_size, config.paint_out_annotations)
                 if extra else None)
        if crops is not None:
            counts = distributed.all_gather(len(crops.ids))
            if len(set(counts)) > 1:  # the ranks would draw different items and their batch counts could differ
                raise RuntimeError(f"the ranks cut different numbers of lesion-free crops ({counts}): a scan read "
                                   "on one rank failed on another; check the data folder")
            extra = min(extra, len(crops.ids))
            train_arrays = concatenate(train_arrays, crops)
            if teacher is not None:
                teacher = np.concatenate([teacher, label_targets(crops.labels, len(spec.modes))])
        sampler = EpochDraw(train_arrays.sources, len(train_arrays.ids) - (len(crops.ids) if crops else 0), extra,
                            config.source_balanced, generator, world.rank, world.world_size)
    dataset = ScanDataset(train_arrays, config.augment, config.image_size)
    if world.enabled and sampler is None:
        sampler = DistributedSampler(
            dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=config.seed,
            drop_last=len(dataset) >= world.world_size)  # every rank gets as many scans, so batches match
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_rank, shuffle=sampler is None, sampler=sampler,
        generator=generator if sampler is None else None, num_workers=config.num_workers,
        drop_last=len(sampler if sampler is not None else dataset) > per_rank,
        # Workers start afresh each epoch and draw their seeds from the loader's generator (or, with a sampler, the
        # global torch RNG), both restored on resume and reseeded per epoch under torchrun, so a resumed run's
        # augmentations are the uninterrupted run's; persistent workers would keep their first-epoch seeds.
        persistent_workers=False, pin_memory=device.type == "cuda",
    )
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, len(loader)))
    counts = np.bincount(dataset.arrays.labels, minlength=len(CLASSES)).astype(np.float64)
    class_weight = None
    if config.class_balanced:
        class_weight = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    step = TrainingStep(model, spec, config, class_weight)
    averaged = None
    if config.ema_decay > 0:
        averaged = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    window = EpochAverage(config.epochs - config.averaged_epochs) if config.averaged_epochs else None
    if world.enabled:
        # Every parameter takes part in each step only when the model picks its mask per scan and segments.
        all_used = config.mask_schedule == "random" and spec.per_scan_mask_choice and config.segmentation_weight > 0
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=not all_used)
    parts = Trainables(model, averaged, window, optimizer, scheduler, generator,
                       mask_generator=torch.Generator().manual_seed(config.seed), mask_rng=random.Random(config.seed))
    return _Loop(parts, loader, sampler if isinstance(sampler, DistributedSampler) else None, step,
                 torch.from_numpy(teacher) if teacher is not None else None)


def _lr_factor(config: TrainConfig, batches: int):
    """The learning-rate multiplier per step: constant, or a linear warm-up over the first epoch (at most a
    tenth of the run) into a cosine decay."""
    total_steps = config.epochs * batches
    warmup = min(batches, total_steps // 10)

    def factor(step: int) -> float:
        if config.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def _train_epoch(loop: _Loop, config: TrainConfig, spec: ModelSpec, device: torch.device, epoch: int,
                 first_epoch: int, started: float, report: _Reporter, world: distributed.World) -> dict:
    """One pass over the training scans; the epoch's train loss and accuracy over every rank's scans."""
    parts, loader = loop.parts, loop.loader
    if loop.sampler is not None:
        loop.sampler.set_epoch(epoch)
    if world.enabled:
        # Each rank its own augmentation and dropout draws, fixed per epoch so a resumed run repeats them.
        torch.manual_seed(config.seed * 1_000_003 + 4099 * epoch + world.rank)
    loop.step.train()
    steps_left = (config.epochs - first_epoch) * len(loader)
    loss_sum, correct, seen = 0.0, 0, 0
    batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   disable=not report.progress)
    for batch_index, (images, masks, y, items) in enumerate(batches):
        distributed.injected_fault(epoch + 1, batch_index + 1)
        y = y.to(device)
        given, mode = None, "mask"
        if config.mask_schedule == "random" and spec.per_scan_mask_choice:
            # One draw for the global batch, the same on every rank; each rank takes its slice.
            draw = torch.rand(len(y) * world.world_size, generator=parts.mask_generator) < 0.5
            given = draw[world.rank * len(y):(world.rank + 1) * len(y)].to(device)
        else:
            mode = "mask" if uses_mask(config, spec, epoch, parts.mask_rng) else "image"
        mix = None
        if config.mixup_alpha > 0:
            # Drawn from (seed, epoch, batch, rank) alone, so a resumed run blends as the uninterrupted one.
            blend_rng = np.random.default_rng([config.seed, epoch, batch_index, world.rank])
            mix = (torch.from_numpy(blend_rng.permutation(len(y))), float(blend_rng.beta(config.mixup_alpha, config.mixup_alpha)))
        teacher = loop.teacher[items] if loop.teacher is not None else None
        loss, logits = loop.step(images, masks, y, mode, given, mix, teacher)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        parts.scheduler.step()
        if parts.averaged is not None:
            parts.averaged.update_parameters(parts.model)
        loss_sum += loss.item() * len(y)
        dominant = y[mix[0].to(device)] if mix is not None and mix[1] < 0.5 else y  # a blend counts as its larger part
        correct += (logits.argmax(1) == dominant).sum().item()
        seen += len(y)
        elapsed = time.monotonic() - started
        done = (epoch - first_epoch) * len(loader) + batch_index + 1
        report.status.write("running", force=False, epoch=epoch, epochs=config.epochs, batch=batch_index + 1,
                            batches=len(loader), seconds_left=round(elapsed / done * (steps_left - done)))
    total_loss, total_correct, total_seen = distributed.all_reduce_sum([loss_sum, correct, seen])
    entry = {"loss": total_loss / max(total_seen, 1), "accuracy": total_correct / max(total_seen, 1)}
    if world.enabled:
        tallies = distributed.all_gather((loss_sum, correct, seen))
        entry.update(scans=int(total_seen), ranks=[
            {"rank": r, "loss": l / max(n, 1), "accuracy": c / max(n, 1), "scans": n} for r, (l, c, n) in enumerate(tallies)])
    return entry


def _evaluate(parts: Trainables, spec: ModelSpec, device: torch.device, test_arrays: Arrays,
              val_arrays: Arrays) -> dict:
    """The epoch's held-out (test fold) and validation figures per inference mode."""
    distributed.sync_buffers(parts.model)  # evaluate and save rank 0's batch-norm statistics on every rank
    if parts.averaged is not None:
        distributed.sync_buffers(parts.evaluated)
    entry: dict = {"heldout": {}, "validation": {}}
    for mode in spec.modes:
        if len(test_arrays.ids):
            entry["heldout"][mode] = heldout_metrics(_predict(parts.evaluated, spec, test_arrays, mode, device))
        if len(val_arrays.ids):
            entry["validation"][mode] = heldout_metrics(_predict(parts.evaluated, spec, val_arrays, mode, device),
                                                        halves=True)
    return entry


def _calibrate(model: torch.nn.Module, spec: ModelSpec, device: torch.device, val_arrays: Arrays,
               run_dir: Path) -> dict[str, float]:
    """A temperature per mode fitted on the validation split with the chosen checkpoint; ``calibration.json``."""
    calibration = {}
    if len(val_arrays.ids):
        load_weights(run_dir / BEST, model)
        for mode in spec.modes:
            predictions = predict_arrays(model, spec, val_arrays, mode, device)
            calibration[mode] = fit_temperature(predictions.logits, predictions.labels)
    RunFolder(run_dir).write_calibration({m: calibration.get(m, 1.0) for m in spec.modes},
                                         "inner validation split" if len(val_arrays.ids) else "not fitted")
    return calibration


def _predict(model, spec, arrays: Arrays, mode: str, device) -> Predictions:
    """Held-out predictions over all of ``arrays``: in one process directly, under torchrun each rank
    its shard, gathered in order (the same predictions either way)."""
    return distributed.gather_predictions(lambda ids: predict_arrays(model, spec, arrays.take(ids), mode, device),
                                          list(arrays.ids))
