"""The decision material a shipped model carries, all of it from its cross-validation's out-of-fold
predictions (each BUSI scan judged by the one fold model that never trained on it), never from
external scans; BUS-BRA only reports what it gives there.

* the out-of-fold predictions themselves (``weights/NAME.oof.json``: what the Gallery marks with);
* the malignancy flag: per mode, the P(malignant) threshold that flags 90 % of the out-of-fold malignant
  scans, with its sensitivity and specificity there, those of the same rule cross-validated (the
  threshold chosen on four folds' predictions and applied to the fifth's), and on BUS-BRA;
* the familiarity reference (``weights/NAME.familiarity.safetensors``) and its two thresholds, set from the
  out-of-fold familiarity scores, with how often each fires on BUSI and BUS-BRA.

``summarise.py --ship`` calls :func:`decision_material`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imagemasknet.core.files import file_sha256
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.dataset import CLASSES, Arrays, load_arrays
from imagemasknet.data.owndata import load_dataset
from imagemasknet.data.sources import training_set_of
from imagemasknet.data.transforms import augment_pair, build_augmentation
from imagemasknet.evaluation.decision import TARGET_SENSITIVITY, flag_figures, sensitivity_threshold
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.evaluation.metrics import softmax
from imagemasknet.inference.familiarity import Familiarity
from imagemasknet.inference.predictor import Predictor

MALIGNANT = CLASSES.index("malignant")


def _augmentation_of(run: Path) -> str:
    return RunFolder(run).config.get("augment", "ultrasound")


def _arrays_for(run: Path):
    config = RunFolder(run).config
    return load_arrays(training_set_of(config), config["image_size"])


AUGMENTED_COPIES = 2  # of each training scan, under the run's own training augmentation, for the refusal reference


def augmented_copies(arrays: Arrays, augmentation: str, seed: int, copies: int = AUGMENTED_COPIES) -> Arrays:
    """The scans as the training augmentation draws them (seeded), ``copies`` of each."""
    transform = build_augmentation(augmentation, arrays.images.shape[-1])
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        images, masks = [], []
        for n in range(len(arrays.ids)):
            for _ in range(copies):
                image, mask = augment_pair(transform, torch.from_numpy(arrays.images[n])[None],
                                           torch.from_numpy(arrays.masks[n].astype(np.uint8))[None])
                images.append(image[0].numpy())
                masks.append(mask[0].numpy().astype(bool))
    finally:
        torch.set_rng_state(generator_state)
    return Arrays([f"{i}#{c}" for i in arrays.ids for c in range(copies)], np.repeat(arrays.labels, copies),
                  np.stack(images), np.stack(masks))


def _textures(predictor: Predictor, arrays: Arrays) -> np.ndarray:
    return predict_arrays(predictor.model, predictor.spec, arrays, "image", torch.device("cpu")).texture


def training_textures(predictor: Predictor, train: Arrays, augmentation: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A model's training scans' texture statistics, and those of their copies under its training augmentation."""
    return _textures(predictor, train), _textures(predictor, augmented_copies(train, augmentation, seed))


def out_of_fold(results: Path, preset: str, folds: list[int]) -> list[dict]:
    """One row per BUSI scan: its fold, label, calibrated probabilities per mode (from its fold's model and
    temperature) and both familiarity scores (against that model's own training scans)."""
    rows = []
    cpu = torch.device("cpu")
    for k in folds:
        run = results / f"{preset}-fold{k}"
        predictor = Predictor.from_run(run, device="cpu", check_training_data=False)
        arrays, split = _arrays_for(run), RunFolder(run).split
        test = arrays.take(split["test"])
        predictions = {m: predict_arrays(predictor.model, predictor.spec, test, m, cpu) for m in predictor.spec.modes}
        fold = Familiarity.fit(*training_textures(predictor, arrays.take(split["train"]), _augmentation_of(run), seed=k))
        scores = fold.unfamiliar.score(predictions["image"].texture)
        far = fold.refusal.score(predictions["image"].texture)
        probabilities = {m: softmax(p.logits, predictor.temperatures.get(m, 1.0)) for m, p in predictions.items()}
        files = {c.id: c.image_path for c in training_set_of(predictor.card.config).cases}
        for n, image_id in enumerate(test.ids):
            rows.append({"id": image_id, "sha256": file_sha256(files[image_id])[:16], "label": CLASSES[int(test.labels[n])], "fold": k,
                         "probabilities": {m: {c: round(float(v), 4) for c, v in zip(CLASSES, probabilities[m][n])}
                                           for m in probabilities},
                         "familiarity": round(float(scores[n]), 4), "refusal_score": round(float(far[n]), 4)})
    return rows


