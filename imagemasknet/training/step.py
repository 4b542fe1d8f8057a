"""The pieces of one training step: scans and masks augmented together, the loss as a module (what
DistributedDataParallel wraps), the running average of the last epochs' weights, and the per-epoch figures."""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F

from imagemasknet.data.dataset import CLASSES, Arrays
from imagemasknet.data.transforms import augment_pair, build_augmentation, model_input
from imagemasknet.evaluation.evaluate import Predictions
from imagemasknet.evaluation.metrics import point_metrics, softmax
from imagemasknet.models import ModelSpec
from imagemasknet.training import distributed
from imagemasknet.training.config import TrainConfig


class ScanDataset(torch.utils.data.Dataset):
    """Decoded scans with their masks, augmented together on the fly."""

    def __init__(self, arrays: Arrays, augmentation: str, size: int):
        self.arrays = arrays
        self.transform = build_augmentation(augmentation, size)

    def __len__(self) -> int:
        return len(self.arrays.ids)

    def __getitem__(self, n: int):
        """The augmented scan and mask, the label, and the item's index (where its soft targets are)."""
        image = torch.from_numpy(self.arrays.images[n]).unsqueeze(0)
        mask = torch.from_numpy(self.arrays.masks[n].astype(np.uint8)).unsqueeze(0)
        image, mask = augment_pair(self.transform, image, mask)
        return image, mask.bool(), int(self.arrays.labels[n]), n


def concatenate(first: Arrays, second: Arrays) -> Arrays:
    return Arrays(first.ids + second.ids, np.concatenate([first.labels, second.labels]),
                  np.concatenate([first.images, second.images]), np.concatenate([first.masks, second.masks]),
                  np.concatenate([first.sources, second.sources]))


class EpochDraw(torch.utils.data.Sampler):
    """The scans one epoch trains on, shuffled: the first ``scans`` dataset items once each (or, with
    ``source_balanced``, as many draws with each source equally likely), then ``extra`` items drawn without
    replacement from the items after them (the lesion-free crops). Under torchrun every rank makes the same
    draw from the same seeded generator and keeps its own share, as many items on every rank."""

    def __init__(self, sources: np.ndarray, scans: int, extra: int, source_balanced: bool,
                 generator: torch.Generator, rank: int = 0, world_size: int = 1):
        self.scans, self.extra, self.generator = scans, extra, generator
        self.rank, self.world_size = rank, world_size
        self.pool = len(sources) - scans
        self.weights = None
        if source_balanced:
            names, inverse, counts = np.unique(sources[:scans], return_inverse=True, return_counts=True)
            self.weights = torch.from_numpy(1.0 / counts[inverse])

    def __len__(self) -> int:
        return (self.scans + self.extra) // self.world_size

    def __iter__(self):
        if self.weights is not None:
            chosen = torch.multinomial(self.weights, self.scans, replacement=True, generator=self.generator)
        else:
            chosen = torch.arange(self.scans)
        if self.extra:
            chosen = torch.cat([chosen, self.scans + torch.randperm(self.pool, generator=self.generator)[:self.extra]])
        drawn = chosen[torch.randperm(len(chosen), generator=self.generator)]
        return iter(drawn[self.rank:len(self) * self.world_size:self.world_size].tolist())


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
    losses against the two labels. With ``teacher`` (distillation: each scan's teacher probabilities per mode,
    ``[batch, modes, classes]``) the class loss is ``(1 - distill_weight)`` times the loss against the label plus
    ``distill_weight`` times the cross-entropy against the teacher's probabilities for the mode the example is
    trained in, each scan weighted alike in both. Returns ``(loss, detached class logits)``.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, config: TrainConfig,
                 class_weight: torch.Tensor | None = None):
        super().__init__()
        self.model, self.spec = model, spec
        self.label_smoothing, self.segmentation_weight = config.label_smoothing, config.segmentation_weight
        self.distill_weight = config.distill_weight
        self.class_weight = class_weight
        self.bf16 = config.precision == "bf16"

    def forward(self, images: torch.Tensor, masks: torch.Tensor, y: torch.Tensor, mode: str,
                given: torch.Tensor | None = None, mix: tuple[torch.Tensor, float] | None = None,
                teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        if teacher is not None:
            teacher = teacher.to(device)
        targets = [(y, teacher, weight)]
        if order is not None:
            order = order.to(device)
            targets.append((y[order], teacher[order] if teacher is not None else None, 1 - weight))
        weights = sum(share * self._scan_weights(target) for target, _, share in targets)
        shares = distributed.share_denominators(torch.stack([weights.sum(), has_lesion.sum().float()]))
        log_probabilities = F.log_softmax(logits, 1) if teacher is not None else None
        loss = 0
        for target, soft, share in targets:
            part = F.cross_entropy(logits, target, weight=self.class_weight, label_smoothing=self.label_smoothing,
                                   reduction="sum")
            if soft is not None:
                soft = self._in_trained_mode(soft, mode, given)
                distilled = (self._scan_weights(target) * -(soft * log_probabilities).sum(1)).sum()
                part = (1 - self.distill_weight) * part + self.distill_weight * distilled
            loss = loss + share * part
        loss = loss / shares[0]
        if lesion_logits is not None and segmenting and self.segmentation_weight > 0:
            loss = loss + self.segmentation_weight * segmentation_loss(lesion_logits, masks, shares[1])
        return loss, logits.detach()

    def _in_trained_mode(self, rows: torch.Tensor, mode: str, given: torch.Tensor | None) -> torch.Tensor:
        """Each example's teacher probabilities for the mode it is trained in: the mask mode where ``given`` says its
        mask is given (a blend of two scans is trained in the mode drawn for its place in the batch), else ``mode``."""
        modes = self.spec.modes
        if given is None:
            return rows[:, modes.index(mode)]
        return torch.where(given.to(rows.device)[:, None], rows[:, modes.index("mask")], rows[:, modes.index("image")])

    def _scan_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_weight[labels] if self.class_weight is not None else torch.ones(len(labels), device=labels.device)


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
