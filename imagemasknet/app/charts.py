"""The Plotly figures the app draws, built here so that pages only place them: the class probabilities of one
scan, and the Training page's curves, confusion matrix, ROC, reliability and per-fold spread."""
from __future__ import annotations

import math
from typing import Iterable

import plotly.graph_objects as go

from imagemasknet.app.tables import METRIC_NAMES, value_of
from imagemasknet.data.dataset import CLASSES

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
#: Line style per (split, mode): with several runs the colour says which run, the style which split and mode.
LINE_STYLE = {("train", ""): "solid", ("heldout", "image"): "dash", ("heldout", "mask"): "dot",
              ("validation", "image"): "dashdot", ("validation", "mask"): "longdashdot"}
PALETTE = ("#3A6EA5", "#E07B39", "#3C9D5D", "#B03A48", "#7E57C2", "#8C6D31", "#00838F", "#C2185B", "#5D6D7E",
           "#AFB42B")
CLASS_COLOURS = {"normal": "#3C9D5D", "benign": "#3A6EA5", "malignant": "#B03A48"}
#: One run's curves: a colour per (split, mode) as well as a style, so they tell apart without the dashes.
SERIES_COLOURS = {("train", ""): "#3A6EA5", ("heldout", "image"): "#E07B39", ("heldout", "mask"): "#B03A48",
                  ("validation", "image"): "#3C9D5D", ("validation", "mask"): "#7E57C2"}
LAYOUT = dict(template="plotly_white", font={"size": 13}, margin={"l": 10, "r": 10, "t": 50, "b": 10},
              paper_bgcolor="rgba(0,0,0,0)", legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
#: A legend inside the plot's bottom-right corner (ROC curves and reliability bars leave it empty).
INSET_LEGEND = {"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom", "bgcolor": "rgba(255,255,255,0.85)",
                "bordercolor": "#D5DCE3", "borderwidth": 1, "font": {"size": 11}}

#: Muted clinical palette: the predicted class in the theme's blue, the others in grey.
PREDICTED_COLOUR = "#3A6EA5"
OTHER_COLOUR = "#B8C4D0"


def probability_chart(prediction, height: int = 210) -> go.Figure:
    """Horizontal bars of the calibrated probabilities of the three classes, the predicted one highlighted.

    ``prediction`` is a :class:`imagemasknet.inference.predictor.Prediction` (anything with ``label`` and
    ``probabilities``: {class: p}).
    """
    classes = [c for c in CLASSES if c in prediction.probabilities]
    values = [float(prediction.probabilities[c]) for c in classes]
    colours = [PREDICTED_COLOUR if c == prediction.predicted_class else OTHER_COLOUR for c in classes]
    figure = go.Figure(go.Bar(
        x=values,
        y=[c.capitalize() for c in classes],
        orientation="h",
        marker={"color": colours},
        text=[f"{v:.1%}" for v in values],
        textposition="outside",
        cliponaxis=False,
        hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 50, "t": 10, "b": 10},
        xaxis={"range": [0, 1], "tickformat": ".0%", "showgrid": True, "gridcolor": "#E3E8EE", "fixedrange": True,
               "title": None},
        yaxis={"autorange": "reversed", "fixedrange": True, "title": None},
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
        bargap=0.35,
    )
    return figure


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
                if isinstance(values, dict) and value_of(values.get(metric)) is not None:
                    xs, ys = series.setdefault((split, mode), ([], []))
                    xs.append(number)
                    ys.append(values[metric])
    return series


def curves_figure(histories: dict[str, list[dict]], metric: str = "loss",
                  splits: Iterable[str] = ("train", "heldout"), modes: Iterable[str] | None = None,
                  height: int = 380) -> go.Figure:
    """Per-epoch ``metric`` of several runs on one chart: a colour per run (one run: per split and mode), a line
    style per split and mode."""
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
                line={"color": colour if len(histories) > 1 else SERIES_COLOURS.get((split, mode), colour),
                      "dash": LINE_STYLE.get((split, mode), "dash"), "width": 2}, marker={"size": 6},
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
