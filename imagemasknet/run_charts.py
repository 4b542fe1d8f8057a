"""What the Training page shows about run folders, and the Plotly figures it draws.

Reading (every reader tolerates a half-written folder and says what is wrong instead of failing):

* :func:`read_run` / :func:`scan_runs` — a :class:`RunFolder` per run folder: config, history,
  status, calibration, every ``metrics*.json``, and a list of ``problems`` (missing files,
  truncated JSON, an empty history, a run whose process is gone);
* :func:`cv_groups`, :func:`fold_values` — cross-validation runs named ``<preset>-fold<k>``;
* :func:`metrics_rows`, :func:`metrics_wide`, :func:`card_rows` — tables.

Figures: :func:`curves_figure` (per-epoch curves of several runs on one chart),
:func:`confusion_figure`, :func:`roc_figure`, :func:`reliability_figure`, :func:`fold_spread_figure`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import plotly.graph_objects as go

from .data import CLASSES
from .processes import run_state

#: Per-epoch metrics, as history.json names them, with the label the charts give them.
CURVE_METRICS = {
    "loss": "Loss",
    "accuracy": "Accuracy",
    "macro_precision": "Precision (macro)",
    "macro_recall": "Recall (macro)",
    "macro_f1": "F1 (macro)",
    "macro_auc": "AUC (macro)",
    "lesion_dice": "Lesion Dice",
}
SPLITS = {"train": "train", "heldout": "held-out", "validation": "validation"}
#: Line style per (split, mode): the colour says which run, the style which split and mode.
LINE_STYLE = {("train", ""): "solid", ("heldout", "image"): "dash", ("heldout", "mask"): "dot",
              ("validation", "image"): "dashdot", ("validation", "mask"): "longdashdot"}
PALETTE = ("#3A6EA5", "#E07B39", "#3C9D5D", "#B03A48", "#7E57C2", "#8C6D31", "#00838F", "#C2185B", "#5D6D7E",
           "#AFB42B")
CLASS_COLOURS = {"normal": "#3C9D5D", "benign": "#3A6EA5", "malignant": "#B03A48"}
METRIC_NAMES = {
    "accuracy": "accuracy", "recall_malignant": "malignant sensitivity", "macro_precision": "precision (macro)",
    "macro_recall": "recall (macro)", "macro_f1": "F1 (macro)", "macro_auc": "AUC (macro)",
    "ece": "expected calibration error",
}
# Plain words for every figure the tables show (the data keep their short keys).
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
_FOLD = re.compile(r"^(?P<preset>.+)-fold(?P<fold>\d+)$")
_RUN_FILES = ("config.json", "history.json", "status.json", "log.txt", "best.safetensors", "last.safetensors")
LAYOUT = dict(template="plotly_white", font={"size": 13}, margin={"l": 10, "r": 10, "t": 50, "b": 10},
              paper_bgcolor="rgba(0,0,0,0)", legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
#: A legend inside the plot's bottom-right corner (ROC curves and reliability bars leave it empty).
INSET_LEGEND = {"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom", "bgcolor": "rgba(255,255,255,0.85)",
                "bordercolor": "#D5DCE3", "borderwidth": 1, "font": {"size": 11}}


# --- reading run folders --------------------------------------------------------------------------


def read_json_checked(path: Path, kind: type | tuple[type, ...] = (dict, list)) -> tuple[Any, str | None]:
    """(content, None), or (None, a sentence saying why not) for a missing, truncated or odd file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{path.name} cannot be read ({error})"
    if not text.strip():
        return None, f"{path.name} is empty"
    try:
        content = json.loads(text)
    except ValueError as error:
        return None, f"{path.name} is not valid JSON — probably cut off while being written ({error})"
    if not isinstance(content, kind):
        return None, f"{path.name} holds a {type(content).__name__}, not what a run writes"
    return content, None


