"""The Classify page under Streamlit's AppTest (no browser), plus the chart and report builders it uses.

Real BUSI scans; the app's results are compared with what the shipped Predictor says about the same
files, so the tests hold whatever weights are shipped. The drawing canvas is replaced by a fake module
that "draws" a rectangle.
"""
from __future__ import annotations

import csv
import io
import re
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from imagemasknet import models as models_module
from imagemasknet.app.charts import probability_chart
from imagemasknet.core.paths import BUNDLED_COPY, SHARED_COPY
from imagemasknet.data import scans
from imagemasknet.data.scans import mask_from_drawing, read_mask, read_scan
from imagemasknet.inference import predictor as predict_module
from imagemasknet.inference.predictor import Prediction, Predictor
from imagemasknet.inference.report import html_report, results_csv
from imagemasknet.inference.stream import CSV_FIELDS
from imagemasknet.inference.verdict import verdict
from imagemasknet.models import DEFAULT_MODEL, ModelSpec

REPO = Path(__file__).resolve().parent.parent
BUSI = BUNDLED_COPY if BUNDLED_COPY.is_dir() else SHARED_COPY
SCAN = BUSI / "malignant" / "images" / "malignant (1).png"
MASK = BUSI / "malignant" / "masks" / "malignant (1)_mask.png"
SECOND = BUSI / "benign" / "images" / "benign (1).png"
TIMEOUT = 180  # AppTest run timeout (s): CPU inference on a busy machine
DRAW = "Draw on the scan"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    if not SCAN.is_file():
        pytest.skip(f"BUSI scans not found under {BUSI}")
    return Predictor.shipped()


@pytest.fixture
def app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def upload(at, *paths_or_items):
    uploader = at.get("file_uploader")[0]
    for item in paths_or_items:
        name, data = (item.name, item.read_bytes()) if isinstance(item, Path) else item
        uploader.upload(name, data, "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def shown(text: str) -> str:
    """Page text as the reader sees it: without the markdown escapes the page adds to text it did not write."""
    return re.sub(r"\\(.)", r"\1", text)


def answer(at) -> tuple[str, str]:
    """(class, probability) as the page's "Most likely" line gives them."""
    line = next(m.value for m in at.markdown if m.value.startswith("Most likely:"))
    found = re.match(r"Most likely: \*\*(\w+)\*\*, (\d+%)", line)
    return found[1], found[2]


def expected_answer(prediction) -> tuple[str, str]:
    return prediction.predicted_class.capitalize(), f"{prediction.confidence:.0%}"


def markdown(at) -> list[str]:
    return [m.value for m in at.markdown]


def refusals(at) -> list[str]:
    """The page's error boxes, without the malignancy flag (an error box too, so that it stands out)."""
    return [e.value for e in at.error if "Suspicious for malignancy" not in e.value]


def mode_line(at) -> str:
    """The mode, in the "How this was decided" expander, up to the model's name."""
    return next(shown(text) for text in markdown(at) if text.startswith("- Mode:")).split(";")[0]


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------
def test_server_config_is_hardened():
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] in ("none", False)  # never a traceback in the browser
    assert config["client"]["toolbarMode"] == "viewer"
    assert config["server"] == {"address": "127.0.0.1", "maxUploadSize": 50, "fileWatcherType": "none",
                                "enableXsrfProtection": True}
    assert config["theme"]["base"] == "light"


def test_app_frame_and_empty_page(app):
    assert app.title[0].value == "Classify breast ultrasound scans"
    assert any("Research use only" in w.value for w in app.sidebar.warning)
    assert any("Drop one or several scans" in i.value for i in app.info)
    uploader = app.get("file_uploader")[0]
    assert uploader.accept_multiple_files
    assert not uploader.allowed_type  # every file reaches the reader, so a refusal can say why


def test_a_file_of_another_type_is_refused_with_its_reason(app):
    """Issue 16: a .txt upload is not just a red chip: the page names the file and what it accepts, and no
    longer asks for scans to be dropped."""
    upload(app, ("notes.txt", b"patient notes, not a scan"))
    assert any("'notes.txt' is not an image this app can read (use PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM)" in shown(e.value)
               for e in app.error)
    assert not any("Drop one or several scans" in i.value for i in app.info)


