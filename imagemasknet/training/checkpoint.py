"""What a run folder keeps of a training run, and continuing a run from it.

``last.safetensors`` with ``last.state.pt`` (optimizer, scheduler, epoch, every random generator) and, for
runs with a moving average, ``last-ema.safetensors``: written together, after the first and final epochs,
with every new best and otherwise at most every two minutes. ``best.safetensors``: the checkpoint the
config's rule chooses (lowest inner-validation loss, the final epoch, or the average of the last epochs,
which is also kept as ``average.safetensors``). :class:`Checkpointer` writes them and restores a run from
them; :func:`check_resumable` refuses a folder that cannot be continued, saying why.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from imagemasknet.core.run_folder import AVERAGE, BEST, CONFIG, LAST, STATE, RunFolder
from imagemasknet.models.weights import load_state, load_weights, save_state, save_weights
from imagemasknet.training.config import TrainConfig
from imagemasknet.training.step import EpochAverage

EMA_FILE = "last-ema.safetensors"  # the moving average at the last checkpoint (runs with ema_decay > 0)
#: Large models write hundreds of MB per checkpoint: "last" is refreshed at most this often between the
#: first and final epochs and new bests (so a resumed run never holds a best newer than its last).
LAST_EVERY_SECONDS = 120


@dataclass
class Trainables:
    """Everything a checkpoint saves and a resume restores."""

    model: torch.nn.Module
    averaged: torch.optim.swa_utils.AveragedModel | None  # the moving average (ema_decay > 0)
    window: EpochAverage | None  # the average of the last epochs (averaged_epochs > 0)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader_generator: torch.Generator
    mask_generator: torch.Generator
    mask_rng: random.Random

    @property
    def evaluated(self) -> torch.nn.Module:
        """What is evaluated, checkpointed and shipped: the weights themselves, or their moving average."""
        return self.averaged.module if self.averaged is not None else self.model


@dataclass
class Resumed:
    history: list[dict]
    first_epoch: int
    best_val: float


class Checkpointer:
    def __init__(self, run_dir: Path, config: TrainConfig, world_size: int, writes: bool = True):
        self.run_dir, self.config, self.world_size = Path(run_dir), config, world_size
        self.writes = writes  # False on ranks other than 0: only rank 0 writes the run folder
        self.last_saved = -math.inf

    def saved_state(self) -> dict:
        return load_state(self.run_dir / STATE)

    def restore(self, state: dict, parts: Trainables, restore_torch_rng: bool) -> Resumed:
        """Put ``parts`` back as they were after the checkpoint's epoch; the history after it is dropped
        (those epochs are trained again). ``restore_torch_rng``: False under torchrun, where each rank
        seeds itself per epoch."""
        load_weights(self.run_dir / LAST, parts.model)
        if parts.averaged is not None:
            load_weights(self.run_dir / EMA_FILE, parts.averaged.module)
            parts.averaged.n_averaged.fill_(1)  # any count above zero: the next update averages, not copies
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        first_epoch, best_val = int(state["epoch"]), float(state["best_val"])
        if parts.window is not None:
            parts.window.load_state_dict(state.get("epoch_average") or {})
        parts.loader_generator.set_state(state["rng"]["loader"])
        parts.mask_generator.set_state(state["rng"]["mask"])
        parts.mask_rng.setstate(_as_tuple(state["rng"]["mask_rng"]))
        if restore_torch_rng:
            torch.set_rng_state(state["rng"]["torch"])
        history = RunFolder(self.run_dir).history[:first_epoch]
        if self.writes:
            RunFolder(self.run_dir).write_history(history)
        return Resumed(history, first_epoch, best_val)

    def save(self, parts: Trainables, epoch: int, best_val: float, *, final: bool, improved: bool,
             validated: bool) -> None:
        """After ``epoch`` (0-based): refresh "last" when due, and write "best" as the config's rule says.
        ``validated``: the run has an inner-validation split (without one, the final epoch is the best)."""
        if not self.writes:
            return
        tag = {"arch": self.config.arch, "epoch": str(epoch + 1)}
        evaluated = parts.evaluated
        if final or improved or time.monotonic() - self.last_saved > LAST_EVERY_SECONDS:
            save_weights(self.run_dir / LAST, parts.model, tag)
            if parts.averaged is not None:
                save_weights(self.run_dir / EMA_FILE, evaluated, tag)
            save_state(self.run_dir / STATE, {
                "epoch": epoch + 1, "best_val": best_val, "world_size": self.world_size,
                "epoch_average": parts.window.state_dict() if parts.window is not None else {},
                "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                "rng": {"loader": parts.loader_generator.get_state(), "mask": parts.mask_generator.get_state(),
                        "mask_rng": list(parts.mask_rng.getstate()), "torch": torch.get_rng_state()},
            })
            self.last_saved = time.monotonic()
        if final and parts.window is not None:
            save_weights(self.run_dir / AVERAGE, parts.window.module_like(evaluated),
                         {**tag, "averaged_epochs": f"{parts.window.first + 1}-{epoch + 1}"})
        rule = self.config.checkpoint
        if rule == "lowest-loss" and (improved or (not validated and final)):
            save_weights(self.run_dir / BEST, evaluated, tag)
        elif rule != "lowest-loss" and final:
            chosen = parts.window.module_like(evaluated) if rule == "average" else evaluated
            save_weights(self.run_dir / BEST, chosen, {**tag, "rule": rule})


def resume_config(run_dir: Path | str) -> TrainConfig:
    """The config of a run folder, to continue it with ``train(config, resume=run_dir)``."""
    values = RunFolder(Path(run_dir)).config
    if not values:
        raise FileNotFoundError(f"{run_dir} is not a run folder (no readable config.json)")
    return TrainConfig.from_dict(values)


def check_resumable(run_dir: Path, config: TrainConfig) -> dict:
    """The run's status, after checking that it can be continued with ``config``."""
    run = RunFolder(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    if not (run_dir / STATE).is_file() or not (run_dir / LAST).is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint to resume from (last.safetensors + {STATE}): "
                                "it stopped before its first epoch ended; start it again")
    if run.state == "running":
        raise ValueError(f"{run_dir} is still running (pid {run.status.get('pid')}); stop it before resuming")
    if run.state == "finished":
        raise ValueError(f"{run_dir} already finished; nothing to resume")
    if TrainConfig.from_dict(run.config).to_dict() != config.to_dict():  # settings added since count as defaults
        raise ValueError(f"resume {run_dir} with its own config.json (train --resume takes no other settings)")
    state_epoch = load_state(run_dir / STATE).get("epoch")
    for name in (LAST, EMA_FILE) if config.ema_decay > 0 else (LAST,):
        try:
            with safe_open(str(run_dir / name), "pt") as weights:
                weights_epoch = (weights.metadata() or {}).get("epoch")
        except OSError:
            weights_epoch = None
        if str(weights_epoch) != str(state_epoch):
            raise ValueError(f"cannot resume {run_dir}: {name} is from epoch {weights_epoch} but "
                             f"{STATE} from epoch {state_epoch} (the run stopped between the writes)")
    return run.status


def _as_tuple(value):
    """``random.Random.getstate()`` back from its saved lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