@dataclass
class RunFolder:
    """One run folder as far as it is written; ``problems`` says what is missing or broken."""

    path: Path
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # file stem ("metrics", "metrics-test") → report
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def arch(self) -> str:
        return str(self.config.get("arch", "?"))

    @property
    def preset(self) -> str:
        match = _FOLD.match(self.name)
        return match["preset"] if match else self.name

    @property
    def fold(self) -> int | None:
        match = _FOLD.match(self.name)
        if match:
            return int(match["fold"])
        fold = self.config.get("fold")
        return fold if isinstance(fold, int) else None

    @property
    def state(self) -> str:
        return run_state(self.status)

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def epochs_total(self) -> int | None:
        total = self.config.get("epochs", self.status.get("epochs"))
        return total if isinstance(total, int) else None

    @property
    def modes(self) -> list[str]:
        """Inference modes the run has numbers for (history or metrics), in image, mask order."""
        found: set[str] = set()
        for epoch in self.history:
            for split in ("heldout", "validation"):
                if isinstance(epoch.get(split), dict):
                    found |= set(epoch[split])
        for report in self.metrics.values():
            found |= set(report.get("modes", {}))
        return sorted(found, key=lambda m: (m != "image", m))

    @property
    def complete(self) -> bool:
        return self.state == "finished" and not self.problems

    def best_metric(self, metric: str = "accuracy", split: str = "heldout") -> dict[str, float]:
        """The metric of the last epoch per mode (what the page lists next to the run)."""
        for epoch in reversed(self.history):
            values = {m: v.get(metric) for m, v in (epoch.get(split) or {}).items() if isinstance(v, dict)}
            values = {m: float(v) for m, v in values.items() if isinstance(v, (int, float))}
            if values:
                return values
        return {}

    def summary(self) -> dict:
        """A row of the runs table."""
        total = self.epochs_total
        last = self.best_metric("accuracy", "heldout") or self.best_metric("accuracy", "validation")
        return {
            "run": self.name,
            "model": self.arch,
            "state": self.state,
            "epochs": f"{self.epochs_done}/{total}" if total else str(self.epochs_done),
            "last held-out accuracy": ", ".join(f"{m} {v:.3f}" for m, v in last.items()) or "—",
            "evaluations": len(self.metrics),
            "problems": len(self.problems),  # named in full below the table
        }


def read_run(path: str | Path) -> RunFolder:
    """Read whatever a run folder holds; never raises for missing or damaged files."""
    path = Path(path)
    run = RunFolder(path)
    config, problem = read_json_checked(path / "config.json", dict)
    if problem:
        run.problems.append(problem)
    run.config = config or {}
    status, problem = read_json_checked(path / "status.json", dict)
    if problem:
        run.problems.append(problem)
    run.status = status or {}
    evaluation_only = run.config.get("kind") == "own-data evaluation"  # `evaluate --data`: nothing trained
    history, problem = read_json_checked(path / "history.json", list)
    if problem and "missing" in problem:
        problem = None if evaluation_only else "history.json is missing — no epoch has finished yet"
    if problem:
        run.problems.append(problem)
    history = history or []
    run.history = [e for e in history if isinstance(e, dict) and isinstance(e.get("epoch"), (int, float))]
    if len(run.history) < len(history):
        run.problems.append(f"history.json has {len(history) - len(run.history)} entries that are not epochs")
    if history is not None and not run.history and not problem and not evaluation_only:
        run.problems.append("history.json has no finished epoch yet")
    calibration, problem = read_json_checked(path / "calibration.json", dict)
    if problem and "missing" not in problem:
        run.problems.append(problem)
    run.calibration = calibration or {}
    for metrics_file in sorted(path.glob("metrics*.json")):
        report, problem = read_json_checked(metrics_file, dict)
        if problem:
            run.problems.append(problem)
        elif not isinstance(report.get("modes"), dict):
            run.problems.append(f"{metrics_file.name} has no per-mode results")
        else:
            run.metrics[metrics_file.stem] = report
    state = run.state
    if state == "crashed":
        run.problems.append(f"status.json says running, but process {run.status.get('pid')} is gone — the run "
                            "crashed or was killed")
    elif state in ("failed", "cancelled"):
        run.problems.append(f"the run {state}" + (f": {run.status['error']}" if run.status.get("error") else ""))
    return run


