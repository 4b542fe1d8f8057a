"""Classify: upload scans (optionally with a lesion mask, uploaded or drawn on the scan), see the predicted
class, its calibrated probabilities, Grad-CAM and outlines; download a report or the batch table.

This page only draws. Reading files, predicting, Grad-CAM, overlays, charts and reports live in the
package (`imagemasknet.inference.predictor`, `.explain`, `.charts`, `.report`). Uploads stay in memory: their bytes go
straight to `read_scan` / `read_mask` and are never written to disk.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from app_pages import md
from imagemasknet.app.charts import probability_chart
from imagemasknet.app.scan_view import (MARKS_RGB, USER_MASK_CSS, USER_MASK_RGB, Outlined, canvas_size, digest_of,
                                        display_size, drawn_mask, mask_digest, outlined_scan, pair_masks, resize_heat,
                                        resize_mask, resize_rgb)
from imagemasknet.data import scans
from imagemasknet.data.dataset import CLASSES
from imagemasknet.evaluation.site_threshold import load_site_threshold, site_threshold_mismatch, site_threshold_path
from imagemasknet.inference import predictor as predict_module
from imagemasknet.inference.explain import fill, heatmap_overlay, mark_share, without_marks
from imagemasknet.inference.measure import lesion_axes_mm
from imagemasknet.inference.report import html_report, results_csv
from imagemasknet.inference.verdict import how_decided, verdict
from imagemasknet.models import DEFAULT_MODEL, get_spec
from imagemasknet.models.bundle import ModelStore

MODE_LABEL = {"image": "image only", "mask": "with mask"}
SUSPICIOUS_ROW = "background-color: #FDECEA"
#: Decoded scans one session may hold (each at most 1024 px a side: 4 MB), so ten sessions stay well under a GB.
SESSION_SCAN_BYTES = 192 * 2**20
#: The batch table's columns: together under the 818 px its column has in a 1280-px window (measured in Chromium).
COLUMN_PX = {"File": 190, "Verdict": 190, "Trust": 95, "Most likely": 110, "P(malignant)": 100, "Notes": 120}
UPLOAD, DRAW = "Upload a mask file", "Draw on the scan"
TOOLS = {"Freehand": "freedraw", "Polygon": "polygon", "Rectangle": "rect"}
TOOL_HELP = {
    "Freehand": "Trace the lesion's outline (the enclosed area counts) or paint over it.",
    "Polygon": "Click the corners; click the first corner again to close the polygon.",
    "Rectangle": "Drag a box around the lesion.",
}


@dataclass
class Item:
    """One uploaded scan and everything the page learns about it during a run."""

    index: int
    name: str
    digest: str
    scan: scans.Scan | None = None
    error: str | None = None  # the ScanError's sentence when the scan (or its prediction) is refused
    error_type: str = ""
    mask: np.ndarray | None = None
    mask_key: str | None = None
    mask_source: str = ""  # "uploaded" / "drawn" when a mask is used
    notes: list[str] = field(default_factory=list)  # why a chosen mask was not used
    prediction: predict_module.Prediction | None = None

    def record(self) -> dict:
        if self.prediction is None:
            return {"file": self.name, "error": {"type": self.error_type, "message": self.error or ""}}
        record = self.prediction.record(self.name)
        record["warnings"] = record["warnings"] + self.notes
        return record


# ------------------------------------------------------------------------------------------------
# Cached work: one Predictor per model for every session; predictions and Grad-CAM per content hash.
# ------------------------------------------------------------------------------------------------
def model_key(name: str) -> str:
    """The default model is whatever the Retrain page promoted last; its key changes with each promotion,
    so cached Predictors and predictions never outlive the model that made them."""
    return predict_module.active_model_key() if name == DEFAULT_MODEL else f"shipped:{name}"


@st.cache_resource(show_spinner="Loading the model and indexing its training scans…")
def _load_predictor(key: str, name: str) -> predict_module.Predictor:
    predictor = predict_module.Predictor.active() if name == DEFAULT_MODEL else predict_module.Predictor.shipped(name)
    predict_module.training_data_index(predictor.training_sources)  # built once per server: no upload waits for it
    return predictor


def load_predictor(name: str) -> predict_module.Predictor:
    return _load_predictor(model_key(name), name)


# Each entry holds the lesion outline and the burnt-in marks at the scan's working size (at most 1 MB each,
# 0.25 MB for a BUSI scan), so the count bounds the server's memory; a miss costs one forward pass.
@st.cache_data(max_entries=64, ttl=6 * 3600, show_spinner="Classifying…")
def cached_prediction(model: str, key: str, site: tuple, scan_digest: str, mask_digest: str | None, _scan, _mask):
    """``site`` names the saved site threshold's version, which the malignancy flag depends on."""
    return load_predictor(model).predict(_scan, _mask)


