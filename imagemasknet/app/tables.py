"""The tables the Training page shows: runs, evaluation reports, cross-validation folds and the model card's
figures, with every metric named in plain words (the data keep their short keys)."""
from __future__ import annotations

import math
from typing import Any, Iterable

from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.sources import SOURCES, parse_sources
from imagemasknet.models.card import ModelCard

METRIC_NAMES = {
    "accuracy": "accuracy", "recall_malignant": "malignant sensitivity", "macro_precision": "precision (macro)",
    "macro_recall": "recall (macro)", "macro_f1": "F1 (macro)", "macro_auc": "AUC (macro)",
    "ece": "expected calibration error",
}
_PLAIN = {
    **METRIC_NAMES, "recall_benign": "benign sensitivity", "recall_normal": "normal sensitivity",
    "specificity_malignant": "malignant specificity", "specificity_benign": "benign specificity",
    "specificity_normal": "normal specificity", "auc_malignant": "malignant AUC (one vs rest)",
    "auc_benign": "benign AUC (one vs rest)", "auc_normal": "normal AUC (one vs rest)", "lesion_dice": "lesion Dice",
    "uncalibrated_ece": "calibration error before temperature", "busbra_auc": "BUS-BRA AUC (benign vs malignant)",
    "busbra_called_normal": "BUS-BRA lesions called normal", "inner_validation_loss": "inner-validation loss",
    "loss": "loss",
}
HIGHLIGHTED = "malignant sensitivity"  # the figure that matters most clinically: tables mark its row


def plain(metric: str) -> str:
    """A metric's name in plain words."""
    return _PLAIN.get(metric, metric.replace("_", " "))


def run_row(run: RunFolder) -> dict:
    """A row of the runs table."""
    total = run.epochs_total
    last = run.last_epoch("accuracy", "heldout") or run.last_epoch("accuracy", "validation")
    return {
        "run": run.name,
        "model": run.arch,
        "state": run.state,
        "epochs": f"{run.epochs_done}/{total}" if total else str(run.epochs_done),
        "last held-out accuracy": ", ".join(f"{m} {v:.3f}" for m, v in last.items()) or "—",
        "evaluations": len(run.metrics),
        "problems": len(run.problems),  # named in full below the table
    }


def fold_values(runs: Iterable[RunFolder], metric: str = "accuracy",
                metrics_files: tuple[str, ...] = ("metrics-test", "metrics")) -> list[dict]:
    """One row per fold run and mode: {model, mode, fold, value, source}.

    The value comes from the run's evaluation on its test fold (``metrics-test.json`` or
    ``metrics.json``); a run not evaluated yet falls back to its last epoch's held-out number.
    """
    rows = []
    for run in runs:
        report = next((run.metrics[f] for f in metrics_files if f in run.metrics), None)
        found = False
        if report:
            for mode, result in report.get("modes", {}).items():
                value = value_of(result.get("metrics", {}).get(metric))
                if value is not None:
                    rows.append({"model": run.preset, "mode": mode, "fold": run.fold, "value": value,
                                 "source": next(f for f in metrics_files if f in run.metrics) + ".json"})
                    found = True
        if not found:
            for mode, value in run.last_epoch(metric, "heldout").items():
                rows.append({"model": run.preset, "mode": mode, "fold": run.fold, "value": value,
                             "source": "history.json (last epoch)"})
    return rows