def looks_like_run(path: Path) -> bool:
    return path.is_dir() and (any((path / name).exists() for name in _RUN_FILES) or any(path.glob("metrics*.json")))


def scan_runs(root: str | Path, inside: str | Path | None = None) -> list[RunFolder]:
    """Every run folder directly under ``root`` (or ``root`` itself when it is one), by name. With ``inside``,
    a folder that resolves outside it (a symbolic link leading out) is left unread."""
    root = Path(root)
    if not root.is_dir() or (inside is not None and not _within(root, inside)):
        return []
    if looks_like_run(root) and (root / "config.json").exists():
        return [read_run(root)]
    folders = [p for p in root.iterdir() if not p.name.startswith(".") and (inside is None or _within(p, inside))
               and looks_like_run(p)]
    return [read_run(p) for p in sorted(folders, key=lambda p: _natural(p.name))]


def _within(path: Path, root: str | Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):
        return False


def shipped_history(weights_dir: Path, name: str) -> list[dict]:
    """The shipped model's own per-epoch history (``NAME.history.json`` beside its weights), or []."""
    history, _ = read_json_checked(Path(weights_dir) / f"{name}.history.json", list)
    return [e for e in history or [] if isinstance(e, dict)]


def results_folders(root: str | Path) -> list[str]:
    """What the app may show run folders from: the results root itself (``""``) and its sub-folders that
    hold run folders (a cross-validation's results, say), by name. Nothing outside ``root`` is listed, so a
    visitor chooses among folders the server found, never types a path."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = [""]
    try:
        children = sorted(root.iterdir(), key=lambda p: _natural(p.name))
    except OSError:
        return names
    for child in children:
        if child.name.startswith(".") or not child.is_dir() or not _within(child, root) or looks_like_run(child):
            continue
        try:
            if any(_within(p, root) and looks_like_run(p) for p in child.iterdir()):
                names.append(child.name)
        except OSError:
            continue
    return names


def results_folder(root: str | Path, name: str) -> Path | None:
    """The folder :func:`results_folders` listed under ``name``; None for any other name (``..``, an
    absolute path, a link out of the root)."""
    return Path(root) / name if name in results_folders(root) else None


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def cv_groups(runs: Iterable[RunFolder]) -> dict[str, list[RunFolder]]:
    """preset → its fold runs (``<preset>-fold<k>``), for presets with at least two folds."""
    groups: dict[str, list[RunFolder]] = {}
    for run in runs:
        if _FOLD.match(run.name):
            groups.setdefault(run.preset, []).append(run)
    return {p: sorted(r, key=lambda r: r.fold) for p, r in groups.items() if len(r) >= 2}


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
                value = _value(result.get("metrics", {}).get(metric))
                if value is not None:
                    rows.append({"model": run.preset, "mode": mode, "fold": run.fold, "value": value,
                                 "source": next(f for f in metrics_files if f in run.metrics) + ".json"})
                    found = True
        if not found:
            for mode, value in run.best_metric(metric, "heldout").items():
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


def _value(entry: Any) -> float | None:
    if isinstance(entry, dict):
        entry = entry.get("value", entry.get("mean"))
    if isinstance(entry, (int, float)) and not (isinstance(entry, float) and math.isnan(entry)):
        return float(entry)
    return None


# --- tables -----------------------------------------------------------------------------------------


def metrics_rows(report: dict) -> list[dict]:
    """{mode, metric, value, ci_low, ci_high} for every metric of an evaluation report."""
    rows = []
    for mode, result in (report.get("modes") or {}).items():
        for name, entry in (result.get("metrics") or {}).items():
            if isinstance(entry, dict):
                rows.append({"mode": mode, "metric": name, "value": _value(entry),
                             "ci_low": _value(entry.get("ci_low")), "ci_high": _value(entry.get("ci_high"))})
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


def card_rows(card: dict) -> list[dict]:
    """The model card's cross-validation: one row per metric, a column per mode, "mean ± std"."""
    table: dict[str, dict] = {}
    cross_validation = card.get("cross_validation")
    if not isinstance(cross_validation, dict):
        return []
    for mode, metrics in cross_validation.items():
        if not isinstance(metrics, dict):
            continue
        for name, entry in metrics.items():
            if name == "folds":
                continue
            if isinstance(entry, dict) and _value(entry.get("mean")) is not None:
                text = f"{entry['mean']:.3f}"
                if _value(entry.get("std")) is not None:
                    text += f" ± {entry['std']:.3f}"
            elif _value(entry) is not None:
                text = f"{_value(entry):.3f}"
            else:
                continue
            table.setdefault(name, {"metric": plain(name)})[mode] = text
    return list(table.values())


