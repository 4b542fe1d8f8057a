"""One inference API for the app and the CLI: :class:`Predictor` in, :class:`Prediction` out.

Scans and masks are read by :mod:`imagemasknet.data.scans`; the Predictor resizes them
as training did, runs the model, applies the model's calibration temperature, and returns the
predicted lesion outline at the scan's own size. A lock serialises calls, so one instance can serve
every Streamlit session (Grad-CAM attaches hooks to the model, which must not interleave).
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imagemasknet.core.device import pick_device
from imagemasknet.core.files import file_sha256
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.annotations import find_annotations, paint_out
from imagemasknet.data.dataset import CLASSES, DatasetNotFoundError
from imagemasknet.data.decode import resize_pair
from imagemasknet.data.duplicates import DuplicateIndex
from imagemasknet.data.scans import MaskError, NotUltrasoundError, Scan
from imagemasknet.data.sources import SOURCES, load_training_set
from imagemasknet.data.verify import DataIntegrityError
from imagemasknet.data.transforms import model_input
from imagemasknet.evaluation.decision import GIVEN_LESION, given_lesion, is_low_confidence, is_reassured, is_suspicious
from imagemasknet.evaluation.metrics import softmax
from imagemasknet.evaluation.site_threshold import load_site_threshold, site_operating_point
from imagemasknet.inference.explain import grad_cam
from imagemasknet.inference.familiarity import Familiarity
from imagemasknet.inference.measure import lesion_axes_mm
from imagemasknet.models import DEFAULT_MODEL, ModelSpec, get_spec
from imagemasknet.models.bundle import Bundle, BundleError, ModelStore
from imagemasknet.models.weights import WeightsError, load_model


@dataclass
class Prediction:
    predicted_class: str  # the class with the largest calibrated probability (not ground truth)
    probabilities: dict[str, float]  # calibrated; in mask mode P(class | a lesion), so normal is 0
    mode: str  # "image" or "mask"
    model: str
    warnings: list[str] = field(default_factory=list)
    lesion_mask: np.ndarray | None = None  # bool, the scan's size; None when the model draws none
    malignancy_threshold: float | None = None  # the flag's threshold; None: the model has none
    threshold_source: str = ""  # where the threshold comes from, as a phrase
    flag_target: float | None = None  # the share of cancers the threshold was set to flag
    familiarity: float | None = None  # 1 = as familiar as a typical training scan; None: not measured
    unfamiliar: bool = False
    training_match: str | None = None  # the training scan this one copies, when it does
    exclusion_threshold: float | None = None  # P(normal) must exceed it to reassure; None: never reassured
    model_probabilities: dict[str, float] | None = None  # mask mode: the model's own answer, before the lesion is given
    trust_figures: dict[str, float] = field(default_factory=dict)  # the flag's sensitivity per trust level's setting
    lesion_axes_mm: tuple[float, float] | None = None  # long and short axis of the outline, when the scale is known
    annotations: np.ndarray | None = None  # burnt-in marks found on the scan (bool, the scan's size)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted_class]

    @property
    def low_confidence(self) -> bool:
        """Judged on the model's own three-class answer: in mask mode the renormalised pair always has a top of at
        least 0.5, which says nothing about how sure the model is."""
        return is_low_confidence(self.model_probabilities or self.probabilities)

    @property
    def suspicious_for_malignancy(self) -> bool | None:
        return is_suspicious(self.probabilities["malignant"], self.malignancy_threshold)

    @property
    def lesion_not_excluded(self) -> bool:
        """Normal is the top class but the scan is not reassured: P(normal) does not exceed the exclusion threshold
        (there is none), or the result is not a tested one (unfamiliar scan, low confidence)."""
        return self.predicted_class == "normal" and not (
            self.trust == "tested" and is_reassured(self.probabilities, self.exclusion_threshold))

    @property
    def model_sees_no_lesion(self) -> bool:
        """Mask mode: the model's own answer is normal where the user marked a lesion."""
        own = self.model_probabilities
        return own is not None and max(own, key=own.get) == "normal"

    @property
    def trust(self) -> str:
        """How far the result can be trusted, one of :data:`TRUST_LEVELS`."""
        return "unfamiliar" if self.unfamiliar else "low confidence" if self.low_confidence else "tested"

    def record(self, file: str) -> dict:
        """The ``predict --json`` record for this prediction (docs/architecture.md, "The prediction record")."""
        return {"file": file, "predicted_class": self.predicted_class, "probabilities": self.probabilities,
                "suspicious_for_malignancy": self.suspicious_for_malignancy,
                "malignancy_threshold": self.malignancy_threshold, "lesion_not_excluded": self.lesion_not_excluded,
                "trust": self.trust, "mode": self.mode, "model": self.model, "warnings": list(self.warnings),
                "low_confidence": self.low_confidence, "unfamiliar": self.unfamiliar,
                "familiarity_score": self.familiarity, "in_training_data": self.training_match,
                "model_sees_no_lesion": self.model_sees_no_lesion,
                "lesion_axes_mm": list(self.lesion_axes_mm) if self.lesion_axes_mm else None}


