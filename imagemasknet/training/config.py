"""The one training configuration. CLI flags and the app's retrain form are both built from it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from imagemasknet.data.sources import parse_sources

MASK_SCHEDULES = ("always", "never", "first-half", "random")
PRECISIONS = ("fp32", "bf16")
CHECKPOINT_RULES = ("lowest-loss", "last", "average")
AUGMENTATIONS = ("none", "flip", "study-m2", "ultrasound", "ultrasound-strong")  # built by data/transforms.py


@dataclass
class TrainConfig:
    arch: str = field(default="lesion-resunet", metadata={"help": "registered model name"})
    epochs: int = field(default=60, metadata={"help": "training epochs", "min": 1, "max": 500})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (Adam/AdamW)", "min": 1e-6, "max": 1.0})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay", "min": 0.0, "max": 1.0})
    batch_size: int = field(default=16, metadata={"help": "batch size", "min": 1, "max": 512})
    image_size: int = field(default=256, metadata={"help": "input size in pixels (square)", "min": 64, "max": 1024})
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0, "max": 2**32 - 1})
    fold: int | None = field(default=0, metadata={"help": "test fold of the committed 5-fold split; none: train on all data"})
    split_file: str | None = field(default=None, metadata={"help": "JSON split file with 'train' and 'test' id lists (overrides --fold)"})
    mask_schedule: str = field(default="random", metadata={"help": "when the model sees masks: " + ", ".join(MASK_SCHEDULES), "choices": MASK_SCHEDULES})
    augment: str = field(default="ultrasound", metadata={"help": "augmentation preset: " + ", ".join(AUGMENTATIONS), "choices": AUGMENTATIONS})
    optimizer: str = field(default="adamw", metadata={"help": "adam (the study) or adamw", "choices": ("adam", "adamw")})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule: constant or cosine", "choices": ("constant", "cosine")})
    class_balanced: bool = field(default=False, metadata={"help": "weight the loss by inverse class frequency"})
    source_balanced: bool = field(default=False, metadata={"help": "draw each training source equally often (a scan's chance is 1 / its source's number of scans)"})
    paint_out_annotations: bool = field(default=False, metadata={"help": "paint burnt-in text, calipers and rulers out of every scan before the model sees it, in training and inference"})
    normal_crops: float = field(default=0.0, metadata={"help": "add lesion-free squares of lesion scans as extra normal examples: this many per training scan each epoch (e.g. 0.15); 0: off", "min": 0.0, "max": 1.0})
    soft_targets: str | None = field(default=None, metadata={"help": "distillation: an out-of-fold table of teacher probabilities for every training scan and none of the run's validation or test scans (benchmarks/distillation.py builds one from two teachers cross-fitted on the run's training scans); the class loss then blends the label's and the teacher's"})
    distill_weight: float = field(default=0.5, metadata={"help": "with --soft-targets: the teacher's share of the class loss (the label's is the rest)", "min": 0.0, "max": 1.0})
    label_smoothing: float = field(default=0.05, metadata={"help": "label smoothing", "min": 0.0, "max": 0.5})
    segmentation_weight: float = field(default=1.0, metadata={"help": "weight of the lesion-mask loss (models that segment)", "min": 0.0, "max": 100.0})
    mixup_alpha: float = field(default=0.0, metadata={"help": "mixup: train on blends of two scans (their masks and labels blended alike) with a Beta(alpha, alpha) weight per batch; 0: off", "min": 0.0, "max": 10.0})
    ema_decay: float = field(default=0.0, metadata={"help": "keep an exponential moving average of the weights (and batch-norm statistics) with this decay per step, and evaluate, checkpoint and ship the average; 0: off", "min": 0.0, "max": 0.9999})
    frozen_blocks: int = field(default=0, metadata={"help": "models with a pretrained encoder: keep its stem and first N blocks at their ImageNet weights (their batch-norm statistics still adapt); 0: train everything", "min": 0, "max": 64})
    checkpoint: str = field(default="lowest-loss", metadata={"help": "which weights the run keeps as best.safetensors (evaluated, calibrated, promoted, shipped): " + ", ".join(CHECKPOINT_RULES) + " (the epoch with the lowest inner-validation loss, the final epoch, or the average of the last --average-epochs epochs)", "choices": CHECKPOINT_RULES})
    average_epochs: int = field(default=0, metadata={"help": "also keep the average of the last N epochs' weights (average.safetensors); the 'average' checkpoint rule uses it (0 there: 5)", "min": 0, "max": 100})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the training groups held out to pick the best epoch and fit the temperature", "min": 0.0, "max": 0.5})
    limit: int | None = field(default=None, metadata={"help": "use only this many scans per split (quick checks)", "min": 1, "max": 100_000})
    sources: str = field(default="busi", metadata={"help": "the bundled training sources, joined by '+': busi (Cairo), busbra-train (Rio de Janeiro), e.g. busi+busbra-train"})
    data: str | None = field(default=None, metadata={"help": "your own labelled folder (class sub-folders) or CSV manifest (image,label[,mask][,patient]), or another BUSI copy"})
    data_mode: str = field(default="replace", metadata={"help": "with --data: train on it instead of --sources, or add it to them", "choices": ("replace", "add")})
    out_dir: str | None = field(default=None, metadata={"help": "run folder (default: runs/<arch>-<time>)"})
    precision: str = field(default="fp32", metadata={"help": "fp32, or bf16: bfloat16 autocast for the forward pass and channels-last weights (about 1.7x faster training end to end on a 2-core CPU with AVX-512 BF16); evaluation stays fp32", "choices": PRECISIONS})
    num_workers: int = field(default=0, metadata={"help": "data-loader worker processes", "min": 0, "max": 64})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**values).validated()

    def validated(self) -> "TrainConfig":
        """Check every field against its bounds; raises ValueError naming the field."""
        from imagemasknet.models import get_spec, list_models  # imports torch: `imagemasknet --help` reads this file

        if self.arch not in list_models():
            raise ValueError(f"arch: unknown model '{self.arch}'; registered: {', '.join(list_models())}")
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            if "min" in meta and value < meta["min"]:
                raise ValueError(f"{f.name}: {value} is below the minimum {meta['min']}")
            if "max" in meta and value > meta["max"]:
                raise ValueError(f"{f.name}: {value} is above the maximum {meta['max']}")
            if "choices" in meta and value not in meta["choices"]:
                raise ValueError(f"{f.name}: '{value}' is not one of {', '.join(meta['choices'])}")
        parse_sources(self.sources)
        if self.fold is not None and not 0 <= self.fold < 5:
            raise ValueError(f"fold: {self.fold} is not in 0..4")
        if self.image_size % 64:
            raise ValueError(f"image_size: {self.image_size} is not a multiple of 64")
        if self.frozen_blocks and get_spec(self.arch).pretrained is None:
            raise ValueError(f"frozen_blocks: '{self.arch}' has no pretrained encoder to keep frozen")
        return self

    @property
    def averaged_epochs(self) -> int:
        """How many final epochs average.safetensors averages (0: none is kept)."""
        return self.average_epochs or (5 if self.checkpoint == "average" else 0)


PRESETS: dict[str, dict[str, Any]] = {
    # The study's Model 1 script: 10 epochs, Adam 1e-3, wd 1e-4, batch 8, horizontal flip, mask always.
    "study-m1": dict(arch="imagemasknet", epochs=10, lr=1e-3, weight_decay=1e-4, batch_size=8, augment="flip",
                     mask_schedule="always", optimizer="adam", schedule="constant", class_balanced=False,
                     label_smoothing=0.0, val_fraction=0.0),
    # Model 2: 50 epochs, Adam 1e-4, wd 1e-5, batch 16, flip + rotation + brightness/contrast,
    # image+mask for the first half of the epochs, image only for the second half.
    "study-m2": dict(arch="imagemasknet2", epochs=50, lr=1e-4, weight_decay=1e-5, batch_size=16, augment="study-m2",
                     mask_schedule="first-half", optimizer="adam", schedule="constant", class_balanced=False,
                     label_smoothing=0.0, val_fraction=0.0),
    # The shipped model. Class-balanced loss off and AdamW weight decay 0.05: of the variants
    # cross-validated, these had the lower inner-validation loss (README, "Choosing the shipped model");
    # test folds played no part.
    "lesion-resunet": dict(arch="lesion-resunet", weight_decay=0.05),
    # The pretrained encoder's first recipe (issue's two-fold trial: 15 epochs at lr 1e-3 beat the
    # from-scratch recipe on both folds). The stem and blocks 0-2 (strides 2 and 4) stay frozen so a
    # step of 16 scans fits in a second on 2 CPU cores; the final epoch is kept (cosine decay to zero).
    # Trained on both bundled hospitals (issue 24's trial: BUS-BRA's held-out AUC 0.814 -> 0.899 against BUSI alone).
    "lesion-effnet-lite0": dict(arch="lesion-effnet-lite0", epochs=15, lr=1e-3, weight_decay=0.05, frozen_blocks=3,
                                checkpoint="last", average_epochs=5, sources="busi+busbra-train"),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})