def card_protocol_rows(card: dict, key: str = "study_protocol") -> list[dict]:
    """``cross_validation[mode][key]`` (single evaluations with CIs) as rows: metric, a column per mode."""
    table: dict[str, dict] = {}
    cross_validation = card.get("cross_validation")
    if not isinstance(cross_validation, dict):
        return []
    for mode, metrics in cross_validation.items():
        block = metrics.get(key) if isinstance(metrics, dict) else None
        if isinstance(block, dict) and isinstance(block.get("metrics"), dict):
            block = block["metrics"]
        if not isinstance(block, dict):
            continue
        for name, entry in block.items():
            if isinstance(entry, dict) and _value(entry) is not None:
                table.setdefault(name, {"metric": plain(name)})[mode] = _format(
                    _value(entry), _value(entry.get("ci_low")), _value(entry.get("ci_high")))
    return list(table.values())


def card_external_rows(card: dict) -> list[dict]:
    """External test sets of the card: one row per data set and mode."""
    rows = []
    external = card.get("external")
    if not isinstance(external, dict):
        return rows
    for dataset, modes in external.items():
        if not isinstance(modes, dict):
            continue
        for mode, result in modes.items():
            if not isinstance(result, dict):
                continue
            accuracy = (result.get("metrics") or {}).get("accuracy")
            row = {"data set": dataset, "mode": mode, "lesion scans": result.get("n_lesion_scans", result.get("n"))}
            if isinstance(accuracy, dict):
                row["accuracy"] = _format(_value(accuracy), _value(accuracy.get("ci_low")), _value(accuracy.get("ci_high")))
            for key, title in (("benign_vs_malignant_auc", "benign vs malignant AUC"),
                               ("lesions_called_normal", "lesions called normal")):
                if _value(result.get(key)) is not None:
                    row[title] = round(_value(result[key]), 3)
            rows.append(row)
    return rows


def card_fold_values(card: dict, metric: str = "accuracy") -> list[dict]:
    """Per-fold values in the model card (``cross_validation[mode]["folds"]``), as :func:`fold_values` rows."""
    rows = []
    cross_validation = card.get("cross_validation")
    if not isinstance(cross_validation, dict):
        return rows
    name = f"{card.get('name', 'shipped')} (card)"
    for mode, metrics in cross_validation.items():
        folds = metrics.get("folds") if isinstance(metrics, dict) else None
        if not isinstance(folds, list):
            continue
        for k, fold in enumerate(folds):
            value = _value(fold.get(metric)) if isinstance(fold, dict) else _value(fold)
            if value is not None:
                index = fold.get("fold", k) if isinstance(fold, dict) else k
                rows.append({"model": name, "mode": mode, "fold": index, "value": value, "source": "model card"})
    return rows


# --- figures ----------------------------------------------------------------------------------------