def site_threshold_version() -> tuple:
    try:
        info = site_threshold_path().stat()
    except OSError:
        return ()
    return info.st_mtime_ns, info.st_size


@st.cache_data(max_entries=48, ttl=6 * 3600, show_spinner="Computing Grad-CAM…")
def cached_grad_cam(model: str, key: str, scan_digest: str, mask_digest: str | None, target: str, size_hw: tuple[int, int],
                    _scan, _mask) -> np.ndarray:
    heat = load_predictor(model).grad_cam(_scan, target, _mask)
    return resize_heat(heat, size_hw).astype(np.float16)  # half the memory; a display needs no more


def decoded_scans() -> OrderedDict:
    """This session's decoded scans (content digest and name → (scan, error)), least recently used first."""
    return st.session_state.setdefault("classify_scan_cache", OrderedDict())


def held_bytes(cache: OrderedDict) -> int:
    return sum(scan.nbytes for scan, _ in cache.values() if scan is not None)


def canvas_component():
    """streamlit-drawable-canvas's ``st_canvas`` (imported here: importing it outside a running app raises)."""
    from streamlit_drawable_canvas import st_canvas

    return st_canvas


# ------------------------------------------------------------------------------------------------
# Page sections
# ------------------------------------------------------------------------------------------------
def model_controls() -> tuple[str, bool]:
    """Model selector and the "use mask" toggle; returns (model name, mask mode on)."""
    models = predict_module.available_models()
    if not models:
        st.error("No model weights are installed (expected weights/*.safetensors); the page cannot classify.")
        st.stop()
    promoted_bundle = ModelStore().promoted()
    promoted = promoted_bundle.card if promoted_bundle else None

    def label(n: str) -> str:
        if n != DEFAULT_MODEL:
            return f"Research model: {n}"
        return f"Retrained model {promoted.version} (promoted)" if promoted else "Default model"

    name = st.selectbox("Model", models, key="model", format_func=label,
                        help="The default model first (or the one an administrator promoted in its place); the "
                             "others are the study's reproduction and earlier models, for research.")
    spec = get_spec(promoted.arch if promoted and name == DEFAULT_MODEL else name)
    if promoted and name == DEFAULT_MODEL:
        st.caption(f"Retrained from run {md(promoted.version)}, promoted {md(promoted.promoted_at or '?')} in place "
                   "of the shipped default model.")
    if spec.needs_mask:
        reason = f"The model '{name}' always needs a lesion mask: upload or draw one for each scan."
        st.toggle("Use a lesion mask", value=True, disabled=True, key="use_mask_required", help=reason)
        st.caption(reason)
        return name, True
    if not spec.accepts_mask:
        reason = f"The model '{name}' cannot use a mask: it classifies the image alone."
        st.toggle("Use a lesion mask", value=False, disabled=True, key="use_mask_unavailable", help=reason)
        st.caption(reason)
        return name, False
    use_mask = st.toggle("Use a lesion mask", key="use_mask",
                         help="Mask mode: the model is also given the lesion's outline. Off: the image alone.")
    return name, use_mask


