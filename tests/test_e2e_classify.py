"""End to end in a real browser: `streamlit run app.py` + headless Chromium (Playwright).

Uploads real BUSI scans, checks the class against the Predictor, the chart, mask mode with an uploaded
mask and with a rectangle drawn on the canvas with the mouse, a corrupt file in a batch, and that there is
exactly one navigation menu. Saves screenshots classify-*.png (see e2e_helpers.SCREENSHOTS).
"""
from __future__ import annotations

import re

import pytest
from e2e_helpers import (ANSWER, browser, browser_page, chromium_executable, open_app,  # noqa: F401  (fixtures)
                         screenshot, shown_answer, streamlit_server, wait_idle)

from imagemasknet.core.paths import BUNDLED_COPY, SHARED_COPY

pytestmark = pytest.mark.e2e

BUSI = BUNDLED_COPY if BUNDLED_COPY.is_dir() else SHARED_COPY
SCAN = BUSI / "malignant" / "images" / "malignant (1).png"
MASK = BUSI / "malignant" / "masks" / "malignant (1)_mask.png"
SECOND = BUSI / "benign" / "images" / "benign (1).png"


@pytest.fixture(scope="module")
def expected():
    """What the shipped Predictor says about the scans (the app must show the same)."""
    if not SCAN.is_file() or not SECOND.is_file():
        pytest.skip(f"BUSI scans not found under {BUSI}")
    from imagemasknet.data.scans import read_mask, read_scan
    from imagemasknet.inference.predictor import Predictor

    predictor = Predictor.shipped()
    scan = read_scan(SCAN)
    return {
        "image": predictor.predict(scan),
        "mask": predictor.predict(scan, read_mask(MASK, scan.pixels.shape)),
        "second": predictor.predict(read_scan(SECOND)),
    }


def expected_answer(prediction) -> tuple[str, str]:
    return prediction.predicted_class.capitalize(), f"{prediction.confidence:.0%}"


def wait_for_mode(page, mode_text: str) -> None:
    """Until the answer line is the one of ``mode_text`` ("image only", or "with mask": it then says the answer
    takes the marked lesion as real)."""
    page.wait_for_function(
        """([given, wanted]) => [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
            .some(e => e.innerText.startsWith('Most likely:') && e.innerText.includes(given) === wanted)""",
        arg=["if the marked lesion is real", mode_text == "with mask"])
    wait_idle(page)