def curve_points(history: list[dict], metric: str) -> dict[tuple[str, str], tuple[list, list]]:
    """(split, mode) → (epochs, values) of ``metric``; the train split has mode ""."""
    series: dict[tuple[str, str], tuple[list, list]] = {}
    for epoch in history:
        number = epoch.get("epoch")
        train = epoch.get("train")
        if isinstance(train, dict) and isinstance(train.get(metric), (int, float)):
            xs, ys = series.setdefault(("train", ""), ([], []))
            xs.append(number)
            ys.append(train[metric])
        for split in ("heldout", "validation"):
            for mode, values in (epoch.get(split) or {}).items():
                if isinstance(values, dict) and _value(values.get(metric)) is not None:
                    xs, ys = series.setdefault((split, mode), ([], []))
                    xs.append(number)
                    ys.append(values[metric])
    return series


def curves_figure(histories: dict[str, list[dict]], metric: str = "loss",
                  splits: Iterable[str] = ("train", "heldout"), modes: Iterable[str] | None = None,
                  height: int = 380) -> go.Figure:
    """Per-epoch ``metric`` of several runs on one chart: a colour per run, a line style per split and mode."""
    splits, modes = list(splits), (None if modes is None else set(modes))
    figure = go.Figure()
    for number, (run_name, history) in enumerate(histories.items()):
        colour = PALETTE[number % len(PALETTE)]
        for (split, mode), (xs, ys) in curve_points(history, metric).items():
            if split not in splits or (mode and modes is not None and mode not in modes):
                continue
            label = " · ".join(part for part in (run_name, SPLITS[split], mode) if part)
            figure.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers" if len(xs) < 2 else "lines", name=label, legendgroup=run_name,
                line={"color": colour, "dash": LINE_STYLE.get((split, mode), "dash"), "width": 2}, marker={"size": 6},
                hovertemplate=f"{label}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
            ))
    title = CURVE_METRICS.get(metric, metric)
    # No x-axis title ("per epoch" is in the chart's title): the legend below would cover it.
    figure.update_layout(title=f"{title} per epoch", height=height + 18 * max(0, len(figure.data) - 3),
                         yaxis_title=title, **LAYOUT)
    if metric != "loss":
        figure.update_yaxes(rangemode="tozero")
    if not figure.data:
        figure.add_annotation(text=f"No {title.lower()} recorded yet", showarrow=False, x=0.5, y=0.5,
                              xref="paper", yref="paper", font={"size": 15, "color": "#5D6D7E"})
    return figure


def confusion_figure(matrix: list[list[int]], classes: Iterable[str] = CLASSES, title: str = "Confusion matrix",
                     height: int = 360) -> go.Figure:
    """Counts with the row share (recall) as colour; rows are the truth, columns the prediction."""
    classes = list(classes)
    shares = []
    for row in matrix:
        total = sum(row)
        shares.append([v / total if total else 0.0 for v in row])
    text = [[f"{v}<br>{s:.0%}" for v, s in zip(row, share)] for row, share in zip(matrix, shares)]
    figure = go.Figure(go.Heatmap(
        z=shares, x=classes, y=classes, text=text, texttemplate="%{text}", zmin=0, zmax=1,
        colorscale=[[0, "#F2F5F8"], [1, "#3A6EA5"]], showscale=False,
        hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
    ))
    figure.update_layout(title=title, height=height, xaxis_title="predicted", yaxis_title="true",
                         yaxis={"autorange": "reversed"}, **{**LAYOUT, "margin": {"l": 10, "r": 10, "t": 50, "b": 10}})
    return figure