def read_uploads(files: list) -> list[Item]:
    """Each upload decoded once per session (at the working size, :data:`scans.WORKING_LONG_SIDE`). The
    session keeps at most :data:`SESSION_SCAN_BYTES` of decoded scans: older ones are dropped, and a file
    that would not fit beside this batch's earlier files is refused with a sentence."""
    digests = st.session_state.setdefault("classify_digests", {})
    cache = decoded_scans()
    items, batch_bytes = [], 0
    for index, uploaded in enumerate(files):
        file_id = getattr(uploaded, "file_id", None)
        digest = digests.get(file_id) if file_id else None
        if digest is None:
            digest = digest_of(uploaded.getvalue())
            if file_id:
                digests[file_id] = digest
        item = Item(index, uploaded.name, digest)
        items.append(item)
        key = (digest, uploaded.name)
        if key not in cache:
            if batch_bytes >= SESSION_SCAN_BYTES:
                item.error, item.error_type = session_full(uploaded.name, len(files)), "SessionMemoryError"
                continue
            try:
                cache[key] = scans.read_scan(uploaded.getvalue(), name=uploaded.name), None
            except scans.ScanError as error:
                cache[key] = None, error
        cache.move_to_end(key)
        scan, error = cache[key]
        while held_bytes(cache) > SESSION_SCAN_BYTES and len(cache) > 1:
            cache.popitem(last=False)  # least recently used first: never this batch's newest
        if error is not None:
            item.error, item.error_type = str(error), type(error).__name__
        item.scan = scan
        batch_bytes += scan.nbytes if scan is not None else 0
    return items


def session_full(name: str, count: int) -> str:
    return (f"'{name}' was not read: the {count} files uploaded at once need more than this session's "
            f"{SESSION_SCAN_BYTES // 2**20} MB for decoded scans. Remove some files, or classify them in smaller "
            "batches.")


def attach_uploaded_masks(items: list[Item], mask_files: list) -> None:
    pairs = pair_masks({item.index: item.name for item in items if item.scan is not None}, mask_files)
    for item in items:
        if item.scan is None:
            continue
        files = pairs.get(item.index)
        if not files:
            item.notes.append("No mask file matched this scan, so it was classified from the image alone.")
            continue
        try:
            masks = [scans.read_mask(f.getvalue(), item.scan.pixels.shape, name=f.name, original_hw=item.scan.original_hw)
                     for f in files]
        except scans.ScanError as error:
            item.notes.append(f"{error} The scan was classified from the image alone.")
            continue
        item.mask = np.logical_or.reduce(masks)
        item.mask_source = "uploaded"


def attach_drawn_masks(items: list[Item]) -> None:
    drawings = st.session_state.setdefault("classify_drawings", {})
    for item in items:
        if item.scan is None:
            continue
        drawn = drawings.get(item.digest)
        if drawn is not None and drawn["mask"].shape == item.scan.pixels.shape and drawn["mask"].any():
            try:
                item.mask, item.mask_source = scans.check_lesion(drawn["mask"], "The drawing"), "drawn"
            except scans.ScanError as error:
                item.notes.append(f"{error} The scan was classified from the image alone.")
        else:
            item.notes.append("Nothing is drawn on this scan yet, so it was classified from the image alone.")


