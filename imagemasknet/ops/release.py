"""Model bundles from run folders: ``imagemasknet release`` (a cross-validation's fold runs and an all-data run)
and the material a promoted run carries.

Everything a bundle decides with comes from predictions the model did not train on, never from external scans:

* **release**: each fold run judges its own test fold (the out-of-fold predictions, ``oof.json``), and every
  threshold is set on them (:func:`~imagemasknet.evaluation.decision.decision_rules`); the familiarity
  reference is the all-data run's training scans (and copies under its training augmentation), its thresholds
  from the fold runs' out-of-fold familiarity scores;
* **a promoted run** (no cross-validation): the familiarity reference is its training scans, its thresholds from
  its validation split (scans it did not train on); it has no malignancy flag and no lesion exclusion, and says
  so (:attr:`~imagemasknet.models.bundle.Bundle.missing`).

External data sets given by name (``--external busbra=labels.csv``) are only reported on.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from imagemasknet.core.files import file_sha256, write_json
from imagemasknet.core.paths import WEIGHTS_DIR
from imagemasknet.core.run_folder import BEST, RunFolder
from imagemasknet.data.dataset import CLASSES, Arrays, content_fingerprint, load_arrays
from imagemasknet.data.owndata import load_dataset
from imagemasknet.data.scans import read_scan
from imagemasknet.data.sources import SOURCES, parse_sources, training_set_of
from imagemasknet.data.splits import split_file_for
from imagemasknet.data.transforms import augment_pair, build_augmentation
from imagemasknet.evaluation.decision import LOW_CONFIDENCE_BELOW, decision_rules, is_low_confidence
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.evaluation.metrics import mean_sd, roc_auc, softmax
from imagemasknet.inference.familiarity import Familiarity
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import count_parameters, get_spec
from imagemasknet.models.bundle import CARD, FAMILIARITY, HISTORY, OUT_OF_FOLD, WEIGHTS, Bundle, readable_by_all, write_out_of_fold
from imagemasknet.models.card import SCHEMA_VERSION, ModelCard, preprocessing_of
from imagemasknet.models.weights import save_weights

AUGMENTED_COPIES = 2  # of each training scan, under the run's own training augmentation, for the refusal reference
REFERENCE_SCANS = 6  # scans whose predictions the card records, so a copy of the weights can be checked
CPU = torch.device("cpu")


def run_arrays(run: RunFolder) -> Arrays:
    return load_arrays(training_set_of(run.config), run.config["image_size"],
                       paint_out_annotations=run.config.get("paint_out_annotations", False))


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
                  np.stack(images), np.stack(masks), np.repeat(arrays.sources, copies))


def textures(predictor: Predictor, arrays: Arrays) -> np.ndarray:
    return predict_arrays(predictor.model, predictor.spec, arrays, "image", CPU).texture


def training_textures(predictor: Predictor, train: Arrays, augmentation: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A model's training scans' texture statistics, and those of their copies under its training augmentation."""
    return textures(predictor, train), textures(predictor, augmented_copies(train, augmentation, seed))


def out_of_fold(fold_runs: list[Path], familiarity: bool = True) -> list[dict]:
    """One row per scan of the runs' test splits: its source, fold (None for a run on a split file), label,
    calibrated probabilities per mode (its run's model, with that run's temperature) and, with ``familiarity``,
    both familiarity scores (against that model's own training scans)."""
    rows = []
    for path in fold_runs:
        run = RunFolder(path)
        predictor = Predictor(Bundle.of_run(run), device="cpu", check_training_data=False)
        arrays, split = run_arrays(run), run.split
        test = arrays.take(split["test"])
        predictions = {m: predict_arrays(predictor.model, predictor.spec, test, m, CPU) for m in predictor.spec.modes}
        fold_number = None if run.config.get("split_file") else int(run.config["fold"])
        scores = far = None
        if familiarity:
            fold = Familiarity.fit(*training_textures(predictor, arrays.take(split["train"]),
                                                      run.config.get("augment", "ultrasound"), seed=int(run.config["fold"])))
            scores = fold.unfamiliar.score(predictions["image"].texture)
            far = fold.refusal.score(predictions["image"].texture)
        probabilities = {m: softmax(p.logits, predictor.temperatures.get(m, 1.0)) for m, p in predictions.items()}
        files = {c.id: c.image_path for c in training_set_of(run.config).cases}
        for n, image_id in enumerate(test.ids):
            row = {"id": image_id, "source": str(test.sources[n]), "sha256": file_sha256(files[image_id])[:16],
                   "label": CLASSES[int(test.labels[n])], "fold": fold_number,
                   "probabilities": {m: {c: round(float(v), 4) for c, v in zip(CLASSES, probabilities[m][n])}
                                     for m in probabilities}}
            if familiarity:
                row.update(familiarity=round(float(scores[n]), 4), refusal_score=round(float(far[n]), 4))
            rows.append(row)
    return rows


