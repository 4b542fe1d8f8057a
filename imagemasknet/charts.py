"""Plotly figures the app draws (built here so that pages only place them)."""
from __future__ import annotations

import plotly.graph_objects as go

from .data import CLASSES

#: Muted clinical palette: the predicted class in the theme's blue, the others in grey.
PREDICTED_COLOUR = "#3A6EA5"
OTHER_COLOUR = "#B8C4D0"


def probability_chart(prediction, height: int = 210) -> go.Figure:
    """Horizontal bars of the calibrated probabilities of the three classes, the predicted one highlighted.

    ``prediction`` is a :class:`imagemasknet.predict.Prediction` (anything with ``label`` and
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