def drawing_canvas(item: Item, rendered_before: str | None) -> None:
    """The canvas over the scan; the drawing becomes this scan's mask at the scan's own resolution."""
    tool = st.radio("Drawing tool", list(TOOLS), horizontal=True, key="draw_tool")
    st.caption(TOOL_HELP[tool] + " Use the canvas toolbar to undo or clear.")
    height, width = item.scan.pixels.shape
    canvas_h, canvas_w = canvas_size((height, width))
    drawings = st.session_state.setdefault("classify_drawings", {})
    saved = drawings.get(item.digest)
    if rendered_before != item.digest:  # a freshly mounted canvas starts from the saved drawing
        st.session_state["classify_canvas_initial"] = saved["json"] if saved else None
    st.session_state["classify_canvas_rendered"] = item.digest
    r, g, b = USER_MASK_RGB
    result = canvas_component()(
        fill_color=f"rgba({r}, {g}, {b}, 0.25)",
        stroke_width=3 if TOOLS[tool] == "freedraw" else 2,
        stroke_color=USER_MASK_CSS,
        background_image=Image.fromarray(resize_rgb(item.scan.rgb, (canvas_h, canvas_w))),
        drawing_mode=TOOLS[tool],
        initial_drawing=st.session_state.get("classify_canvas_initial"),
        height=canvas_h,
        width=canvas_w,
        return_image_data=True,
        key=f"canvas-{item.digest[:16]}",
    )
    rgba = result.image_data
    if rgba is None:  # nothing sent since the canvas was mounted: keep the saved drawing
        return
    try:
        mask = drawn_mask(rgba, (height, width))
    except scans.ScanError as error:
        st.error(md(str(error)))
        return
    drawings.pop(item.digest, None)
    drawings[item.digest] = {"mask": mask, "json": result.json_data}
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        st.caption(f"Drawn lesion: columns {cols[0]}–{cols[-1]}, rows {rows[0]}–{rows[-1]} of the "
                   f"{width} × {height}-pixel scan ({mask.mean():.1%} of it).")
    while len(drawings) > 64:  # a session keeps its latest drawings only
        drawings.pop(next(iter(drawings)))


def classify(items: list[Item], model: str) -> None:
    for item in items:
        if item.scan is None:
            continue
        item.mask_key = mask_digest(item.mask)
        try:
            item.prediction = cached_prediction(model, model_key(model), site_threshold_version(), item.digest,
                                                item.mask_key, item.scan, item.mask)
        except scans.ScanError as error:
            item.error, item.error_type = str(error), type(error).__name__


def results_table(items: list[Item], model: str) -> None:
    """Every scan on one row, suspicious ones tinted; narrow columns, so the table needs no sideways scrolling
    in a 1280-px window."""
    rows = []
    for item in items:
        p = item.prediction
        rows.append({
            "File": item.name,
            "Verdict": verdict(p).title if p else "not classified",
            "Trust": p.trust if p else "",
            "Most likely": f"{p.predicted_class.capitalize()} {p.confidence:.0%}" if p else "",
            "P(malignant)": p.probabilities["malignant"] if p else None,
            "Notes": " | ".join(p.warnings + item.notes) if p else (item.error or ""),
        })
    suspicious = [bool(item.prediction and item.prediction.suspicious_for_malignancy) for item in items]
    table = pd.DataFrame(rows).style.apply(
        lambda row: [SUSPICIOUS_ROW if suspicious[row.name] else ""] * len(row), axis=1)
    st.dataframe(table, hide_index=True, width="stretch", key="results_table",
                 column_config={"File": st.column_config.TextColumn("File", width=COLUMN_PX["File"]),
                                "Verdict": st.column_config.TextColumn("Verdict", width=COLUMN_PX["Verdict"]),
                                "Trust": st.column_config.TextColumn("Trust", width=COLUMN_PX["Trust"]),
                                "Most likely": st.column_config.TextColumn("Most likely", width=COLUMN_PX["Most likely"]),
                                "P(malignant)": st.column_config.ProgressColumn(
                                    "P(malignant)", min_value=0.0, max_value=1.0, format="percent",
                                    width=COLUMN_PX["P(malignant)"]),
                                "Notes": st.column_config.TextColumn("Notes / error", width=COLUMN_PX["Notes"])})
    st.caption("Rows tinted red are suspicious for malignancy. The CSV has every figure of every scan.")
    st.download_button("Download results (CSV)", results_csv([item.record() for item in items]),
                       file_name=f"imagemasknet-{model}-results.csv", mime="text/csv", on_click="ignore",
                       icon=":material/download:", key="download_csv")


TONE = {"alarm": (st.error, ":material/flag:"), "reassuring": (st.success, ":material/check_circle:"),
        "neutral": (st.info, ":material/help:")}


def verdict_box(prediction: predict_module.Prediction) -> None:
    """The decision first, in plain words: the verdict, why, and how far to trust it, in one box."""
    said = verdict(prediction)
    box, icon = TONE[said.tone]
    lines = [f"### {said.title}", md(said.reason), f"**{md(said.trust_line)}**"]
    if said.disagreement:
        lines.append(md(said.disagreement))
    box("\n\n".join(lines), icon=icon)