TRUST_LEVELS = ("tested", "unfamiliar", "low confidence")


def available_models() -> list[str]:
    """Registered models that have a shipped bundle, the default first."""
    return ModelStore().names()


def active_model_key() -> str:
    """Changes whenever a model is promoted or rolled back: key a cached Predictor.active() by it."""
    return ModelStore().active_key()


@functools.lru_cache(maxsize=4)
def training_data_index(sources: str = "busi") -> DuplicateIndex | None:
    """A model's bundled training sources (``busi+busbra-train``) as a
    :class:`~imagemasknet.data.duplicates.DuplicateIndex`; None when they are not installed (a ``pip install .``
    without the repository), so provenance goes unchecked."""
    try:
        return DuplicateIndex(load_training_set(sources))
    except (DatasetNotFoundError, DataIntegrityError, ValueError):
        return None


class Predictor:
    """A model bundle ready to classify scans: its weights, calibration, malignancy flag, lesion exclusion and
    familiarity reference, all from the bundle; it refuses what it cannot judge (:class:`NotUltrasoundError`)."""

    def __init__(self, bundle: Bundle, device: str = "auto", check_training_data: bool = True):
        self.bundle = bundle
        self.card = bundle.card
        self.spec: ModelSpec = get_spec(self.card.arch)
        self.device = pick_device(device)
        self.weights = Path(bundle.weights)
        self.model = load_model(self.card.arch, self.weights, self.card.image_size, self.device)
        self.familiarity = Familiarity.load(bundle.familiarity) if bundle.familiarity is not None else None
        self.check_training_data = check_training_data
        self._lock = threading.Lock()

    @classmethod
    def shipped(cls, name: str = DEFAULT_MODEL, device: str = "auto") -> "Predictor":
        try:
            return cls(ModelStore().shipped(name), device)
        except BundleError as error:
            raise WeightsError(str(error)) from error

    @classmethod
    def active(cls, device: str = "auto") -> "Predictor":
        """The model promoted on the Retrain page if there is a sound one, otherwise the shipped default model.
        Key caches by :func:`active_model_key`."""
        store = ModelStore()
        promoted = store.promoted()
        if promoted is not None:
            try:
                return cls(promoted, device)
            except (WeightsError, KeyError, TypeError, ValueError):
                pass  # a damaged promotion never takes the app down: fall back to the shipped model
        return cls.shipped(DEFAULT_MODEL, device)

    @classmethod
    def from_run(cls, run_dir: Path, checkpoint: str = "best", device: str = "auto",
                 check_training_data: bool = True) -> "Predictor":
        try:
            return cls(Bundle.of_run(RunFolder(run_dir), checkpoint), device, check_training_data)
        except BundleError as error:
            raise WeightsError(str(error)) from error

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def training_sources(self) -> str:
        """The bundled sources the model trained on (models from before sources existed trained on BUSI)."""
        sources = self.card.config.get("sources", "busi")
        return sources if isinstance(sources, str) else "busi"

    @property
    def temperatures(self) -> dict[str, float]:
        return self.card.temperature

    @property
    def image_size(self) -> int:
        return self.card.image_size

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def weights_sha256(self) -> str:
        """Names these exact weights (a saved site threshold applies only to them)."""
        return file_sha256(self.weights)

    @property
    def site_threshold_command(self) -> str:
        """The command that chooses a site threshold for these exact weights on a site's labelled scans."""
        shipped = self.bundle.folder is not None and Path(self.bundle.folder) == ModelStore().shipped_folder(self.name)
        which = f"--model {self.name}" if shipped else f"--weights {self.weights} --arch {self.name}"
        return f"imagemasknet evaluate {which} --data SITE_SCANS --save-threshold"

    def _site_point(self, mode: str) -> dict | None:
        site = load_site_threshold()
        return site_operating_point(mode, self.name, site, self.weights_sha256) if site else None

    def malignancy_threshold(self, mode: str) -> tuple[float | None, str, float | None]:
        """The flag's threshold in ``mode``, where it comes from, and the share of cancers it was set to flag: a
        site threshold saved for these exact weights, else the model card's (set on the cross-validation's
        out-of-fold predictions)."""
        never_lower = (f"; set on P(malignant) and applied to {GIVEN_LESION}, which is never lower, so it flags at "
                       "least as often")
        if (site := self._site_point(mode)) is not None:
            target = float(site["target_sensitivity"])
            source = (f"{target:.0%} sensitivity on the site's own scans "
                      f"({Path(str(load_site_threshold().get('data', 'site data'))).name}; the saved site threshold)")
            if mode == "mask" and site["footing"] != GIVEN_LESION:
                source += never_lower
            return float(site["threshold"]), source, target
        if mode in self.card.flag_thresholds:
            source = f"{self.card.flag_target:.0%} sensitivity on training scans the model's cross-validation never trained on"
            if mode == "mask" and self.card.flag_footing(mode) != GIVEN_LESION:
                source += never_lower
            return self.card.flag_thresholds[mode], source, self.card.flag_target
        return None, "this model has no sensitivity-set threshold", None

    def trust_figures(self, mode: str) -> dict[str, float]:
        """The flag's measured sensitivity each trust level quotes: ``tested`` (out of fold, or reached on the
        site's own scans in this mode), ``unfamiliar`` (at a hospital the model never trained on)."""
        figures = {}
        site = self._site_point(mode)
        if site is not None and isinstance(site.get("sensitivity"), (int, float)):
            figures["tested"] = float(site["sensitivity"])
        elif site is None and (tested := self.card.flag_sensitivity(mode)) is not None:
            figures["tested"] = tested
        if (unseen := self.card.unseen_hospital(mode)) is not None:
            figures["unfamiliar"] = unseen
        return figures

    def resolve_mode(self, mask: np.ndarray | None) -> str:
        if mask is None:
            if self.spec.needs_mask:
                raise MaskError(f"The model '{self.name}' needs a lesion mask; draw or upload one.")
            return "image"
        if not self.spec.accepts_mask:
            raise MaskError(f"The model '{self.name}' takes no mask; switch mask mode off.")
        return "mask"

    def _inputs(self, scan: Scan, mask: np.ndarray | None,
                grey_marks: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scan (and mask) prepared exactly as training and evaluation do: burnt-in marks, found on the grey
        pixels as training finds them (``grey_marks`` when already found), painted out when the model trained so,
        resized, normalised."""
        if mask is not None and mask.shape != scan.pixels.shape:
            raise MaskError(f"The mask is {mask.shape[1]} × {mask.shape[0]} pixels but the scan is "
                            f"{scan.pixels.shape[1]} × {scan.pixels.shape[0]}; a mask must have the scan's size.")
        pixels = scan.pixels
        if self.card.paint_out_annotations:
            pixels = paint_out(pixels, grey_marks if grey_marks is not None else find_annotations(pixels))
        pixels, small = resize_pair(pixels, mask if mask is not None else np.zeros(scan.pixels.shape, bool),
                                    self.image_size)
        return model_input(self.spec, torch.from_numpy(np.array(pixels))[None, None],
                           torch.from_numpy(np.array(small))[None, None], "mask" if mask is not None else "image",
                           self.device)

    def predict(self, scan: Scan, mask: np.ndarray | None = None) -> Prediction:
        """Classify one scan; with a mask (bool, the scan's size) in mask mode. Raises
        :class:`NotUltrasoundError` for a picture the model cannot judge."""
        mode = self.resolve_mode(mask)
        marks = find_annotations(scan.rgb if scan.is_colour else scan.pixels)  # coloured marks too, for the outline
        image, mask_tensor = self._inputs(scan, mask, None if scan.is_colour else marks)
        with self._lock, torch.no_grad():
            output = self.model(image, mask_tensor)
        warnings = list(scan.warnings)
        score = unfamiliar = None
        if self.familiarity is not None and output.texture is not None:
            texture = output.texture.float().cpu().numpy()
            refusal = self.familiarity.refusal
            if (far := float(refusal.score(texture)[0])) > refusal.threshold:
                raise NotUltrasoundError(not_ultrasound_message(scan.name, far, refusal.threshold))
            check = self.familiarity.unfamiliar
            score = float(check.score(texture)[0])
            unfamiliar = score > check.threshold
        logits = output.logits.float().cpu().numpy()
        calibrated = dict(zip(CLASSES, (float(p) for p in softmax(logits, self.temperatures.get(mode, 1.0))[0])))
        own = calibrated if mode == "mask" else None
        probabilities = given_lesion(calibrated) if mode == "mask" else calibrated
        lesion = None
        if output.lesion_logits is not None:
            upsampled = F.interpolate(output.lesion_logits.float(), size=scan.pixels.shape, mode="bilinear",
                                      align_corners=False)
            lesion = (upsampled[0, 0] > 0).cpu().numpy() & ~marks
            if mask is not None and mask.any() and lesion.any() and not (mask & lesion).any():
                warnings.append("The mask does not overlap the lesion the model finds on this scan; check that it was "
                                "drawn on (or made for) this scan.")
        match = None
        if self.check_training_data and (index := training_data_index(self.training_sources)) is not None:
            found = index.match(scan.pixels)
            if found is not None:
                match = found.b
                warnings.append(training_data_notice(match, exact=found.speckle_ncc == 1.0))
        threshold, source, target = self.malignancy_threshold(mode)
        predicted = max(probabilities, key=probabilities.get)
        outline = mask if mask is not None else (lesion if predicted != "normal" else None)
        axes = (lesion_axes_mm(outline, scan.pixel_spacing_mm)
                if outline is not None and scan.pixel_spacing_mm is not None else None)
        return Prediction(predicted, probabilities, mode, self.name, warnings, lesion, threshold, source, target, score,
                          bool(unfamiliar), match, self.card.exclusion_threshold, own, self.trust_figures(mode), axes,
                          marks)

    def grad_cam(self, scan: Scan, target_class: str | int, mask: np.ndarray | None = None) -> np.ndarray:
        """Grad-CAM of ``target_class`` on the last convolutional block of the image path, at the
        scan's size, scaled to [0, 1] (all zeros when nothing supports the class)."""
        target = CLASSES.index(target_class) if isinstance(target_class, str) else int(target_class)
        self.resolve_mode(mask)
        image, mask_tensor = self._inputs(scan, mask)
        with self._lock:
            return grad_cam(self.model, image, mask_tensor, target, scan.pixels.shape)


def not_ultrasound_message(name: str, score: float, limit: float) -> str:
    subject = f"'{name}'" if name else "The file"
    return (f"{subject} does not look like a breast ultrasound scan (its image texture scores {score:.1f}, where the "
            f"model's training scans, augmented as in training, stay far below {limit:.1f}), so it was not "
            "classified; upload a B-mode breast ultrasound image.")


def training_data_notice(case_id: str, exact: bool) -> str:
    copy = "is" if exact else "is a copy of"
    source, _, name = case_id.rpartition(":")
    where = SOURCES[source].short if source in SOURCES else "BUSI"
    return f"This scan {copy} {where}'s '{name}', in the training data: its result is not a test."
