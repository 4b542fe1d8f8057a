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
from imagemasknet.inference.stream import CSV_FIELDS, csv_row
from imagemasknet.inference.verdict import how_decided, verdict

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


def _verdict_block(prediction) -> str:
    said = verdict(prediction)
    lines = [f'<p class="verdict-title">{html.escape(said.title)}</p>', f"<p>{html.escape(said.reason)}</p>",
             f'<p class="trust">{html.escape(said.trust_line)}</p>']
    if said.disagreement:
        lines.append(f"<p>{html.escape(said.disagreement)}</p>")
    return f'<section class="verdict {said.tone}">{"".join(lines)}</section>'


def html_report(scan, prediction, overlays: dict[str, np.ndarray], model_name: str, model_version: str,
                generated: datetime | None = None, case_id: str = "", reader: str = "") -> str:
    """A self-contained HTML report of one prediction, for filing: it prints on one A4 or Letter page width.

    ``scan`` is a :class:`imagemasknet.data.scans.Scan`, ``prediction`` a :class:`imagemasknet.inference.predictor.Prediction`;
    ``overlays`` maps a caption to an image (e.g. the scan, the outlines, the Grad-CAM overlay), shown in
    order. ``generated`` defaults to now (UTC). ``case_id`` and ``reader`` are what the reader typed (kept in
    the report only); blank ones leave a line to write on.
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
    unfamiliar = (["Unfamiliar scanner or view: the scan is unlike the scans the model trained on, so its tested "
                   "figures may not hold here."] if prediction.unfamiliar else [])
    warnings = "".join(f"<li>{esc(w)}</li>" for w in [*unfamiliar, *prediction.warnings])
    familiar = ("the scan looks like the training data" if prediction.familiarity is not None
                else "this model has no familiarity reference, so how far the scan is from the training data was not measured")
    warnings_block = (f'<section class="warn"><h2>Warnings</h2><ul>{warnings}</ul></section>' if warnings
                      else f'<p class="muted">No warnings: {esc(familiar)}.</p>')
    decided = "".join(f"<li>{esc(line)}</li>" for line in how_decided(prediction))
    given = " if the marked lesion is real" if prediction.mode == "mask" else ""
    size = ("" if not prediction.lesion_axes_mm else
            f"<dt>Lesion size</dt><dd>{prediction.lesion_axes_mm[0]:.1f} × {prediction.lesion_axes_mm[1]:.1f} mm "
            "(long × short axis)</dd>")
    blank = '<span class="blank"></span>'
    case_line = esc(case_id) if case_id.strip() else blank
    reader_line = esc(reader) if reader.strip() else blank
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
  .verdict {{ padding: .2rem 1rem; border-radius: 6px; }}
  .verdict p {{ margin: .4rem 0; }}
  .verdict-title {{ font-size: 1.3rem; font-weight: 700; }}
  .verdict .trust {{ font-weight: 600; }}
  .verdict.alarm {{ background: #FDECEA; border: 2px solid #C62828; color: #8E1B1B; }}
  .verdict.reassuring {{ background: #EEF6EE; border: 1px solid #6BA26B; }}
  .verdict.neutral {{ background: #F3F4F6; border: 1px solid #8A99A8; }}
  .blank {{ display: inline-block; min-width: 16rem; border-bottom: 1px solid #1F2A37; }}
  .signoff {{ margin-top: 1.5rem; display: grid; grid-template-columns: max-content auto; gap: 1.2rem 1rem; }}
  @page {{ margin: 15mm; }}
  @media print {{
    body {{ margin: 0; max-width: none; padding: 0; font-size: 10.5pt; }}
    .figures {{ gap: .5rem; }}
    figure {{ flex: 1 1 30%; max-width: 32%; break-inside: avoid; }}
    section, table, dl, .signoff {{ break-inside: avoid; }}
  }}
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
<dl>
  <dt>Case ID</dt><dd>{case_line}</dd>
  <dt>File</dt><dd>{esc(name)}</dd>
</dl>
{_verdict_block(prediction)}
<p class="result">Most likely: <strong>{esc(prediction.predicted_class.capitalize())}</strong>,
 {prediction.confidence:.0%}{esc(given)}</p>
<h2>Probabilities</h2>
<table>{rows}</table>
<h2>Details</h2>
<dl>
  {size}
  <dt>Scan</dt><dd>{width} × {height} pixels, {esc(str(scan.source_format))}</dd>
  <dt>Mode</dt><dd>{esc(mode)}</dd>
  <dt>Model</dt><dd>{esc(model_name)}</dd>
  <dt>Model version</dt><dd>{esc(str(version))}</dd>
  <dt>Date</dt><dd>{esc(when)}</dd>
</dl>
<h2>How this was decided</h2>
<ul>{decided}</ul>
{warnings_block}
<h2>Images</h2>
<div class="figures">
{figures}
</div>
<section class="signoff">
  <span>Read by</span><span>{reader_line}</span>
  <span>Date</span><span class="blank"></span>
  <span>Signature</span><span class="blank"></span>
</section>
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