def typed_scale(item: Item) -> None:
    """Without a pixel spacing in the file, the reader may type the scale; the lesion's axes follow."""
    prediction = item.prediction
    outline = item.mask if prediction.mode == "mask" else (
        prediction.lesion_mask if prediction.predicted_class != "normal" else None)
    if prediction.lesion_axes_mm is not None or outline is None or not outline.any():
        return
    with st.expander("Lesion size"):
        scale = st.number_input("Pixel size in mm (the file does not say)", min_value=0.0, max_value=10.0,
                                value=0.0, step=0.01, format="%.3f", key=f"scale-{item.digest[:16]}",
                                help="Read it off the scanner's depth ruler: millimetres per image pixel.")
        if scale > 0:
            prediction.lesion_axes_mm = lesion_axes_mm(outline, item.scan.working_spacing(scale))
            st.caption("Measured with the pixel size you typed.")
        else:
            st.caption("Type the pixel size to measure the " + ("marked lesion." if prediction.mode == "mask"
                                                                 else "lesion the model outlines."))


def answer_line(prediction: predict_module.Prediction) -> None:
    """The most likely answer and its probability, on a line of its own (never cut short)."""
    given = " if the marked lesion is real" if prediction.mode == "mask" else ""
    st.markdown(f"Most likely: **{prediction.predicted_class.capitalize()}**, {prediction.confidence:.0%}{given}",
                help="The calibrated probability of the most likely answer.")
    if prediction.lesion_axes_mm:
        long_axis, short_axis = prediction.lesion_axes_mm
        st.markdown(f"Lesion size: **{long_axis:.1f} × {short_axis:.1f} mm** (long × short axis)")


def details(item: Item, model: str, draw: bool, rendered_before: str | None) -> None:
    """One scan: the result and chart, then the scan (or the drawing canvas) beside its Grad-CAM."""
    st.markdown(f"#### {md(item.name)}")
    if item.scan is None:
        st.error(md(item.error), icon=":material/error:")
        return
    result_col, chart_col = st.columns([2, 3], gap="large")
    draw_box = st.container(key="draw_lesion") if draw else None
    head_left, head_right = st.columns(2, gap="large")
    scan_col, cam_col = st.columns(2, gap="large")
    with head_right:
        st.markdown("**Grad-CAM**")
        cam_controls = st.columns(2)
    with head_left:
        st.markdown("**Scan**")
        legend_box = st.container()
    if draw_box is not None:
        with draw_box:
            st.markdown("**Draw the lesion**")
            drawing_canvas(item, rendered_before)
        # this run's drawing is the mask: attach it again before classifying
        item.mask, item.mask_source, item.notes, item.prediction, item.error = None, "", [], None, None
        attach_drawn_masks([item])
    classify([item], model)
    prediction = item.prediction
    with result_col:
        report_box = result_panel(item, model)
    with chart_col:
        if prediction is not None:
            st.plotly_chart(probability_chart(prediction), config={"displayModeBar": False},
                            key=f"chart-{item.index}")
    size_hw = display_size(item.scan.pixels.shape)
    rgb = resize_rgb(item.scan.rgb, size_hw)
    with legend_box:
        drawn = outlines(item, rgb)
    with scan_col:
        st.image(drawn.image, width="stretch")
    with cam_col:
        cam = grad_cam_panel(item, model, rgb, cam_controls) if prediction is not None else None
        if prediction is None:
            st.caption("No Grad-CAM without a prediction.")
    if prediction is not None:
        overlays = {"Scan": rgb}
        if drawn.captions:
            overlays["Outlines: " + " and ".join(drawn.captions)] = drawn.image
        if cam is not None:
            overlays[cam[0]] = cam[1]
        scan, version = item.scan, load_predictor(model).version
        with report_box:  # the report is built only when the button is clicked
            case_col, reader_col = st.columns(2)
            case_id = case_col.text_input("Case ID for the report", key=f"case-{item.digest[:16]}", max_chars=64,
                                          help="Optional. Goes into the downloaded report only; never stored.")
            reader = reader_col.text_input("Reader", key="reader", max_chars=64,
                                           help="Optional: your name for the sign-off line; never stored.")
            st.download_button("Download report (HTML, prints on A4 or Letter)",
                               lambda: html_report(scan, prediction, overlays, model, version, case_id=case_id,
                                                   reader=reader),
                               file_name=f"{PurePath(item.name).stem}-report.html", mime="text/html",
                               on_click="ignore", icon=":material/description:", key=f"report-{item.index}")