def test_one_navigation_menu(streamlit_server, browser_page):
    page = browser_page
    open_app(page, streamlit_server)
    assert page.locator('[data-testid="stSidebarNav"]').count() == 1
    links = [re.sub(r"\s+", " ", text).strip() for text in
             page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
    assert [link.split(" ")[-1] for link in links] == ["Classify", "Gallery", "Training", "Retrain"]
    # st.navigation replaces the automatic pages/ menu: no second list of page links anywhere
    assert page.locator('[data-testid="stSidebarNavItems"]').count() <= 1
    assert page.get_by_text("Research use only — not a diagnosis").first.is_visible()
    assert page.get_by_text("Drop one or several scans above").is_visible()


def test_classify_scan_then_mask_then_drawing(streamlit_server, browser_page, expected):
    page = browser_page
    open_app(page, streamlit_server)

    # 1. image only
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(str(SCAN))
    wait_for_mode(page, "image only")
    prediction = expected["image"]
    assert shown_answer(page) == expected_answer(prediction)
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.locator("svg").first.wait_for()
    chart_text = chart.inner_text()
    for name in ("Normal", "Benign", "Malignant"):
        assert name in chart_text
    assert f"{prediction.confidence:.1%}" in chart_text
    assert page.get_by_text("Regions that raised the score").is_visible()
    screenshot(page, "classify-result.png")

    # 2. mask mode with an uploaded mask
    page.get_by_text("Use a lesion mask").click()
    wait_idle(page)
    page.locator('[data-testid="stFileUploader"] input[type=file]').nth(1).set_input_files(str(MASK))
    wait_for_mode(page, "with mask")
    with_mask = expected["mask"]
    assert shown_answer(page) == expected_answer(with_mask)
    assert page.get_by_text("your mask").first.is_visible()
    screenshot(page, "classify-mask.png")

    # 3. draw a rectangle on the canvas with the mouse
    page.get_by_text("Draw on the scan").click()
    wait_for_mode(page, "image only")  # nothing drawn yet
    page.get_by_text("Rectangle").click()
    wait_idle(page)
    canvas = page.locator("canvas.upper-canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 100
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.45 * box["height"], steps=8)
    page.mouse.move(box["x"] + 0.85 * box["width"], box["y"] + 0.6 * box["height"], steps=8)
    page.mouse.up()
    page.get_by_text("Drawn lesion: columns").wait_for()
    wait_for_mode(page, "with mask")
    values = shown_answer(page)
    assert values[0] in ("Benign", "Malignant")  # a marked lesion is a lesion
    assert re.fullmatch(r"\d{1,3}%", values[1])
    screenshot(page, "classify-draw.png")


def test_batch_with_a_corrupt_file(streamlit_server, browser_page, expected, tmp_path):
    page = browser_page
    broken = tmp_path / "broken scan.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + b"not really a png")
    open_app(page, streamlit_server)
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(
        [str(SCAN), str(broken), str(SECOND)])
    page.get_by_text("Show details for").wait_for()
    wait_for_mode(page, "image only")
    error = page.locator('[data-testid="stAlertContentError"]', has_text="broken scan.png").first
    error.wait_for()
    assert "broken scan.png" in error.inner_text()
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    assert page.get_by_text("Download results (CSV)").is_visible()
    assert shown_answer(page) == expected_answer(expected["image"])  # the first good file's details

    # open the other good file's details
    page.locator('[data-testid="stSelectbox"]', has_text="Show details for").click()
    page.get_by_role("option", name=SECOND.name).click()
    page.locator("h4", has_text=SECOND.name).wait_for()
    wait_idle(page)
    assert shown_answer(page) == expected_answer(expected["second"])
    screenshot(page, "classify-batch.png")


def test_the_batch_table_and_every_file_name_fit_a_1280_pixel_window(streamlit_server, browser, tmp_path):
    """Issue 25: at 1280 px the batch table shows every column without a sideways scroll bar, marks the
    suspicious rows, and every uploaded file's name can be read in full."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    try:
        names = []
        for n, source in enumerate([SCAN, SECOND, SCAN, SECOND]):
            names.append(f"a-rather-long-file-name-of-the-clinic-archive-{n:02d}.png")
            (tmp_path / names[-1]).write_bytes(source.read_bytes())
        open_app(page, streamlit_server)
        page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(
            [str(tmp_path / name) for name in names])
        page.get_by_text("Show details for").wait_for()
        table = page.locator('[data-testid="stDataFrame"]').first
        table.wait_for()
        wait_idle(page)
        width = table.evaluate("""frame => { const s = frame.querySelector('.dvn-scroller');
            return {scroll: s.scrollWidth, client: s.clientWidth}; }""")
        assert width["scroll"] <= width["client"] + 2, width
        assert page.get_by_text("Rows tinted red are suspicious for malignancy").is_visible()
        listed = page.locator('[data-testid="stCaptionContainer"]', has_text="4 scans:").first
        assert listed.is_visible() and all(name in listed.inner_text() for name in names)
    finally:
        context.close()


@pytest.mark.parametrize("window_width", [1024, 2560])
def test_a_rectangle_drawn_to_the_canvas_right_edge_reaches_the_scan_right_edge(streamlit_server, browser, window_width):
    """Issue 17: at the narrowest and the widest supported window the canvas fits the page, so a rectangle
    dragged to its right edge marks the scan's last column, and its left side lands where it was drawn."""
    context = browser.new_context(viewport={"width": window_width, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    try:
        open_app(page, streamlit_server)
        page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(str(SCAN))
        wait_for_mode(page, "image only")
        page.get_by_text("Use a lesion mask").click()
        wait_idle(page)
        page.get_by_text("Draw on the scan").click()
        wait_for_mode(page, "image only")
        page.get_by_text("Rectangle").click()
        wait_idle(page)
        canvas = page.locator("canvas.upper-canvas").first
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        content = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
                                " return m.getBoundingClientRect().right - parseFloat(getComputedStyle(m).paddingRight); }")
        assert box["x"] + box["width"] <= content + 1, (box, content)  # nothing of the canvas is cut off
        page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.3 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] - 1, box["y"] + 0.6 * box["height"], steps=10)
        page.mouse.up()
        caption = page.get_by_text(re.compile(r"^Drawn lesion: columns"))
        caption.wait_for(timeout=60000)
        first, last, width = map(int, re.search(r"columns (\d+)–(\d+), rows \d+–\d+ of the (\d+) ×", caption.inner_text()).groups())
        assert last == width - 1, caption.inner_text()
        assert abs(first - width / 2) <= width / 100 + 2, caption.inner_text()
    finally:
        context.close()