def _malignancy_flag(rows: list[dict], mode: str, external: dict | None) -> dict:
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    p = np.array([r["probabilities"][mode]["malignant"] for r in rows])
    folds = np.array([r["fold"] for r in rows])
    threshold = sensitivity_threshold(labels == MALIGNANT, p, TARGET_SENSITIVITY)
    entry = {"threshold": threshold, "out_of_fold": flag_figures(labels, p, p >= threshold)}
    if len(np.unique(folds)) > 1:
        nested = np.zeros(len(rows), dtype=bool)
        for k in np.unique(folds):
            others = folds != k
            nested[~others] = p[~others] >= sensitivity_threshold(labels[others] == MALIGNANT, p[others], TARGET_SENSITIVITY)
        entry["cross_validated"] = flag_figures(labels, p, nested)
    if external is not None:
        entry["busbra"] = flag_figures(external["labels"], external["p"][mode], external["p"][mode] >= threshold)
    return entry


def decision_material(results: Path, preset: str, folds: list[int], shipped: Predictor, busbra: str | None) -> dict:
    """Everything above for the shipped model; writes nothing (``summarise.ship`` writes the files)."""
    rows = out_of_fold(results, preset, folds)
    scores = np.array([r["familiarity"] for r in rows])
    far = np.array([r["refusal_score"] for r in rows])
    run = results / f"{preset}-all"
    arrays, split, augmentation = _arrays_for(run), RunFolder(run).split, _augmentation_of(run)
    cpu = torch.device("cpu")
    reference = Familiarity.fit(*training_textures(shipped, arrays.take(split["train"]), augmentation, seed=len(folds)),
                                scores, far)
    unfamiliar, refusal = reference.unfamiliar, reference.refusal
    validation = arrays.take(split["validation"])
    seen = _textures(shipped, validation)
    augmented = _textures(shipped, augmented_copies(validation, augmentation, seed=99))
    familiarity = {
        "unfamiliar_above": unfamiliar.threshold, "refuse_above": refusal.threshold,
        "rule": "unfamiliar above the 95th percentile of the out-of-fold BUSI scores against the training scans; "
                "refused as not an ultrasound above 1.5 × the largest out-of-fold score against the training scans "
                "and their augmented copies",
        "busi_out_of_fold": {"n": len(scores), "unfamiliar": float((scores > unfamiliar.threshold).mean()),
                             "median": float(np.median(scores)), "max": float(scores.max()),
                             "refusal_score_max": float(far.max())},
        "busi_validation_split_of_the_shipped_model": {
            "n": len(validation.ids), "unfamiliar": float((unfamiliar.score(seen) > unfamiliar.threshold).mean()),
            "refused": float((refusal.score(seen) > refusal.threshold).mean()),
            "refused_when_augmented_as_in_training": float((refusal.score(augmented) > refusal.threshold).mean())},
    }
    external = None
    if busbra:
        data = load_dataset(busbra)
        scans = load_arrays(data, shipped.image_size)
        predictions = {m: predict_arrays(shipped.model, shipped.spec, scans, m, cpu) for m in shipped.spec.modes}
        external = {"labels": scans.labels,
                    "p": {m: softmax(p.logits, shipped.temperatures.get(m, 1.0))[:, MALIGNANT] for m, p in predictions.items()}}
        external_scores = unfamiliar.score(predictions["image"].texture)
        external_far = refusal.score(predictions["image"].texture)
        familiarity["busbra"] = {"n": len(external_scores),
                                 "unfamiliar": float((external_scores > unfamiliar.threshold).mean()),
                                 "refused": float((external_far > refusal.threshold).mean()),
                                 "median": float(np.median(external_scores)), "refusal_score_max": float(external_far.max()),
                                 "note": "256-px decoded scans; report only, chose nothing"}
    flag = {"target_sensitivity": TARGET_SENSITIVITY,
            "chosen_on": f"the {len(rows)} out-of-fold BUSI predictions of the 5-fold cross-validation (each scan "
                         "judged by the fold model that never trained on it, calibrated by that fold's temperature)",
            "modes": {m: _malignancy_flag(rows, m, external) for m in shipped.spec.modes}}
    return {"out_of_fold": rows, "malignancy_flag": flag, "familiarity": familiarity, "reference": reference}
