"""How familiar a scan looks to a model, measured against the scans it trained on: whether to say
"unfamiliar scanner or view", and whether to refuse it as not a breast ultrasound.

Both are computed on **texture statistics** (``ModelOutput.texture``, which the lesion models compute in eval
mode, :func:`imagemasknet.models.lesion_head.texture_statistics`): the mean and standard deviation of every
channel of the encoder's stride-4, -8 and -16 feature maps (the deepest map answers the classification
question and looks alike for a cat and a normal breast; the middle ones describe speckle, tissue and how the
scanner renders them). A :class:`FamiliarityReference` standardises them by a set of scans' statistics,
projects each scan on their top principal components, and scores the length of what that projection leaves
out, divided by those scans' average: a scan like them scores about 1.

Two references, each with a threshold set from the training sources' **out-of-fold** scores (each
cross-validation fold's model scoring its own test fold against its own training scans, so no score comes from a
scan the model trained on), never from external scans:

* ``unfamiliar``: fitted on the training scans as they are. Above the 95th percentile of the out-of-fold
  scores a result's trust level is ``unfamiliar`` (by construction on about 5 % of new scans from the training
  hospitals, and on most scans of other scanners).
* ``refusal``: fitted on the training scans together with copies under the training augmentation (other
  gains, contrast curves, speckle, blur, resolution, burnt-in marks): the variations the model was trained to
  read. Above 1.5 × the largest out-of-fold score the scan is refused as not a breast ultrasound
  (:class:`~imagemasknet.data.scans.NotUltrasoundError`). A reference of the plain scans alone put the model's own
  augmented training scans beyond its refusal line (BUSI validation scans augmented as in training scored
  up to 3.7 against a line at 2.7), so it was replaced by this one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from imagemasknet.models.weights import WeightsError, write_safetensors

COMPONENTS = 32  # principal components kept (BUSI's fold-0 texture statistics: a steep spectrum, flat after ~30)
UNFAMILIAR_PERCENTILE = 95.0
REFUSE_FACTOR = 1.5


@dataclass
class FamiliarityReference:
    """What a set of scans' texture statistics look like, and the score above which a scan is unlike them."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    residual_scale: float  # the fitted scans' mean residual length
    threshold: float = float("inf")

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
        # In PyTorch, not NumPy: NumPy's OpenBLAS threads fight the model's for two cores (see data/duplicates.py).
        x, basis = torch.from_numpy(np.ascontiguousarray(standard)), torch.from_numpy(np.ascontiguousarray(self.components))
        return torch.linalg.vector_norm(x - x @ basis.T @ basis, dim=1).numpy()

    def score(self, statistics: np.ndarray) -> np.ndarray:
        """(N,) scores: 1 is a typical scan of those fitted."""
        standard = (np.asarray(statistics, dtype=np.float64) - self.mean) / self.scale
        return self._residual(standard) / self.residual_scale


@dataclass
class Familiarity:
    """The two checks a prediction goes through (see the module notes)."""

    unfamiliar: FamiliarityReference
    refusal: FamiliarityReference

    @classmethod
    def fit(cls, plain: np.ndarray, augmented: np.ndarray, out_of_fold_unfamiliar: np.ndarray | None = None,
            out_of_fold_refusal: np.ndarray | None = None) -> "Familiarity":
        """``plain``: the training scans' statistics; ``augmented``: those of their augmented copies; the
        out-of-fold scores of each kind set the thresholds (without them the thresholds stay infinite, as for
        a fold model's references, whose scores are those out-of-fold scores)."""
        unfamiliar = FamiliarityReference.fit(plain)
        refusal = FamiliarityReference.fit(np.concatenate([plain, augmented]))
        if out_of_fold_unfamiliar is not None:
            unfamiliar.threshold = float(np.percentile(out_of_fold_unfamiliar, UNFAMILIAR_PERCENTILE))
        if out_of_fold_refusal is not None:
            refusal.threshold = float(REFUSE_FACTOR * np.max(out_of_fold_refusal))
        return cls(unfamiliar, refusal)

    def save(self, path: Path) -> None:
        tensors, metadata = {}, {}
        for kind in ("unfamiliar", "refusal"):
            reference = getattr(self, kind)
            for name in ("mean", "scale", "components"):
                tensors[f"{kind}.{name}"] = torch.from_numpy(np.asarray(getattr(reference, name), dtype=np.float32)).contiguous()
            for name in ("residual_scale", "threshold"):
                metadata[f"{kind}.{name}"] = repr(float(getattr(reference, name)))
        write_safetensors(Path(path), tensors, metadata)

    @classmethod
    def load(cls, path: Path) -> "Familiarity":
        """Raises :class:`~imagemasknet.models.weights.WeightsError` for a file that is not one."""
        references = {}
        try:
            with safe_open(str(path), "np") as stored:
                metadata = stored.metadata() or {}
                for kind in ("unfamiliar", "refusal"):
                    arrays = {name: stored.get_tensor(f"{kind}.{name}").astype(np.float64) for name in ("mean", "scale", "components")}
                    values = {name: float(metadata[f"{kind}.{name}"]) for name in ("residual_scale", "threshold")}
                    if arrays["components"].shape[1:] != arrays["mean"].shape or arrays["scale"].shape != arrays["mean"].shape:
                        raise ValueError("inconsistent shapes")
                    references[kind] = FamiliarityReference(**arrays, **values)
        except (OSError, SafetensorError, KeyError, ValueError) as error:
            raise WeightsError(f"cannot read the familiarity reference {path}: {error}") from error
        return cls(**references)