def roc_figure(roc: dict[str, dict], aucs: dict[str, float | None] | None = None, title: str = "ROC, one class vs rest",
               height: int = 360) -> go.Figure:
    aucs = aucs or {}
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#B8C4D0", "dash": "dot"},
                                name="chance", hoverinfo="skip"))
    for name, curve in (roc or {}).items():
        fpr, tpr = curve.get("fpr") or [], curve.get("tpr") or []
        if not fpr or len(fpr) != len(tpr):
            continue
        auc = aucs.get(name)
        label = f"{name} (AUC {auc:.3f})" if isinstance(auc, (int, float)) and not math.isnan(auc) else name
        figure.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=label,
                                    line={"color": CLASS_COLOURS.get(name), "width": 2, "shape": "hv"}))
    figure.update_layout(title=title, height=height, xaxis_title="false-positive rate", yaxis_title="true-positive rate",
                         xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, **{**LAYOUT, "legend": INSET_LEGEND})
    return figure


def reliability_figure(bins: list[dict], title: str = "Reliability (calibration)", ece: float | None = None,
                       height: int = 360) -> go.Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration; bar labels are counts."""
    used = [b for b in bins or [] if b.get("count") and b.get("accuracy") is not None]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#B8C4D0", "dash": "dot"},
                                name="perfect calibration", hoverinfo="skip"))
    if used:
        centres = [(b["bin"][0] + b["bin"][1]) / 2 for b in used]
        widths = [(b["bin"][1] - b["bin"][0]) * 0.9 for b in used]
        figure.add_trace(go.Bar(x=centres, y=[b["accuracy"] for b in used], width=widths, name="accuracy",
                                marker={"color": "#3A6EA5"}, text=[str(b["count"]) for b in used],
                                textposition="outside", customdata=[[b["count"], b["confidence"]] for b in used],
                                hovertemplate="confidence %{customdata[1]:.2f}: accuracy %{y:.2f} "
                                              "(%{customdata[0]} scans)<extra></extra>"))
        figure.add_trace(go.Scatter(x=[b["confidence"] for b in used], y=[b["accuracy"] for b in used],
                                    mode="markers", name="mean confidence", marker={"color": "#E07B39", "size": 8}))
    if ece is not None:
        title += f" — ECE {ece:.3f}"
    figure.update_layout(title=title, height=height, xaxis_title="confidence", yaxis_title="accuracy",
                         xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.1]}, bargap=0,
                         **{**LAYOUT, "legend": {**INSET_LEGEND, "x": 0.02, "xanchor": "left", "y": 0.98,
                                                 "yanchor": "top"}})
    return figure


def fold_spread_figure(rows: list[dict], metric: str = "accuracy", height: int = 400) -> go.Figure:
    """A box per model and mode with every fold as a point (hover: the fold)."""
    figure = go.Figure()
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["mode"]), []).append(row)
    mode_colour = {"image": "#3A6EA5", "mask": "#E07B39"}
    shown_modes = set()
    for (model, mode), members in groups.items():
        figure.add_trace(go.Box(
            x=[model] * len(members), y=[m["value"] for m in members], name=mode, legendgroup=mode,
            showlegend=mode not in shown_modes, offsetgroup=mode, boxpoints="all", jitter=0.35, pointpos=0,
            marker={"color": mode_colour.get(mode, "#5D6D7E"), "size": 8},
            line={"color": mode_colour.get(mode, "#5D6D7E")}, fillcolor="rgba(0,0,0,0)",
            customdata=[[m["fold"], m["source"]] for m in members],
            hovertemplate="%{x} · " + mode + "<br>fold %{customdata[0]}: %{y:.3f}<br>%{customdata[1]}<extra></extra>",
        ))
        shown_modes.add(mode)
    name = METRIC_NAMES.get(metric, metric)
    figure.update_layout(title=f"Per-fold {name}", height=height, boxmode="group", yaxis_title=name,
                         legend_title_text="mode", **{**LAYOUT, "legend": {"orientation": "h", "y": 1.08, "x": 1,
                                                                          "xanchor": "right"}})
    if not figure.data:
        figure.add_annotation(text="No per-fold results yet", showarrow=False, x=0.5, y=0.5, xref="paper",
                              yref="paper")
    return figure