def test_site_threshold_is_flagged(predictor, isolated_env):
    """A saved site threshold (from `evaluate --data ... --save-threshold`) is shown against P(malignant)."""
    from streamlit.testing.v1 import AppTest

    from imagemasknet.evaluation.site_threshold import save_site_threshold

    p_malignant = predictor.predict(read_scan(SCAN)).probabilities["malignant"]
    threshold = p_malignant / 2
    save_site_threshold({"threshold": threshold, "sensitivity": 0.95, "specificity": 0.5, "data": "site-scans",
                         "model": predictor.name, "weights_sha256": predictor.weights_sha256, "mode": "image"})
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    upload(at, SCAN)
    flag = next(shown(e.value) for e in at.error if "Suspicious for malignancy" in e.value)
    assert "95% of cancers" in flag  # the site threshold's own sensitivity, in plain words
    decided = " ".join(shown(m) for m in markdown(at) if m.startswith("- Malignancy flag"))
    assert f"{threshold:.1%}" in decided and "the saved site threshold" in decided and "site-scans" in decided


def test_site_threshold_chosen_for_other_weights_is_not_applied(predictor, isolated_env):
    """A threshold chosen before the model was retrained or updated would be applied to probabilities it
    was not chosen for: the page leaves it out and says why."""
    from streamlit.testing.v1 import AppTest

    from imagemasknet.evaluation.site_threshold import save_site_threshold

    save_site_threshold({"threshold": 0.0, "sensitivity": 0.95, "specificity": 0.5, "data": "site-scans",
                         "model": predictor.name, "weights_sha256": "0" * 64, "mode": "image"})
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    upload(at, SCAN)
    assert answer(at)
    assert not any("the saved site threshold" in shown(m) for m in markdown(at))
    assert any("site threshold is not applied" in m and "other weights" in shown(m) for m in markdown(at))
    assert any(c.value == f"imagemasknet evaluate --model {predictor.name} --data SITE_SCANS --save-threshold"
               for c in at.code)  # a command that runs as shown


def test_one_scan_image_only(app, predictor):
    upload(app, SCAN)
    expected = predictor.predict(read_scan(SCAN))
    assert answer(app) == expected_answer(expected)
    assert mode_line(app) == "- Mode: image only"
    assert len(app.get("plotly_chart")) == 1
    assert any("Regions that raised the score" in c.value for c in app.caption)
    assert any(f"version {predictor.version}" in shown(m) for m in markdown(app))
    assert [b.label for b in app.get("download_button")] == ["Download report (HTML, prints on A4 or Letter)"]
    assert not refusals(app)
    # moving the opacity slider reruns without recomputing anything or failing
    app.slider(key="cam_opacity").set_value(0.8).run()
    assert not app.exception
    assert answer(app) == expected_answer(expected)


def test_mask_mode_with_uploaded_mask(app, predictor):
    upload(app, SCAN)
    app.toggle(key="use_mask").set_value(True).run()
    assert not app.exception
    # mask mode on, no mask yet: image only, and the page says why
    assert mode_line(app) == "- Mode: image only"
    assert any("No mask file matched" in i.value for i in app.info)

    app.get("file_uploader")[1].upload(MASK.name, MASK.read_bytes(), "image/png").run()
    assert not app.exception
    scan = read_scan(SCAN)
    expected = predictor.predict(scan, read_mask(MASK, scan.pixels.shape))
    assert mode_line(app) == "- Mode: with mask (uploaded mask)"
    assert answer(app) == expected_answer(expected)
    assert expected.predicted_class != "normal"  # a marked lesion is a lesion
    assert any("your mask" in text for text in markdown(app))

    # toggling mask mode off again goes back to the image-only result
    app.toggle(key="use_mask").set_value(False).run()
    assert mode_line(app) == "- Mode: image only"