def _fold_figure(report: dict, mode: str) -> dict | None:
    result = report.get("modes", {}).get(mode)
    if not result:
        return None
    row = {key: result["metrics"][key] for key in ("accuracy", "macro_auc", "recall_malignant", "macro_f1", "ece")
           if key in result.get("metrics", {})}
    if "lesion_dice" in result:
        row["lesion_dice"] = result["lesion_dice"]["mean"]
    return row


class ReleaseError(ValueError):
    """Runs that cannot make a bundle; the message names the run and the fix."""


def check_runs(fold_runs: list[Path], all_run: Path) -> None:
    """Refuse runs a release cannot be honest from: a folder that is no finished run, a fold run without its
    test evaluation (the card's cross-validation figures would be silently empty), an all-data run that held out
    a test fold."""
    for path in [*fold_runs, all_run]:
        run = RunFolder(path)
        if not run.config or not (Path(path) / BEST).is_file():
            raise ReleaseError(f"{path} is not a finished run folder (no config.json or {BEST}); "
                               "train it first or name the right folder.")
    for path in fold_runs:
        if RunFolder(path).metrics.get("metrics-test") is None:
            raise ReleaseError(f"the fold run {path} has no metrics-test.json; evaluate it first: imagemasknet "
                               f"evaluate --run {path} --on test --json {Path(path) / 'metrics-test.json'}")
    if RunFolder(all_run).split.get("test"):
        raise ReleaseError(f"{all_run} held out a test fold; the shipped model trains on every scan "
                           "(train it with --fold none).")


def cross_validation_summary(fold_runs: list[Path], modes: tuple[str, ...]) -> dict:
    """mode → metric → mean ± SD over the folds' test evaluations (``metrics-test.json``), with each fold's
    figures, pooled and per source."""
    summary: dict = {}
    for mode in modes:
        folds, by_source = [], {}
        for path in fold_runs:
            report = RunFolder(path).metrics.get("metrics-test")
            if report is None:
                continue
            row = _fold_figure(report, mode)
            if row:
                folds.append({"fold": RunFolder(path).config.get("fold"), **row})
            for source, part in (report["modes"].get(mode, {}).get("by_source") or {}).items():
                figure = _fold_figure({"modes": {mode: part}}, mode)
                if figure:
                    by_source.setdefault(source, []).append(figure)
        entry: dict = {"folds": folds}
        for key in ("accuracy", "macro_auc", "recall_malignant", "macro_f1", "ece"):
            values = [f[key]["value"] for f in folds if key in f]
            if values:
                entry[key] = mean_sd(values)
        dice = [f["lesion_dice"] for f in folds if f.get("lesion_dice") is not None]
        if dice:
            entry["lesion_dice"] = mean_sd(dice)
        entry["by_source"] = {source: {key: mean_sd([f[key]["value"] for f in rows if key in f])
                                       for key in ("accuracy", "macro_auc", "recall_malignant")
                                       if any(key in f for f in rows)}
                              for source, rows in by_source.items()}
        summary[mode] = entry
    return summary


def low_confidence_figures(rows: list[dict], modes: tuple[str, ...]) -> dict:
    """How often the low-confidence rule fires out of fold, and the accuracy on each side of it."""
    out = {}
    for mode in modes:
        low = np.array([is_low_confidence(r["probabilities"][mode]) for r in rows])
        right = np.array([max(r["probabilities"][mode], key=r["probabilities"][mode].get) == r["label"] for r in rows])
        out[mode] = {"share_low": float(low.mean()), "accuracy_low": float(right[low].mean()) if low.any() else None,
                     "accuracy_confident": float(right[~low].mean()) if (~low).any() else None}
    return out


def _external(predictor: Predictor, name: str, labels_csv: str, unfamiliar) -> dict:
    """A labelled external set's calibrated probabilities per mode (and which scans are familiar)."""
    scans = load_arrays(load_dataset(labels_csv), predictor.image_size)
    predictions = {m: predict_arrays(predictor.model, predictor.spec, scans, m, CPU) for m in predictor.spec.modes}
    return {"name": name, "labels": scans.labels,
            "probabilities": {m: softmax(p.logits, predictor.temperatures.get(m, 1.0)) for m, p in predictions.items()},
            "familiar": unfamiliar.score(predictions["image"].texture) <= unfamiliar.threshold}


def trained_on(config: dict) -> dict:
    """What a card says of the data a run trained on: each source with its licence and citation."""
    names = parse_sources(config.get("sources", "busi")) if not (config.get("data") and config.get("data_mode",
                                                                                                    "replace") == "replace") else []
    sources = [SOURCES[name].card() for name in names]
    if config.get("data"):
        sources.append({"name": "own", "title": f"a site's own scans ({Path(str(config['data'])).name})"})
    return {"sources": sources, "split_files": {name: {"path": f"splits/{split_file_for(name).name}",
                                                        "sha256": file_sha256(split_file_for(name))}
                                                for name in names if split_file_for(name).is_file()}}


