"""Files the app hands out: a self-contained HTML report for one scan, and the batch results as CSV.

The HTML report has no external resources (images are embedded as base64 PNG, styles are inline), so
it can be archived or mailed as one file. Every string that came from the user or from their file
(the file name, warnings that quote it, overlay captions) is escaped with :func:`html.escape`.
"""
from __future__ import annotations

import base64
import csv
import html
import io
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from imagemasknet.data.dataset import CLASSES
from imagemasknet.evaluation.decision import LOW_CONFIDENCE_BELOW
from imagemasknet.inference.stream import CSV_FIELDS, csv_row

NOTICE = "Research use only — not a diagnosis. This result must not be used to make clinical decisions."
MODE_TEXT = {
    "image": "image only (no lesion mask was given)",
    "mask": "mask mode (the model was given a lesion mask)",
}
TOP_ROW = ' class="top"'


def png_base64(image: np.ndarray) -> str:
    """An image array (H×W grey, H×W×3 RGB or H×W×4 RGBA; bool or uint8) as base64 PNG text."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar(value: float, highlight: bool) -> str:
    colour = "#3A6EA5" if highlight else "#B8C4D0"
    width = max(0.0, min(1.0, value)) * 100
    return (f'<div class="bar"><div class="fill" style="width:{width:.1f}%;background:{colour}"></div></div>')


def flag_sentence(prediction) -> str:
    """The malignancy flag as one sentence (the report and the CSV say it so)."""
    if prediction.malignancy_threshold is None:
        return f"No malignancy flag: {flag_reason(prediction)}"
    verdict = "Suspicious for malignancy" if prediction.suspicious_for_malignancy else "Not flagged for malignancy"
    return f"{verdict}: {flag_reason(prediction)}"


def flag_reason(prediction) -> str:
    """Why the flag says what it says (the Classify page puts the verdict above it as its title)."""
    p = prediction.probabilities["malignant"]
    if prediction.malignancy_threshold is None:
        return f"{prediction.threshold_source} (P(malignant) {p:.1%})."
    relation = "reaches" if prediction.suspicious_for_malignancy else "is below"
    return (f"P(malignant) {p:.1%} {relation} the threshold {prediction.malignancy_threshold:.1%}, "
            f"set for {prediction.threshold_source}.")


def _flag_class(prediction) -> str:
    flagged = prediction.suspicious_for_malignancy
    return "none" if flagged is None else "suspicious" if flagged else "clear"


def html_report(scan, prediction, overlays: dict[str, np.ndarray], model_name: str, model_version: str,
                generated: datetime | None = None) -> str:
    """A self-contained HTML report of one prediction.

    ``scan`` is a :class:`imagemasknet.data.scans.Scan`, ``prediction`` a :class:`imagemasknet.inference.predictor.Prediction`;
    ``overlays`` maps a caption to an image (e.g. the scan, the outlines, the Grad-CAM overlay), shown in
    order. ``generated`` defaults to now (UTC).
    """
    esc = html.escape
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    name = scan.name or "unnamed scan"
    height, width = scan.pixels.shape[:2]
    rows = "\n".join(
        f'<tr{TOP_ROW if c == prediction.predicted_class else ""}><td>{esc(c.capitalize())}</td>'
        f'<td class="num">{prediction.probabilities[c]:.1%}</td><td class="barcell">'
        f'{_bar(prediction.probabilities[c], c == prediction.predicted_class)}</td></tr>'
        for c in CLASSES if c in prediction.probabilities
    )
    warnings = "".join(f"<li>{esc(w)}</li>" for w in prediction.warnings)
    familiar = ("the scan looks like the training data" if prediction.familiarity is not None
                else "this model has no familiarity reference, so how far the scan is from the training data was not measured")
    warnings_block = (f'<section class="warn"><h2>Warnings</h2><ul>{warnings}</ul></section>' if warnings
                      else f'<p class="muted">No warnings: {esc(familiar)}.</p>')
    flag_block = f'<p class="flag {_flag_class(prediction)}">{esc(flag_sentence(prediction))}</p>'
    confidence_note = (f' <span class="low">low confidence (top probability under {LOW_CONFIDENCE_BELOW:.0%})</span>'
                       if prediction.low_confidence else "")
    figures = "\n".join(
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{png_base64(image)}">'
        f'<figcaption>{esc(caption)}</figcaption></figure>'
        for caption, image in overlays.items()
    )
    mode = MODE_TEXT.get(prediction.mode, prediction.mode)
    version = model_version or "unversioned"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ImageMaskNet report — {esc(name)}</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1F2A37;
         margin: 2rem auto; max-width: 1100px; padding: 0 1.5rem; line-height: 1.45; }}
  h1 {{ font-size: 1.5rem; margin-bottom: .2rem; }}
  h2 {{ font-size: 1.1rem; margin: 1.4rem 0 .5rem; }}
  .notice {{ background: #FFF7E6; border: 1px solid #F0C36D; border-radius: 6px; padding: .6rem .9rem; }}
  .muted {{ color: #5B6B7C; }}
  .result {{ font-size: 1.3rem; }}
  .result strong {{ color: #3A6EA5; }}
  table {{ border-collapse: collapse; }}
  td, th {{ padding: .3rem .8rem .3rem 0; text-align: left; vertical-align: middle; }}
  td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
  tr.top td {{ font-weight: 600; }}
  .barcell {{ width: 260px; }}
  .bar {{ background: #EEF2F6; border-radius: 3px; height: .8rem; width: 240px; }}
  .fill {{ height: 100%; border-radius: 3px; }}
  dl {{ display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }}
  dt {{ color: #5B6B7C; }} dd {{ margin: 0; }}
  .warn {{ background: #FFF4F2; border-left: 4px solid #D9534F; padding: .2rem 1rem; }}
  .flag {{ font-size: 1.2rem; font-weight: 600; padding: .5rem .9rem; border-radius: 6px; }}
  .flag.suspicious {{ background: #FDECEA; border: 2px solid #C62828; color: #8E1B1B; }}
  .flag.clear {{ background: #EEF6EE; border: 1px solid #6BA26B; }}
  .flag.none {{ background: #F3F4F6; border: 1px solid #B8C4D0; }}
  .low {{ font-size: .95rem; color: #8A5A00; background: #FFF3D6; border-radius: 4px; padding: 0 .4rem; }}
  .figures {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
  figure {{ margin: 0; flex: 1 1 300px; max-width: 520px; }}
  figure img {{ width: 100%; height: auto; border-radius: 4px; border: 1px solid #D5DCE3; }}
  figcaption {{ font-size: .9rem; color: #5B6B7C; margin-top: .2rem; }}
  footer {{ margin-top: 2rem; font-size: .85rem; color: #5B6B7C; }}
</style>
</head>
<body>
<h1>ImageMaskNet — breast ultrasound classification report</h1>
<p class="notice"><strong>{esc(NOTICE)}</strong></p>
{flag_block}
<p class="result">Predicted class: <strong>{esc(prediction.predicted_class.capitalize())}</strong>
 (calibrated probability {prediction.confidence:.1%}){confidence_note}</p>
<h2>Probabilities</h2>
<table>{rows}</table>
<h2>Details</h2>
<dl>
  <dt>File</dt><dd>{esc(name)}</dd>
  <dt>Scan</dt><dd>{width} × {height} pixels, {esc(str(scan.source_format))}</dd>
  <dt>Mode</dt><dd>{esc(mode)}</dd>
  <dt>Model</dt><dd>{esc(model_name)}</dd>
  <dt>Model version</dt><dd>{esc(str(version))}</dd>
  <dt>Date</dt><dd>{esc(when)}</dd>
</dl>
{warnings_block}
<h2>Images</h2>
<div class="figures">
{figures}
</div>
<footer>Generated by ImageMaskNet. {esc(NOTICE)} Grad-CAM shows which regions raised the score of a class;
it is not a lesion segmentation.</footer>
</body>
</html>
"""


def results_csv(records: list[dict]) -> str:
    """Batch results as CSV text, one row per file, exactly as ``imagemasknet predict --csv`` writes them.

    ``records`` are ``Prediction.record(file)`` dicts, or ``{"file", "error": {"type", "message"}}`` for
    files that could not be read."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    for record in records:
        writer.writerow(csv_row(record))
    return buffer.getvalue()