def result_panel(item: Item, model: str) -> st.delta_generator.DeltaGenerator | None:
    """The verdict, the answer, every note or warning, and the details behind an expander; returns where the
    report button goes (None without a prediction)."""
    prediction = item.prediction
    report_box = None
    if prediction is None:
        st.error(md(item.error), icon=":material/error:")
    else:
        verdict_box(prediction)
        typed_scale(item)
        answer_line(prediction)
        report_box = st.container()
    for note in item.notes:
        st.info(md(note), icon=":material/info:")
    for warning in prediction.warnings if prediction else []:
        st.warning(md(warning), icon=":material/warning:")
    if prediction is not None:
        with st.expander("How this was decided"):
            predictor = load_predictor(model)
            for line in how_decided(prediction):
                st.markdown(f"- {md(line)}")
            source = f" ({item.mask_source} mask)" if item.mask_source and prediction.mode == "mask" else ""
            st.markdown(f"- Mode: {MODE_LABEL.get(prediction.mode, prediction.mode)}{source}; model {md(model)}, "
                        f"version {md(predictor.version or 'unversioned')}.")
            for gap in predictor.bundle.missing:
                st.markdown(f"- This model's bundle is incomplete: {md(gap)}.")
            site = load_site_threshold()
            if site and (reason := site_threshold_mismatch(site, model, predictor.weights_sha256)):
                st.markdown(f"- The saved site threshold is not applied: {md(reason)}. Choose one for this model "
                            "with:")
                st.code(predictor.site_threshold_command, language="bash")
    return report_box


def outlines(item: Item, rgb: np.ndarray) -> Outlined:
    """The scan's outlines (the user's mask in mask mode; the model's lesion unless it calls the scan normal,
    then only on request) and their legend."""
    prediction = item.prediction
    called_normal = prediction is not None and prediction.predicted_class == "normal"
    show_anyway = called_normal and prediction.lesion_mask is not None and prediction.lesion_mask.any() and st.toggle(
        "Show the model's outline anyway", key="outline_on_normal",
        help="The model calls this scan normal, so the shape its lesion head draws is not a lesion it claims.")
    drawn = outlined_scan(
        rgb, item.mask if prediction is not None and prediction.mode == "mask" else None,
        prediction.lesion_mask if prediction is not None and (not called_normal or show_anyway) else None,
        called_normal)
    if drawn.legend:  # fixed strings, no user text
        st.markdown('<span style="font-size:0.9rem">' + " &nbsp;&nbsp; ".join(
            f'<span style="color:{colour}">■</span> {words}' for colour, words in drawn.legend) + "</span>",
            unsafe_allow_html=True)
    elif called_normal:
        st.caption("No lesion outline: the model calls this scan normal.")
    elif prediction is not None:
        st.caption("No outline: the model draws no lesion and no mask was used.")
    return drawn