class FakeCanvas:
    """Stands in for streamlit-drawable-canvas: returns a filled rectangle drawn on the canvas."""

    def __init__(self, outline_only: bool = False):
        self.calls: list[dict] = []
        self.outline_only = outline_only  # a freehand trace of the rectangle's border

    def st_canvas(self, **kwargs):
        self.calls.append(kwargs)
        height, width = kwargs["height"], kwargs["width"]
        rgba = np.zeros((height, width, 4), np.uint8)
        rgba[height // 4: height // 2, width // 4: 3 * width // 4] = (0, 213, 255, 64)
        self.filled = rgba.copy()
        if self.outline_only:
            rgba[height // 4 + 3: height // 2 - 3, width // 4 + 3: 3 * width // 4 - 3] = 0
        self.last = rgba
        return types.SimpleNamespace(image_data=rgba, json_data={"objects": [{"type": "rect"}]})


def fake_canvas(monkeypatch, outline_only: bool = False) -> FakeCanvas:
    fake = FakeCanvas(outline_only)
    module = types.ModuleType("streamlit_drawable_canvas")
    module.st_canvas = fake.st_canvas
    monkeypatch.setitem(sys.modules, "streamlit_drawable_canvas", module)
    return fake


def test_drawn_mask(app, predictor, monkeypatch):
    fake = fake_canvas(monkeypatch)

    upload(app, SCAN)
    app.toggle(key="use_mask").set_value(True).run()
    app.radio(key="mask_source").set_value(DRAW).run()
    assert not app.exception
    app.radio(key="draw_tool").set_value("Rectangle").run()
    assert not app.exception

    call = fake.calls[-1]
    assert call["drawing_mode"] == "rect" and call["return_image_data"] is True
    assert call["background_image"].size == (call["width"], call["height"])
    scan = read_scan(SCAN)
    height, width = scan.pixels.shape
    assert abs(call["height"] / call["width"] - height / width) < 0.01  # the scan's aspect ratio

    expected = predictor.predict(scan, mask_from_drawing(fake.last, scan.pixels.shape))
    assert mode_line(app) == "- Mode: with mask (drawn mask)"
    assert answer(app) == expected_answer(expected)
    assert call["width"] <= 564  # the page's content width at a 1024-px window: the whole canvas is reachable
    assert any(c.value.startswith("Drawn lesion: columns") for c in app.caption)


def test_freehand_outline_encloses_the_lesion(app, predictor, monkeypatch):
    fake = fake_canvas(monkeypatch, outline_only=True)
    upload(app, SCAN)
    app.toggle(key="use_mask").set_value(True).run()
    app.radio(key="mask_source").set_value(DRAW).run()
    assert not app.exception
    assert fake.calls[-1]["drawing_mode"] == "freedraw"
    scan = read_scan(SCAN)
    # the traced border counts with everything inside it: the same result as the filled rectangle
    expected = predictor.predict(scan, mask_from_drawing(fake.filled, scan.pixels.shape))
    assert mode_line(app) == "- Mode: with mask (drawn mask)"
    assert answer(app) == expected_answer(expected)


def test_model_selector_lists_shipped_models(app):
    selector = app.selectbox(key="model")
    assert selector.options[0] == "Default model"  # no architecture names on the first screen
    assert len(selector.options) == len(predict_module.available_models())
    assert not app.toggle(key="use_mask").disabled  # the shipped default accepts a mask


class ImageOnlyPredictor:
    """A stand-in for a model that cannot take a mask."""

    def __init__(self, spec):
        self.spec = spec
        self.version = "test"
        self.name = spec.name
        self.weights_sha256 = "1" * 64
        self.training_sources = "busi"
        self.bundle = types.SimpleNamespace(missing=[])

    def predict(self, scan, mask=None):
        assert mask is None
        return Prediction("benign", {"normal": 0.1, "benign": 0.7, "malignant": 0.2}, "image", self.name,
                          list(scan.warnings), None)

    def grad_cam(self, scan, target, mask=None):
        return np.zeros(scan.pixels.shape, np.float32)


def test_mask_toggle_disabled_for_models_without_masks(monkeypatch):
    from streamlit.testing.v1 import AppTest

    image_only = ModelSpec("image-only-test", lambda **kw: None, "A test model that looks at the image alone.",
                           accepts_mask=False, needs_mask=False, predicts_lesion=False, image_channels=1,
                           normalisation="unit")
    monkeypatch.setitem(models_module._REGISTRY, image_only.name, image_only)
    monkeypatch.setattr(predict_module, "available_models",
                        lambda: [DEFAULT_MODEL, image_only.name, "imagemasknet"])
    real_shipped = predict_module.Predictor.shipped.__func__

    def shipped(cls, name=DEFAULT_MODEL, device="auto"):
        return ImageOnlyPredictor(image_only) if name == image_only.name else real_shipped(cls, name, device)

    monkeypatch.setattr(predict_module.Predictor, "shipped", classmethod(shipped))

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert at.selectbox(key="model").options == ["Default model", f"Research model: {image_only.name}",
                                                 "Research model: imagemasknet"]
    at.toggle(key="use_mask").set_value(True).run()

    at.selectbox(key="model").set_value(image_only.name).run()
    assert not at.exception
    toggle = at.toggle(key="use_mask_unavailable")
    assert toggle.disabled and toggle.value is False
    assert "cannot use a mask" in toggle.help
    assert any("cannot use a mask" in c.value for c in at.caption)
    assert not at.get("radio")  # no mask source to choose
    upload(at, SCAN)
    assert answer(at)[0] == "Benign"
    assert mode_line(at) == "- Mode: image only"

    # a model that needs a mask: the toggle is on, locked, and says why
    at.selectbox(key="model").set_value("imagemasknet").run()
    toggle = at.toggle(key="use_mask_required")
    assert toggle.disabled and toggle.value is True
    assert any("always needs a lesion mask" in c.value for c in at.caption)


def test_batch_with_corrupt_file(app, predictor):
    broken = ("broken <b>scan</b>.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    upload(app, SCAN, broken, SECOND)
    errors = refusals(app)
    assert len(errors) == 1 and "broken" in errors[0] and "scan" in errors[0]

    table = app.dataframe[0].value
    table = getattr(table, "data", table)  # a styled table: its data frame
    assert list(table["File"]) == [SCAN.name, broken[0], SECOND.name]
    first, second = predictor.predict(read_scan(SCAN)), predictor.predict(read_scan(SECOND))
    assert list(table["Most likely"]) == [f"{first.predicted_class.capitalize()} {first.confidence:.0%}", "",
                                          f"{second.predicted_class.capitalize()} {second.confidence:.0%}"]
    assert list(table["Verdict"])[1] == "not classified"
    assert list(table["Trust"]) == [first.trust, "", second.trust]
    assert table["P(malignant)"][0] == pytest.approx(first.probabilities["malignant"])
    assert "looks like a PNG file but is damaged or incomplete" in table["Notes"][1]
    assert "Download results (CSV)" in [b.label for b in app.get("download_button")]
    assert any(SCAN.name in shown(c.value) and SECOND.name in shown(c.value) for c in app.caption)  # every name

    detail = app.selectbox(key="detail")
    assert detail.options == [SCAN.name, SECOND.name]
    assert answer(app) == expected_answer(first)
    detail.set_value(2).run()
    assert not app.exception
    assert answer(app) == expected_answer(second)


def test_only_bad_files(app):
    upload(app, ("empty.png", b""), ("notes.png", b"just some text, not an image"))
    assert len(app.error) == 2
    assert any("empty" in e.value for e in app.error)
    assert not any(m.value.startswith("Most likely") for m in app.markdown) and not app.dataframe


# ------------------------------------------------------------------------------------------------
# Chart and report builders
# ------------------------------------------------------------------------------------------------
def _prediction(label="malignant", mode="mask", warnings=()):
    probabilities = {"normal": 0.05, "benign": 0.15, "malignant": 0.80}
    if label != "malignant":
        probabilities = {"normal": 0.1, "benign": 0.2, "malignant": 0.1} | {label: 0.7}
    return Prediction(label, probabilities, mode, "lesion-resunet", list(warnings), None)


def test_probability_chart():
    figure = probability_chart(_prediction())
    bar = figure.data[0]
    assert list(bar.y) == ["Normal", "Benign", "Malignant"]
    assert list(bar.x) == pytest.approx([0.05, 0.15, 0.80])
    assert bar.marker.color[2] != bar.marker.color[0] == bar.marker.color[1]  # the predicted class stands out
    assert tuple(figure.layout.xaxis.range) == (0, 1)


def test_html_report_is_self_contained_and_escaped():
    scan = read_scan(SCAN) if SCAN.is_file() else scans.Scan(
        np.full((80, 100), 90, np.uint8), np.full((80, 100, 3), 90, np.uint8), "x.png", "PNG", [])
    scan.name = '<img src=x onerror=alert(1)> "evil" & co.png'
    prediction = _prediction(warnings=[f"'{scan.name}' is strongly coloured"])
    overlays = {"Scan": scan.rgb, "<b>Grad-CAM</b>": scan.rgb[..., 0]}
    when = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    page = html_report(scan, prediction, overlays, "lesion-resunet", "v1.2", generated=when)

    assert "<img src=x" not in page and "<b>Grad-CAM</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt; &quot;evil&quot; &amp; co.png" in page
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing loaded from elsewhere
    for text in ("Malignant", "80.0%", "15.0%", "5.0%", "lesion-resunet", "v1.2", "2026-01-02 03:04 UTC",
                 "Research use only", "mask mode"):
        assert text in page
    assert "strongly coloured" in page


def test_the_report_never_calls_an_unfamiliar_scan_familiar():
    """Review of issue 25: with no other warning an unfamiliar scan's report said "the scan looks like the
    training data" while its trust line said "Unfamiliar scanner"."""
    scan = scans.Scan(np.full((80, 100), 90, np.uint8), np.full((80, 100, 3), 90, np.uint8), "x.png", "PNG", [])
    familiar, unfamiliar = _prediction(), _prediction()
    familiar.familiarity = unfamiliar.familiarity = 1.0
    unfamiliar.unfamiliar = True
    assert "No warnings: the scan looks like the training data" in html_report(scan, familiar, {}, "m", "v")
    page = html_report(scan, unfamiliar, {}, "m", "v")
    assert "looks like the training data" not in page and "Unfamiliar scanner or view: the scan is unlike" in page


def test_results_csv():
    records = [_prediction().record("a.png"),
               {"file": "=HYPERLINK(\"http://x\")", "error": {"type": "CorruptImageError", "message": "damaged"}}]
    rows = list(csv.reader(io.StringIO(results_csv(records))))
    assert rows[0] == CSV_FIELDS
    assert rows[1][:3] == ["a.png", "malignant", "0.050000"]
    assert rows[2][0].startswith("'=")  # a formula-like file name stays text in a spreadsheet
    assert rows[2][-2:] == ["CorruptImageError", "damaged"]



# ------------------------------------------------------------------------------------------------
# Issue 16: decisions a clinician can trust
# ------------------------------------------------------------------------------------------------
BOX = {"alarm": "error", "reassuring": "success", "neutral": "info"}


def verdict_box(at) -> tuple[str, str]:
    """(kind, text) of the verdict: the first box whose text starts with a title."""
    for kind in ("error", "success", "info"):
        for node in getattr(at, kind):
            if node.value.startswith("### "):
                return kind, shown(node.value)
    raise AssertionError("no verdict on the page")


def test_the_verdict_comes_first_in_its_tone_with_its_trust_line(app, predictor):
    prediction = predictor.predict(read_scan(SCAN))
    said = verdict(prediction)
    upload(app, SCAN)
    kind, text = verdict_box(app)
    assert kind == BOX[said.tone] and text.startswith(f"### {said.title}")
    assert text.count(said.title) == 1 and said.trust_line in text
    # plain words first: no thresholds, scores or model names in the box or the answer line
    answer_text = next(m.value for m in app.markdown if m.value.startswith("Most likely"))
    for word in ("threshold", "texture", "out of fold", "out-of-fold", DEFAULT_MODEL, "familiarity"):
        assert word not in text and word not in answer_text
    if prediction.malignancy_threshold is not None:  # the threshold is stated in the expander
        assert any(f"{prediction.malignancy_threshold:.1%}" in shown(m) for m in markdown(app) if m.startswith("- "))


def _find_scan(predictor, condition, classes=("benign", "malignant", "normal"), limit=120):
    for label in classes:
        for path in sorted((BUSI / label / "images").glob("*.png"))[:limit]:
            prediction = predictor.predict(read_scan(path))
            if condition(prediction):
                return path, prediction
    pytest.skip("no BUSI scan meets the condition for the shipped model")


def test_a_low_confidence_result_says_so_in_its_verdict_and_is_never_green(app, predictor):
    path, prediction = _find_scan(predictor, lambda p: p.low_confidence and not p.unfamiliar)
    upload(app, path)
    kind, text = verdict_box(app)
    assert "Low confidence: no answer reaches 60%" in text
    assert kind != "success"


def test_no_model_outline_on_a_scan_it_calls_normal_unless_asked(app, predictor):
    path, prediction = _find_scan(predictor, lambda p: p.predicted_class == "normal" and p.lesion_mask is not None
                                  and p.lesion_mask.any(), classes=("normal",))
    upload(app, path)
    assert any("calls this scan normal" in c.value for c in app.caption)
    assert not any("lesion outlined by the model" in m.value for m in app.markdown)
    app.toggle(key="outline_on_normal").set_value(True).run()
    assert any("although it calls the scan normal" in m.value for m in app.markdown)


def test_a_training_scan_says_its_result_is_not_a_test_and_is_never_green(app):
    upload(app, SECOND)
    assert any("is BUSI's 'benign (1)', in the training data: its result is not a test" in shown(w.value)
               for w in app.warning)
    kind, text = verdict_box(app)
    assert "Not a test: the model trained on this scan" in text and kind != "success"


def test_a_mask_of_another_size_is_refused_naming_both_sizes(app):
    from PIL import Image

    app.toggle(key="use_mask").set_value(True).run()
    small = Image.open(MASK).convert("L").resize((100, 80))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    app.get("file_uploader")[1].upload("other_mask.png", buffer.getvalue(), "image/png")
    upload(app, SCAN)
    height, width = read_scan(SCAN).pixels.shape
    assert any(f"100 × 80 pixels but the scan is {width} × {height}" in shown(i.value) for i in app.info)
    assert mode_line(app) == "- Mode: image only"


def test_a_mask_off_the_model_lesion_gets_a_note(predictor):
    scan = read_scan(SCAN)
    lesion = predictor.predict(scan).lesion_mask
    assert lesion is not None and lesion.any()
    elsewhere = np.zeros_like(lesion)
    rows, cols = np.nonzero(~lesion)
    elsewhere[rows[0]:rows[0] + 5, cols[0]:cols[0] + 5] = True
    elsewhere &= ~lesion
    notes = predictor.predict(scan, elsewhere).warnings
    assert any("does not overlap the lesion the model finds" in n for n in notes)
    assert not any("does not overlap" in n for n in predictor.predict(scan, lesion).warnings)


# ------------------------------------------------------------------------------------------------
# Issue 25: what the page says is safe to act on
# ------------------------------------------------------------------------------------------------
NORMAL_SCAN = BUSI / "normal" / "images" / "normal (1).png"
MARKED_SCAN = REPO / "data" / "busbra-train" / "images" / "bus_0001-l.png"  # text and calipers burnt in


def test_a_lesion_drawn_on_a_normal_scan_is_benign_or_malignant_and_a_disagreement_is_said(app, predictor, monkeypatch):
    fake = fake_canvas(monkeypatch)
    upload(app, NORMAL_SCAN)
    app.toggle(key="use_mask").set_value(True).run()
    app.radio(key="mask_source").set_value(DRAW).run()
    scan = read_scan(NORMAL_SCAN)
    expected = predictor.predict(scan, mask_from_drawing(fake.last, scan.pixels.shape))
    assert expected.predicted_class in ("benign", "malignant")
    assert answer(app) == expected_answer(expected)
    assert any(m.value.startswith("Most likely") and "if the marked lesion is real" in m.value for m in app.markdown)
    assert expected.model_sees_no_lesion  # on its own the model calls this normal scan normal: they disagree
    kind, text = verdict_box(app)
    assert "The model itself sees no lesion here" in text and kind != "success"  # never green against the model


def test_mask_mode_off_and_on_keeps_the_chosen_mask_source(app):
    app.toggle(key="use_mask").set_value(True).run()
    app.radio(key="mask_source").set_value(DRAW).run()
    app.toggle(key="use_mask").set_value(False).run()
    app.toggle(key="use_mask").set_value(True).run()
    assert app.radio(key="mask_source").value == DRAW


def test_an_unfamiliar_result_is_never_green_and_says_the_other_hospitals_figure(app, predictor, monkeypatch):
    import streamlit as st

    real = Predictor.predict

    def unfamiliar(self, scan, mask=None):
        result = real(self, scan, mask)
        result.unfamiliar = True
        return result

    st.cache_data.clear()
    monkeypatch.setattr(Predictor, "predict", unfamiliar)
    upload(app, SECOND)
    kind, text = verdict_box(app)
    assert kind != "success"
    figure = predictor.card.unseen_hospital("image")
    assert (f"at a hospital the model never trained on, this flag caught {figure:.0%} of cancers" in text
            if figure is not None else "Unfamiliar scanner or view" in text)
    st.cache_data.clear()


def test_burnt_in_marks_are_left_out_of_grad_cam_and_shown_on_request(app):
    upload(app, MARKED_SCAN)
    caption = next(c.value for c in app.caption if "Regions that raised" in c.value)
    assert "Burnt-in marks" in caption and "left out" in caption
    share = float(re.search(r"; ([\d.]+)% of the scan", shown(caption))[1])
    assert 0.5 < share < 5  # the text and calipers, not the tissue
    app.toggle(key="cam_show_marks").set_value(True).run()
    assert not app.exception and app.toggle(key="cam_show_marks").value is True


def test_a_typed_pixel_size_measures_the_lesion(app, predictor):
    upload(app, SCAN)
    expected = predictor.predict(read_scan(SCAN))
    assert expected.predicted_class != "normal" and expected.lesion_axes_mm is None
    assert not any(m.value.startswith("Lesion size") for m in app.markdown)
    scale = next(n for n in app.number_input if n.key.startswith("scale-"))
    scale.set_value(0.1).run()
    line = next(m.value for m in app.markdown if m.value.startswith("Lesion size"))
    from imagemasknet.inference.measure import lesion_axes_mm

    long_axis, short_axis = lesion_axes_mm(expected.lesion_mask, (0.1, 0.1))
    assert f"{long_axis:.1f} × {short_axis:.1f} mm" in line


def test_the_report_carries_case_reader_and_a_sign_off_and_prints_on_a4_or_letter(predictor, isolated_env):
    scan = read_scan(SCAN)
    prediction = predictor.predict(scan)
    page = html_report(scan, prediction, {"Scan": scan.rgb}, "m", "v", case_id="ACC-0042 <x>", reader="Dr. Ana Souza")
    assert "ACC-0042 &lt;x&gt;" in page and "Dr. Ana Souza" in page
    assert "Read by" in page and "Signature" in page and verdict(prediction).title in page
    assert "@page" in page and "@media print" in page
    blank = html_report(scan, prediction, {"Scan": scan.rgb}, "m", "v")
    assert blank.count('class="blank"') >= 4  # case, reader, date and signature lines to write on
    assert not any(isolated_env.runs.rglob("*"))  # nothing the reader typed is stored


def test_a_normal_answer_that_cannot_exclude_a_lesion_is_said_so_and_never_green(app, predictor, monkeypatch):
    import streamlit as st

    real = Predictor.predict

    def strict(self, scan, mask=None):
        result = real(self, scan, mask)
        result.exclusion_threshold = 0.999  # as if the cross-validation had asked for more certainty
        return result

    path, _ = _find_scan(predictor, lambda p: p.predicted_class == "normal", classes=("normal",))
    st.cache_data.clear()
    monkeypatch.setattr(Predictor, "predict", strict)
    upload(app, path)
    kind, text = verdict_box(app)
    assert kind == "info" and "A lesion cannot be excluded" in text and "No lesion seen" not in text
    st.cache_data.clear()