def _stage(out: Path, fill) -> Bundle:
    """Write a bundle into a fresh folder beside ``out`` and swap it into place in one step: a crash leaves the old
    bundle or the new one, never half of either, and never neither."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent))
    try:
        fill(staging)
        readable_by_all(staging)
        Bundle.read(staging)
        if not out.exists():
            os.replace(staging, out)
        elif not _exchange(staging, out):  # a system without the swap: move aside, put back on failure
            retired = out.with_name(f".{out.name}-old-{os.getpid()}")
            os.replace(out, retired)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(retired, out)
                raise
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what was left unplaced, or the old bundle after the swap
    return Bundle.read(out)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where the system has no
    such call."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD and RENAME_EXCHANGE from <fcntl.h> and <linux/fs.h>
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def release(fold_runs: list[Path], all_run: Path, out: Path | None = None, name: str | None = None,
            external: dict[str, str] | None = None, unseen_hospital: str | None = None, version: str | None = None,
            resamples: int = 1000) -> Bundle:
    """The bundle of ``all_run``'s kept weights (stored float16), with every threshold set on the fold runs'
    out-of-fold predictions. ``external``: name → labels CSV, reported on only; ``unseen_hospital``: the external
    set whose flag sensitivity the "unfamiliar" trust line quotes (a hospital the model never trained on). ``name``
    defaults to the architecture's registered name and ``out`` to ``weights/NAME``, where the app looks for it."""
    check_runs(fold_runs, all_run)
    all_data = RunFolder(all_run)
    config, spec = all_data.config, get_spec(all_data.config["arch"])
    name = name or spec.name
    out = Path(out) if out is not None else WEIGHTS_DIR / name
    predictor = Predictor(Bundle.of_run(all_data), device="cpu", check_training_data=False)
    rows = out_of_fold(fold_runs)
    arrays, split = run_arrays(all_data), all_data.split
    reference = Familiarity.fit(*training_textures(predictor, arrays.take(split["train"]),
                                                   config.get("augment", "ultrasound"), seed=len(fold_runs)),
                                np.array([r["familiarity"] for r in rows]), np.array([r["refusal_score"] for r in rows]))
    reports = {set_name: _external(predictor, set_name, path, reference.unfamiliar)
               for set_name, path in (external or {}).items()}
    rules = decision_rules(rows, list(spec.modes), reference.unfamiliar.threshold,
                           reports.get(unseen_hospital) if unseen_hospital else None, resamples)
    flag, exclusion = rules["malignancy_flag"], rules["lesion_exclusion"]
    flag["chosen_on"] = (f"the {len(rows)} out-of-fold predictions of the {len(fold_runs)}-fold cross-validation (each "
                         "scan judged by the fold model that never trained on it, calibrated by that fold's temperature)")
    if unseen_hospital:
        flag["unseen_hospital"] = {"measured_on": unseen_hospital, "sensitivity": {
            m: flag["modes"][m][unseen_hospital]["sensitivity"]["value"] for m in spec.modes}}
    exclusion["chosen_on"] = f"the {len(rows)} out-of-fold predictions (image mode)"
    scores = np.array([r["familiarity"] for r in rows])
    familiarity = {"unfamiliar_above": reference.unfamiliar.threshold, "refuse_above": reference.refusal.threshold,
                   "rule": "unfamiliar above the 95th percentile of the out-of-fold scores against the training "
                           "scans; refused as not an ultrasound above 1.5 × the largest out-of-fold score against "
                           "the training scans and their augmented copies",
                   "out_of_fold": {"n": len(scores), "median": float(np.median(scores)), "max": float(scores.max())},
                   **{set_name: {"unfamiliar": float((~report["familiar"]).mean()), "n": len(report["labels"])}
                      for set_name, report in reports.items()}}
    external_figures = {}
    for set_name, report in reports.items():
        labels, lesion = report["labels"], report["labels"] != 0
        external_figures[set_name] = {m: {
            "n_lesion_scans": int(lesion.sum()),
            "lesions_called_normal": float((p[lesion].argmax(1) == 0).mean()) if lesion.any() else None,
            "benign_vs_malignant_auc": _auc(labels[lesion] == 2, p[lesion, 2])}
            for m, p in report["probabilities"].items()}
    training = trained_on(config)
    data = training_set_of(config)
    card = ModelCard(
        name=name, arch=spec.name, version=version or dt.date.today().isoformat(), schema_version=SCHEMA_VERSION,
        # The run folder's name only: its path on the training machine means nothing where the bundle is used.
        preprocessing=preprocessing_of(config), config={**config, "out_dir": all_data.name},
        architecture={"name": spec.name, "description": spec.description,
                      "parameters": count_parameters(predictor.model), "modes": list(spec.modes),
                      "predicts_lesion": spec.predicts_lesion},
        pretrained={} if spec.pretrained is None else {
            **spec.pretrained.meta(),
            "adapted": "1-channel greyscale input (the RGB stem summed over its inputs), per-image normalisation "
                       "(zero mean, unit variance) instead of ImageNet's mean and std, at 256 px; the 1000-class "
                       "head dropped"},
        storage="float16 weights (batch-norm statistics float32), cast to float32 on loading",
        trained_on=f"every training scan of {' and '.join(s['title'].split(':')[0] for s in training['sources'])} but "
                   "a grouped 10 % validation split (checkpoint and temperature); the recipe was fixed by the "
                   "cross-validation below",
        temperature=all_data.temperatures, malignancy_flag=flag, lesion_exclusion=exclusion, familiarity=familiarity,
        low_confidence={"rule": f"top calibrated probability under {LOW_CONFIDENCE_BELOW:.0%}",
                        "out_of_fold": low_confidence_figures(rows, spec.modes)},
        cross_validation=cross_validation_summary(fold_runs, spec.modes), external=external_figures,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        intended_use="Research and teaching: a second look at B-mode breast-ultrasound scans, showing class "
                     "probabilities, a predicted lesion outline and Grad-CAM. Not a medical device and not a diagnosis.",
        limitations=[
            "Trained on scans from " + " and ".join(s["title"].split(":")[1].split(";")[0].strip()
                                                    for s in training["sources"] if ":" in s["title"])
            + "; accuracy at other hospitals is lower (the unfamiliar notice says so per scan).",
            "Only BUSI has normal scans (one scanner); lesion-free regions of other scanners' scans are normal "
            "tissue the model has seen less of.",
            "Calibration (temperature) was fitted on the training hospitals; probabilities elsewhere may be "
            "miscalibrated.",
        ],
        extra={"training_data": {**training, "fingerprint": content_fingerprint(data), "scans": len(data.cases)},
               "reference_predictions": _reference_predictions(predictor, rows)},
    )

    def fill(folder: Path) -> None:
        save_weights(folder / WEIGHTS, predictor.model, {"arch": spec.name, "run": all_data.name}, half=True)
        card.write(folder / CARD)
        reference.save(folder / FAMILIARITY)
        write_out_of_fold(folder / OUT_OF_FOLD, name, rows)
        write_json(folder / HISTORY, all_data.history, compact=True)

    return _stage(out, fill)


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    return roc_auc(positive, score) if positive.any() and (~positive).any() else None


