"""The model card: what is known about one set of weights.

One :class:`ModelCard` type for every bundle (:mod:`imagemasknet.models.bundle`): a shipped or promoted bundle's
``model.json`` (written by ``imagemasknet release`` and by promotion) and a run folder's own checkpoints (built
from its ``config.json`` and ``calibration.json``). The JSON layout is the contract in docs/architecture.md
(pinned by tests/test_contracts.py); :meth:`ModelCard.from_json` reads it without trusting it (a missing or
mistyped block is empty, not an error), and :meth:`ModelCard.to_json` writes it back with every key it did not
know kept as it was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagemasknet.core.files import read_json, write_json

DEFAULT_IMAGE_SIZE = 256  # every registered model trains at 256 px unless its config says otherwise
SCHEMA_VERSION = 2  # 2: the card carries its preprocessing and lives in a bundle folder


class ModelCardError(ValueError):
    """A card that cannot describe weights (not a JSON object, or no architecture named)."""


@dataclass(frozen=True)
class ModelCard:
    name: str  # what the app calls the model (the registry name for shipped models)
    arch: str  # the registered architecture the weights fit
    version: str = ""
    schema_version: int = 1  # cards written before bundles say nothing: 1
    preprocessing: dict = field(default_factory=dict)  # image_size, channels, normalisation, decoding, annotations
    config: dict = field(default_factory=dict)  # the training config (TrainConfig.to_dict())
    temperature: dict[str, float] = field(default_factory=dict)  # calibration per inference mode
    architecture: dict = field(default_factory=dict)  # name, description, parameters, modes, predicts_lesion
    pretrained: dict | None = None  # the encoder's ImageNet weights and how adapted; {}: none (JSON null); None: unsaid
    trained_on: str = ""
    storage: str = ""
    date: str = ""
    note: str = ""  # a provisional card says so here
    malignancy_flag: dict = field(default_factory=dict)  # target_sensitivity, modes: {mode: {threshold, footing, …}}
    lesion_exclusion: dict = field(default_factory=dict)  # target, threshold on P(normal), figures
    familiarity: dict = field(default_factory=dict)
    low_confidence: dict = field(default_factory=dict)
    cross_validation: dict = field(default_factory=dict)  # mode → metric → {mean, std, …}, plus folds
    external: dict = field(default_factory=dict)  # data set → mode → result
    heldout: dict = field(default_factory=dict)  # a promoted run's own numbers: mode → metric → value
    promoted_at: str = ""  # set on promoted cards only
    source_run: str = ""
    intended_use: str = ""
    limitations: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # every other key of the JSON, written back unchanged

    @classmethod
    def from_json(cls, payload: Any, source: str = "the model card") -> "ModelCard":
        if not isinstance(payload, dict):
            raise ModelCardError(f"{source} is not a JSON object; re-ship or re-promote the model to rewrite it")
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        arch = payload.get("arch") or config.get("arch") or payload.get("name")
        if not isinstance(arch, str) or not arch:
            raise ModelCardError(f"{source} names no architecture; re-ship or re-promote the model to rewrite it")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if spec.name not in payload or spec.name in ("extra", "name", "arch", "config"):
                continue
            value = payload[spec.name]
            default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
            if spec.name == "pretrained":
                values[spec.name] = value if isinstance(value, dict) else {}
            elif spec.name == "schema_version":
                values[spec.name] = value if isinstance(value, int) and not isinstance(value, bool) else 1
            elif isinstance(default, (dict, list)):
                values[spec.name] = value if isinstance(value, type(default)) else type(default)()
            else:
                values[spec.name] = "" if value is None else str(value)
        temperature = values.get("temperature", {})
        values["temperature"] = {m: float(t) for m, t in temperature.items() if isinstance(t, (int, float))}
        name = payload.get("name") if isinstance(payload.get("name"), str) else arch
        return cls(name=name, arch=arch, config=config, **values,
                   extra={k: v for k, v in payload.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> "ModelCard":
        """The card in ``path``; :class:`ModelCardError` naming the file when it is missing or unreadable."""
        payload = read_json(Path(path))
        if payload is None:
            raise ModelCardError(f"{path} is missing or not valid JSON; re-ship or re-promote the model to rewrite it")
        return cls.from_json(payload, source=str(path))

    @classmethod
    def for_run(cls, run) -> "ModelCard":
        """The card of a run folder's checkpoints (a :class:`~imagemasknet.core.run_folder.RunFolder`)."""
        if not isinstance(run.config.get("arch"), str):
            raise ModelCardError(f"{run.path} is not a run folder (no config.json naming an architecture)")
        return cls(name=run.config["arch"], arch=run.config["arch"], version=run.name, config=run.config,
                   temperature=run.temperatures, source_run=str(run.path), schema_version=SCHEMA_VERSION,
                   preprocessing=preprocessing_of(run.config))

    def to_json(self) -> dict:
        payload: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name == "pretrained" and value == {}:
                payload[spec.name] = None
            elif spec.name != "extra" and (value or spec.name in ("name", "arch")):
                payload[spec.name] = value
        return {**payload, **self.extra}

    def write(self, path: Path) -> None:
        write_json(Path(path), self.to_json())

    @property
    def image_size(self) -> int:
        size = self.preprocessing.get("image_size", self.config.get("image_size", DEFAULT_IMAGE_SIZE))
        return int(size) if isinstance(size, (int, float)) else DEFAULT_IMAGE_SIZE

    @property
    def paint_out_annotations(self) -> bool:
        """Whether burnt-in marks are painted out of a scan before the model sees it (as in its training)."""
        return bool(self.preprocessing.get("paint_out_annotations", self.config.get("paint_out_annotations", False)))

    @property
    def promoted(self) -> bool:
        return bool(self.promoted_at)

    @property
    def provisional(self) -> bool:
        return self.version.lower() == "provisional" or bool(self.note)

    @property
    def flag_thresholds(self) -> dict[str, float]:
        """The malignancy flag's P(malignant) threshold per inference mode."""
        modes = self.malignancy_flag.get("modes")
        return {m: float(v["threshold"]) for m, v in (modes if isinstance(modes, dict) else {}).items()
                if isinstance(v, dict) and isinstance(v.get("threshold"), (int, float))}

    def flag_footing(self, mode: str) -> str:
        """What the mode's threshold applies to: P(malignant), or P(malignant | a lesion) for mask mode."""
        entry = (self.malignancy_flag.get("modes") or {}).get(mode)
        return entry.get("footing", "P(malignant)") if isinstance(entry, dict) else "P(malignant)"

    def flag_sensitivity(self, mode: str, where: str = "cross_validated") -> float | None:
        """The flag's measured sensitivity in ``mode``: ``cross_validated`` (the training data, out of fold) or a
        data set's name (as the card stores it)."""
        entry = (self.malignancy_flag.get("modes") or {}).get(mode)
        figure = entry.get(where, {}).get("sensitivity", {}) if isinstance(entry, dict) else {}
        value = figure.get("value") if isinstance(figure, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def unseen_hospital(self, mode: str) -> float | None:
        """The flag's sensitivity in ``mode`` at a hospital the model never trained on (``malignancy_flag``'s
        ``unseen_hospital``: {"measured_on", "sensitivity": {mode: value}}), or None when not measured."""
        entry = self.malignancy_flag.get("unseen_hospital")
        value = (entry.get("sensitivity") or {}).get(mode) if isinstance(entry, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def exclusion_threshold(self) -> float | None:
        """The P(normal) a scan must exceed to be reassured as normal; None: the model never reassures."""
        value = self.lesion_exclusion.get("threshold")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def flag_target(self) -> float:
        target = self.malignancy_flag.get("target_sensitivity")
        return float(target) if isinstance(target, (int, float)) else 0.0

    def cross_validation_means(self) -> dict[str, dict[str, float]]:
        """mode → metric → the cross-validation mean."""
        means: dict[str, dict[str, float]] = {}
        for mode, metrics in self.cross_validation.items():
            for metric, entry in (metrics if isinstance(metrics, dict) else {}).items():
                if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
                    means.setdefault(mode, {})[metric] = float(entry["mean"])
        return means


DECODING = ("greyscale uint8 by imagemasknet.data.scans.read_scan: 16-bit and float stretched by their own min..max, "
            "colour by ITU-R 601-2 luma, alpha composited on black, EXIF orientation applied")


def preprocessing_of(config: dict) -> dict:
    """What a model trained with ``config`` expects of a scan, as its card records it."""
    from imagemasknet.models import get_spec  # the registry imports PyTorch; a card is read without it

    spec = get_spec(config["arch"])
    size = config.get("image_size", DEFAULT_IMAGE_SIZE)
    return {"image_size": int(size) if isinstance(size, (int, float)) else DEFAULT_IMAGE_SIZE,
            "channels": spec.image_channels, "normalisation": spec.normalisation, "decoding": DECODING,
            "paint_out_annotations": bool(config.get("paint_out_annotations", False))}