def grad_cam_panel(item: Item, model: str, rgb: np.ndarray, controls) -> tuple[str, np.ndarray] | None:
    """Grad-CAM of the chosen class over the scan, burnt-in marks left out; returns (its report caption, the
    overlay), or None."""
    class_col, opacity_col = controls
    with class_col:
        choice = st.selectbox("Explain the score of", ["predicted", *CLASSES], key="cam_target",
                              format_func=lambda c: "the predicted class" if c == "predicted" else c)
    with opacity_col:
        opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
    target = item.prediction.predicted_class if choice == "predicted" else choice
    try:
        heat = cached_grad_cam(model, model_key(model), item.digest, item.mask_key, target, rgb.shape[:2], item.scan,
                               item.mask)
    except scans.ScanError as error:
        st.error(md(str(error)))
        return None
    marks = item.prediction.annotations
    marks = resize_mask(marks, rgb.shape[:2]) if marks is not None else np.zeros(rgb.shape[:2], bool)
    overlay = heatmap_overlay(rgb, without_marks(heat, marks), opacity)
    if marks.any() and st.toggle("Show the marks left out", key="cam_show_marks",
                                 help="Burnt-in text, calipers and rulers found on the scan (violet)."):
        overlay = fill(overlay, marks, MARKS_RGB, 0.6)
    st.image(overlay, width="stretch")
    left_out = (f" Burnt-in marks (text, calipers, rulers; {marks.mean():.1%} of the scan) are left out: they held "
                f"{mark_share(heat, marks):.0%} of the map." if marks.any() else "")
    st.caption(f"Regions that raised the score of **{target}** (red: most). Not a lesion segmentation.{left_out}")
    return f"Grad-CAM for {target} (opacity {opacity:.0%}), burnt-in marks left out", overlay


def main() -> None:
    rendered_before = st.session_state.pop("classify_canvas_rendered", None)
    st.title("Classify breast ultrasound scans")
    st.caption("Normal, benign or malignant, with calibrated probabilities and Grad-CAM. "
               "Research use only — not a diagnosis.")

    upload_col, settings_col = st.columns([3, 2], gap="large")
    with settings_col:
        model, use_mask = model_controls()
        mask_source, mask_files = None, []
        if use_mask:
            # The radio's own state goes when mask mode is off (it is not drawn); the choice is kept beside it.
            kept = st.session_state.get("mask_source_kept", UPLOAD)
            mask_source = st.radio("Lesion mask", [UPLOAD, DRAW], index=[UPLOAD, DRAW].index(kept), horizontal=True,
                                   key="mask_source")
            st.session_state["mask_source_kept"] = mask_source
            if mask_source == UPLOAD:
                mask_files = st.file_uploader(  # any type: a file we cannot use is refused below, with the reason
                    "Mask files", accept_multiple_files=True, key="masks",
                    help="White (or any bright/opaque) lesion on black. With several scans, name each mask after "
                         "its scan: case.png ← case_mask.png.") or []
    with upload_col:
        # Any type: a file the reader refuses gets its reason on the page (a filtered uploader only shows a red chip).
        files = st.file_uploader("Scans", accept_multiple_files=True, key="scans",
                                 help="B-mode breast ultrasound: PNG, JPEG, BMP, TIFF or DICOM; one or several.")
    if not files:
        st.info("Drop one or several scans above to classify them.", icon=":material/upload_file:")
        return
    with upload_col:  # the uploader shortens long names and pages through many files: every name, in full
        st.caption(f"{len(files)} scan{'s' if len(files) > 1 else ''}: " + ", ".join(md(f.name) for f in files))

    try:
        load_predictor(model)
    except Exception as error:  # noqa: BLE001 - missing/damaged weights: a message, never a traceback
        st.error(md(f"The model '{model}' could not be loaded ({type(error).__name__}: {error})."))
        return

    items = read_uploads(files)
    if use_mask and mask_source == UPLOAD:
        attach_uploaded_masks(items, mask_files)
    elif use_mask and mask_source == DRAW:
        attach_drawn_masks(items)

    for item in items:
        if item.scan is None:
            st.error(md(item.error), icon=":material/error:")

    readable = [item for item in items if item.scan is not None]
    if not readable:
        return
    table_box = st.container()
    if len(items) > 1:
        chosen = st.selectbox("Show details for", [item.index for item in readable], key="detail",
                              format_func=lambda i: items[i].name)
        st.divider()
    else:
        chosen = readable[0].index
    # The detail scan first: in draw mode its canvas gives this run's mask, which the table must use too.
    details(items[chosen], model, use_mask and mask_source == DRAW, rendered_before)
    classify([item for item in items if item.prediction is None and item.error is None], model)
    if len(items) > 1:
        with table_box:
            st.subheader("Results")
            results_table(items, model)

main()