def _reference_predictions(predictor: Predictor, rows: list[dict]) -> list[dict]:
    """The probabilities of a few out-of-fold scans by the released weights in float32, so a copy (the float16
    one shipped) can be checked against them."""
    by_id = {c.id: c for c in training_set_of(predictor.card.config).cases}
    chosen = [r for r in rows if r["fold"] == 0][:: max(1, sum(r["fold"] == 0 for r in rows) // REFERENCE_SCANS)]
    out = []
    for row in chosen[:REFERENCE_SCANS]:
        prediction = predictor.predict(read_scan(by_id[row["id"]].image_path))
        out.append({"id": row["id"], "label": row["label"], "predicted": prediction.predicted_class,
                    "probabilities": prediction.probabilities})
    return out


def run_material(run: RunFolder, predictor: Predictor) -> tuple[Familiarity, dict]:
    """What a promoted run carries without a cross-validation: a familiarity reference of its training scans with
    thresholds from its validation split (scans it did not train on), and the card's familiarity block."""
    arrays, split = run_arrays(run), run.split
    plain, augmented = training_textures(predictor, arrays.take(split["train"]), run.config.get("augment", "ultrasound"),
                                         seed=0)
    validation = arrays.take(split.get("validation") or split["train"][:0])
    if not validation.ids:
        return Familiarity.fit(plain, augmented), {"rule": "no validation split: nothing is marked unfamiliar or "
                                                            "refused"}
    held_out = textures(predictor, validation)
    probe = Familiarity.fit(plain, augmented)
    reference = Familiarity.fit(plain, augmented, probe.unfamiliar.score(held_out), probe.refusal.score(held_out))
    return reference, {"unfamiliar_above": reference.unfamiliar.threshold, "refuse_above": reference.refusal.threshold,
                       "rule": f"thresholds from the run's {len(validation.ids)} validation scans (not trained on), as "
                               "a release sets them from out-of-fold scans"}


def release_manifest(bundle: Bundle) -> dict:
    """Each file of a bundle with its sha256 (what ``imagemasknet release`` prints)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(bundle.folder.iterdir()) if path.is_file()}