def spread_summary(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation (n-1), min and max per model and mode."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        grouped.setdefault((row["model"], row["mode"]), []).append(row["value"])
    summary = []
    for (model, mode), values in grouped.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        summary.append({"model": model, "mode": mode, "folds": len(values), "mean": round(mean, 4),
                        "std": round(std, 4), "min": round(min(values), 4), "max": round(max(values), 4)})
    return summary


def value_of(entry: Any) -> float | None:
    if isinstance(entry, dict):
        entry = entry.get("value", entry.get("mean"))
    if isinstance(entry, (int, float)) and not (isinstance(entry, float) and math.isnan(entry)):
        return float(entry)
    return None


def metrics_rows(report: dict) -> list[dict]:
    """{mode, metric, value, ci_low, ci_high} for every metric of an evaluation report."""
    rows = []
    for mode, result in (report.get("modes") or {}).items():
        for name, entry in (result.get("metrics") or {}).items():
            if isinstance(entry, dict):
                rows.append({"mode": mode, "metric": name, "value": value_of(entry),
                             "ci_low": value_of(entry.get("ci_low")), "ci_high": value_of(entry.get("ci_high"))})
    return rows


def _format(value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:.3f}"
    if low is not None and high is not None:
        text += f" ({low:.3f}–{high:.3f})"
    return text


def metrics_wide(report: dict) -> list[dict]:
    """One row per metric, one column per mode: "value (95 % CI low–high)"."""
    table: dict[str, dict] = {}
    for row in metrics_rows(report):
        table.setdefault(row["metric"], {"metric": plain(row["metric"])})[row["mode"]] = _format(
            row["value"], row["ci_low"], row["ci_high"])
    return list(table.values())


def card_facts(card: ModelCard) -> dict[str, str]:
    """The card's facts as title → sentence: architecture, pretrained weights, training data, storage, date,
    calibration."""
    facts = {}
    architecture = card.architecture
    if architecture:
        parameters = architecture.get("parameters")
        facts["architecture"] = str(architecture.get("name", "?")) + (
            f" ({parameters:,} parameters)" if isinstance(parameters, int) else "")
        if architecture.get("description"):
            facts["design"] = str(architecture["description"])
    pretrained = card.pretrained
    if pretrained:
        facts["pretrained weights"] = (
            f"{pretrained.get('dataset', 'ImageNet')} from the pip package `{pretrained.get('package')}` "
            f"{pretrained.get('version', '')} (sha256 {str(pretrained.get('sha256', ''))[:12]}…, "
            f"{pretrained.get('licence', 'licence unknown')}); trained at {pretrained.get('input_size')} px, "
            f"{pretrained.get('channels')} channels, mean {pretrained.get('mean')}, std {pretrained.get('std')}. "
            f"Adapted: {pretrained.get('adapted', '')}")
    elif pretrained == {}:
        facts["pretrained weights"] = "none: trained from scratch"
    for title, value in (("trained on", card.trained_on), ("storage", card.storage), ("date", card.date)):
        if value:
            facts[title] = value
    if card.temperature:
        facts["temperature"] = ", ".join(f"{m} {t:.2f}" for m, t in card.temperature.items())
    return facts


def card_rows(card: ModelCard) -> list[dict]:
    """The model card's cross-validation: one row per metric, a column per mode, "mean ± std"."""
    table: dict[str, dict] = {}
    for mode, metrics in card.cross_validation.items():
        if not isinstance(metrics, dict):
            continue
        for name, entry in metrics.items():
            if name == "folds":
                continue
            if isinstance(entry, dict) and value_of(entry.get("mean")) is not None:
                text = f"{entry['mean']:.3f}"
                if value_of(entry.get("std")) is not None:
                    text += f" ± {entry['std']:.3f}"
            elif value_of(entry) is not None:
                text = f"{value_of(entry):.3f}"
            else:
                continue
            table.setdefault(name, {"metric": plain(name)})[mode] = text
    return list(table.values())


def source_name(source: str) -> str:
    return SOURCES[source].short if source in SOURCES else source


def card_sources(card: ModelCard) -> str:
    """The bundled sources the model trained on, in words (models from before sources existed trained on BUSI)."""
    sources = card.config.get("sources", "busi")
    try:
        names = parse_sources(sources) if isinstance(sources, str) else ["busi"]
    except ValueError:
        names = [str(sources)]
    return " and ".join(source_name(n) for n in names)


def card_source_rows(card: ModelCard) -> list[dict]:
    """The card's cross-validation per training source: one row per source and mode, "mean ± std"."""
    rows = []
    for mode, metrics in card.cross_validation.items():
        by_source = metrics.get("by_source") if isinstance(metrics, dict) else None
        for source, figures in (by_source or {}).items():
            row = {"source": source_name(source), "mode": mode}
            for key in ("accuracy", "macro_auc", "recall_malignant"):
                entry = figures.get(key) if isinstance(figures, dict) else None
                if isinstance(entry, dict) and value_of(entry.get("mean")) is not None:
                    row[plain(key)] = f"{entry['mean']:.3f} ± {value_of(entry.get('std')) or 0:.3f}"
            rows.append(row)
    return rows


LESION_FIGURES = (("benign_vs_malignant_auc", "benign vs malignant AUC"),
                  ("lesions_called_normal", "lesions called normal"))


def lesion_figures(block: dict) -> dict:
    """The lesion-scan figures of an evaluation block, as row cells (point values)."""
    return {title: round(value_of(block[key]), 3) for key, title in LESION_FIGURES
            if value_of(block.get(key)) is not None}


def report_source_rows(report: dict) -> list[dict]:
    """An evaluation's figures per source (its ``by_source``): one row per source and mode (point values, to fit
    a 1280-px window; the CIs are in the report and in the pooled table)."""
    rows = []
    for mode, result in (report.get("modes") or {}).items():
        for source, part in (result.get("by_source") or {}).items():
            metrics, lesions = part.get("metrics") or {}, part.get("lesions") or {}
            row = {"source": source_name(source), "mode": mode}
            for key in ("accuracy", "macro_auc", "recall_malignant"):
                if value_of(metrics.get(key)) is not None:
                    row[plain(key)] = round(value_of(metrics[key]), 3)
            rows.append(row | lesion_figures(lesions))
    return rows


def card_protocol_rows(card: ModelCard, key: str = "study_protocol") -> list[dict]:
    """``cross_validation[mode][key]`` (single evaluations with CIs) as rows: metric, a column per mode."""
    table: dict[str, dict] = {}
    for mode, metrics in card.cross_validation.items():
        block = metrics.get(key) if isinstance(metrics, dict) else None
        if isinstance(block, dict) and isinstance(block.get("metrics"), dict):
            block = block["metrics"]
        if not isinstance(block, dict):
            continue
        for name, entry in block.items():
            if isinstance(entry, dict) and value_of(entry) is not None:
                table.setdefault(name, {"metric": plain(name)})[mode] = _format(
                    value_of(entry), value_of(entry.get("ci_low")), value_of(entry.get("ci_high")))
    return list(table.values())


def card_external_rows(card: ModelCard) -> list[dict]:
    """External test sets of the card: one row per data set and mode."""
    rows = []
    for dataset, modes in card.external.items():
        if not isinstance(modes, dict):
            continue
        for mode, result in modes.items():
            if not isinstance(result, dict):
                continue
            accuracy = (result.get("metrics") or {}).get("accuracy")
            row = {"data set": dataset, "mode": mode, "lesion scans": result.get("n_lesion_scans", result.get("n"))}
            if isinstance(accuracy, dict):
                row["accuracy"] = _format(value_of(accuracy), value_of(accuracy.get("ci_low")), value_of(accuracy.get("ci_high")))
            rows.append(row | lesion_figures(result))
    return rows


def card_fold_values(card: ModelCard | None, metric: str = "accuracy") -> list[dict]:
    """Per-fold values in the model card (``cross_validation[mode]["folds"]``), as :func:`fold_values` rows; none
    without a card."""
    rows = []
    if card is None:
        return rows
    name = f"{card.name} (card)"
    for mode, metrics in card.cross_validation.items():
        folds = metrics.get("folds") if isinstance(metrics, dict) else None
        if not isinstance(folds, list):
            continue
        for k, fold in enumerate(folds):
            value = value_of(fold.get(metric)) if isinstance(fold, dict) else value_of(fold)
            if value is not None:
                index = fold.get("fold", k) if isinstance(fold, dict) else k
                rows.append({"model": name, "mode": mode, "fold": index, "value": value, "source": "model card"})
    return rows
