"""Run a model over decoded arrays, and turn its predictions into a report (JSON + table)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imagemasknet.data.dataset import CLASSES, Arrays
from imagemasknet.data.transforms import model_input
from imagemasknet.evaluation.metrics import (bootstrap, confusion, dice, expected_calibration_error, mean_sd,
                                             point_metrics, reliability, roc_auc, roc_curve, softmax)
from imagemasknet.evaluation.site_threshold import operating_point
from imagemasknet.models import ModelSpec


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray
    logits: np.ndarray  # (N, 3), before temperature
    dice: np.ndarray  # (N,), NaN where the model predicts no lesion map or the scan has no lesion
    texture: np.ndarray | None = None  # (N, D) the familiarity score's statistics, for models that give them

    def subset(self, rows: np.ndarray) -> "Predictions":
        """The predictions of the scans where ``rows`` (a boolean mask) is true."""
        return Predictions([i for i, keep in zip(self.ids, rows) if keep], self.labels[rows], self.logits[rows],
                           self.dice[rows], None if self.texture is None else self.texture[rows])


@torch.no_grad()
def predict_arrays(model: torch.nn.Module, spec: ModelSpec, arrays: Arrays, mode: str,
                   device: torch.device, batch_size: int = 32, flip_average: bool = False) -> Predictions:
    """``flip_average``: average the logits (and lesion logits) over each scan and its left-right mirror."""
    model.eval()
    logits, dices, textures = [], [], []
    for start in range(0, len(arrays.ids), batch_size):
        images = torch.from_numpy(arrays.images[start:start + batch_size]).unsqueeze(1)
        masks = torch.from_numpy(arrays.masks[start:start + batch_size]).unsqueeze(1)
        output = model(*model_input(spec, images, masks, mode, device))
        class_logits, lesion_logits = output.logits.float(), output.lesion_logits
        if flip_average:
            mirrored = model(*model_input(spec, images.flip(-1), masks.flip(-1), mode, device))
            class_logits = (class_logits + mirrored.logits.float()) / 2
            if lesion_logits is not None:
                lesion_logits = (lesion_logits + mirrored.lesion_logits.flip(-1)) / 2
        logits.append(class_logits.cpu().numpy())
        if output.texture is not None:
            textures.append(output.texture.float().cpu().numpy())
        for n in range(len(images)):
            truth = arrays.masks[start + n]
            if lesion_logits is None or not truth.any():
                dices.append(np.nan)
            else:
                lesion = lesion_logits[n, 0]
                if lesion.shape != truth.shape:
                    lesion = F.interpolate(lesion[None, None], size=truth.shape, mode="bilinear")[0, 0]
                dices.append(dice((lesion > 0).cpu().numpy(), truth))
    return Predictions(list(arrays.ids), arrays.labels.copy(), np.concatenate(logits), np.array(dices),
                       np.concatenate(textures) if textures else None)


def report(predictions: Predictions, temperature: float = 1.0, resamples: int = 1000,
           clusters: np.ndarray | None = None) -> dict:
    """Every metric with its bootstrap 95 % CI, the confusion matrix, ROC curves and reliability."""
    probabilities = softmax(predictions.logits, temperature)
    y = predictions.labels
    result = {
        "n": int(len(y)),
        "temperature": temperature,
        "metrics": bootstrap(probabilities, y, resamples=resamples, clusters=clusters),
        "confusion": confusion(y, probabilities.argmax(1)).tolist(),
        "roc": {},
        "reliability": reliability(probabilities, y),
    }
    for c, name in enumerate(CLASSES):
        if (y == c).any() and (y != c).any():
            fpr, tpr, _ = roc_curve(y == c, probabilities[:, c])
            result["roc"][name] = {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()}
    lesion_dice = predictions.dice[~np.isnan(predictions.dice)]
    if len(lesion_dice):
        result["lesion_dice"] = {"mean": float(lesion_dice.mean()), "median": float(np.median(lesion_dice)),
                                 "n": int(len(lesion_dice))}
    return result


def format_report(reports: dict[str, dict], title: str = "") -> str:
    """Plain-text table: one column per mode, each metric as value [CI]."""
    modes = list(reports)
    keys = list(next(iter(reports.values()))["metrics"]) if reports else []
    width = max([len(k) for k in keys] + [10])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  " + "  ".join(f"{m:<24}" for m in modes))
    for key in keys:
        cells = []
        for mode in modes:
            m = reports[mode]["metrics"][key]
            cells.append(f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]".ljust(24))
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    for mode in modes:
        r = reports[mode]
        lines.append(f"confusion ({mode}; rows true, columns predicted: {', '.join(CLASSES)}): {r['confusion']}")
        if "lesion_dice" in r:
            lines.append(f"lesion Dice ({mode}): mean {r['lesion_dice']['mean']:.3f} over {r['lesion_dice']['n']} lesion scans")
    return "\n".join(lines)


def lesion_summary(predictions: Predictions, temperature: float = 1.0) -> dict:
    """On scans labelled benign or malignant: benign-vs-malignant AUC from P(malignant), and the
    share of those lesion scans the model calls normal (the external-data figures)."""
    probabilities = softmax(predictions.logits, temperature)
    normal, malignant = CLASSES.index("normal"), CLASSES.index("malignant")
    lesion = predictions.labels != normal
    if not lesion.any():
        return {}
    return {
        "n_lesion_scans": int(lesion.sum()),
        "benign_vs_malignant_auc": roc_auc(predictions.labels[lesion] == malignant, probabilities[lesion, malignant]),
        "lesions_called_normal": float((probabilities[lesion].argmax(1) == normal).mean()),
    }


def evaluate_model(model: torch.nn.Module, spec: ModelSpec, arrays: Arrays, modes: list[str],
                   temperatures: dict[str, float], device: torch.device, clusters: np.ndarray | None = None,
                   resamples: int = 1000, sensitivity: float | None = 0.95) -> dict[str, dict]:
    """A full report per mode, with the lesion summary and (unless ``sensitivity`` is None) the operating point
    that reaches that malignant sensitivity on these scans, on the footing the app applies in that mode. Scans of several
    sources are also reported per source (``by_source``)."""
    reports = {}
    for mode in modes:
        predictions = predict_arrays(model, spec, arrays, mode, device)
        temperature = temperatures.get(mode, 1.0)
        reports[mode] = _full_report(predictions, temperature, clusters, resamples, sensitivity, mode)
        sources = list(dict.fromkeys(arrays.sources.tolist()))
        if len(sources) > 1:
            reports[mode]["by_source"] = {}
            for source in sources:
                rows = arrays.sources == source
                reports[mode]["by_source"][source] = _full_report(
                    predictions.subset(rows), temperature, None if clusters is None else clusters[rows], resamples,
                    sensitivity, mode)
    return reports


def _full_report(predictions: Predictions, temperature: float, clusters: np.ndarray | None, resamples: int,
                 sensitivity: float | None, mode: str) -> dict:
    result = report(predictions, temperature, resamples=resamples, clusters=clusters)
    result["lesions"] = lesion_summary(predictions, temperature)
    result["uncalibrated_ece"] = expected_calibration_error(softmax(predictions.logits), predictions.labels)
    if sensitivity is not None:
        result["operating_point"] = operating_point(predictions.labels, softmax(predictions.logits, temperature),
                                                    sensitivity, mode)
    return result


def cross_validation_report(folds: list[dict], resamples: int = 1000) -> dict:
    """Merge cross-validation folds trained as independent jobs into one report.

    ``folds``: one dict per fold run, ``{"run": str, "fold": int | None, "predictions": {mode:
    Predictions on that run's own test split}, "temperatures": {mode: float}}``. Per mode it gives
    each fold's point metrics, their mean ± SD over folds (the README's cross-validation figures),
    and the pooled out-of-fold predictions (each calibrated by its own fold's temperature) with
    bootstrap CIs. Test splits that overlap are refused: they would count a scan twice.
    """
    if not folds:
        raise ValueError("no folds to merge")
    owner: dict[str, str] = {}
    for fold in folds:
        for image_id in next(iter(fold["predictions"].values())).ids:
            if image_id in owner:
                raise ValueError(f"folds overlap: {image_id} is in the test split of both {owner[image_id]} and {fold['run']}")
            owner[image_id] = fold["run"]
    modes = [m for m in folds[0]["predictions"] if all(m in f["predictions"] for f in folds)]
    result: dict = {"n": len(owner), "folds": [], "modes": {}}
    for fold in folds:
        result["folds"].append({"run": fold["run"], "fold": fold["fold"],
                                "n": len(next(iter(fold["predictions"].values())).ids),
                                "temperature": {m: fold["temperatures"].get(m, 1.0) for m in modes}})
    for mode in modes:
        rows, calibrated = [], []
        for fold in folds:
            p, t = fold["predictions"][mode], fold["temperatures"].get(mode, 1.0)
            row = {"run": fold["run"], "fold": fold["fold"], "n": len(p.ids), **point_metrics(softmax(p.logits, t), p.labels)}
            if not np.isnan(p.dice).all():
                row["lesion_dice"] = float(np.nanmean(p.dice))
            rows.append(row)
            calibrated.append(Predictions(p.ids, p.labels, p.logits / t, p.dice))
        summary = {}
        for key in [k for k in rows[0] if k not in ("run", "fold", "n")]:
            values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
            values = values[~np.isnan(values)]
            if len(values):
                summary[key] = {**mean_sd(values), "folds": int(len(values))}
        pooled = Predictions([i for p in calibrated for i in p.ids], np.concatenate([p.labels for p in calibrated]),
                             np.concatenate([p.logits for p in calibrated]), np.concatenate([p.dice for p in calibrated]))
        result["modes"][mode] = {"per_fold": rows, "mean_sd": summary,
                                 "pooled": {**report(pooled, 1.0, resamples=resamples), "lesions": lesion_summary(pooled)}}
    return result


def format_cv_report(cv: dict, title: str = "") -> str:
    """Plain-text table of :func:`cross_validation_report`: mean ± SD over folds and the pooled
    out-of-fold value [95 % CI], per mode."""
    lines = [title] if title else []
    lines.append("folds: " + ", ".join(f"{Path(f['run']).name} (fold {f['fold']}, {f['n']} scans)" for f in cv["folds"]))
    for mode, entry in cv["modes"].items():
        lines.append(f"{mode} mode{'':<12}mean ± SD over {len(cv['folds'])} folds    pooled out-of-fold [95% CI]")
        for key in ("accuracy", "macro_auc", "macro_f1", "recall_malignant", "ece", "lesion_dice"):
            if key not in entry["mean_sd"]:
                continue
            m = entry["mean_sd"][key]
            pooled = entry["pooled"]["metrics"].get(key)
            cell = f"{pooled['value']:.3f} [{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}]" if pooled else "–"
            lines.append(f"  {key:<20}{m['mean']:.3f} ± {m['std']:.3f}{'':<16}{cell}")
    return "\n".join(lines)
