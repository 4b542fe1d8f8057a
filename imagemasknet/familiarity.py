"""How familiar a scan looks to a model, measured against the scans it trained on.

The score is computed on **texture statistics** (``ModelOutput.texture``, which the lesion models compute
in eval mode, :func:`imagemasknet.models.lesion_head.texture_statistics`): the mean and standard deviation
of every channel of the encoder's stride-4, -8 and -16 feature maps (the deepest map answers the classification question and
looks alike for a cat and a normal breast; the middle ones describe speckle, tissue and how the scanner
renders them). Standardised by the training scans' statistics, each scan is projected on their top
principal components; the score is the length of what that projection leaves out, divided by the
training scans' average. A scan from BUSI's scanner scores about 1; photographs, documents, screenshots,
other modalities and noise score 3 and more.

Two thresholds, both set from BUSI's **out-of-fold** scores (each cross-validation fold's model scoring its
own test fold against its own training scans, so no score comes from a scan the model trained on), never
from external scans:

* ``unfamiliar_above``: the 95th percentile. Above it a result says "unfamiliar scanner or view: accuracy
  not validated here" (by construction it fires on about 5 % of new BUSI scans).
* ``refuse_above``: 1.5 × the largest out-of-fold score. Above it the scan is refused as not a breast
  ultrasound (:class:`NotUltrasoundError`): half as far again beyond any BUSI scan the models never saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMPONENTS = 32  # principal components kept (BUSI's fold-0 texture statistics: a steep spectrum, flat after ~30)
UNFAMILIAR_PERCENTILE = 95.0
REFUSE_FACTOR = 1.5


@dataclass
class FamiliarityReference:
    """What the training scans' texture statistics look like, and the two thresholds."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    residual_scale: float  # the training scans' mean residual length
    unfamiliar_above: float = float("inf")
    refuse_above: float = float("inf")

    @classmethod
    def fit(cls, statistics: np.ndarray, components: int = COMPONENTS) -> "FamiliarityReference":
        statistics = np.asarray(statistics, dtype=np.float64)
        mean, scale = statistics.mean(0), statistics.std(0) + 1e-6
        standard = (statistics - mean) / scale
        _, _, basis = np.linalg.svd(standard, full_matrices=False)
        reference = cls(mean, scale, basis[:components], 1.0)
        reference.residual_scale = float(reference._residual(standard).mean())
        return reference

    def _residual(self, standard: np.ndarray) -> np.ndarray:
        return np.linalg.norm(standard - standard @ self.components.T @ self.components, axis=1)

    def score(self, statistics: np.ndarray) -> np.ndarray:
        """(N,) scores: 1 is a typical training scan."""
        standard = (np.asarray(statistics, dtype=np.float64) - self.mean) / self.scale
        return self._residual(standard) / self.residual_scale

    def with_thresholds(self, out_of_fold_scores: np.ndarray) -> "FamiliarityReference":
        scores = np.asarray(out_of_fold_scores, dtype=np.float64)
        self.unfamiliar_above = float(np.percentile(scores, UNFAMILIAR_PERCENTILE))
        self.refuse_above = float(REFUSE_FACTOR * scores.max())
        return self

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from .runs import atomic_write

        tensors = {name: torch.from_numpy(np.asarray(getattr(self, name), dtype=np.float32)).contiguous()
                   for name in ("mean", "scale", "components")}
        metadata = {name: repr(float(getattr(self, name))) for name in ("residual_scale", "unfamiliar_above", "refuse_above")}
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: Path) -> "FamiliarityReference":
        """Raises :class:`~imagemasknet.runs.WeightsError` for a file that is not one."""
        from safetensors import SafetensorError, safe_open

        from .runs import WeightsError

        try:
            with safe_open(str(path), "np") as stored:
                arrays = {name: stored.get_tensor(name).astype(np.float64) for name in ("mean", "scale", "components")}
                metadata = stored.metadata() or {}
            values = {name: float(metadata[name]) for name in ("residual_scale", "unfamiliar_above", "refuse_above")}
        except (OSError, SafetensorError, KeyError, ValueError) as error:
            raise WeightsError(f"cannot read the familiarity reference {path}: {error}") from error
        if arrays["components"].shape[1:] != arrays["mean"].shape or arrays["scale"].shape != arrays["mean"].shape:
            raise WeightsError(f"the familiarity reference {path} has inconsistent shapes")
        return cls(**arrays, **values)
