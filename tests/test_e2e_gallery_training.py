"""End to end in a real browser: `streamlit run app.py` + headless Chromium (Playwright).

Gallery: filter to malignant, open a case, and check its overlay (the reference mask drawn in green on the
scan, Grad-CAM beside it). Training: a results folder with real runs shows its curves and charts. Saves the
screenshots gallery-*.png and training-*.png (1400×900 viewport; see e2e_helpers.SCREENSHOTS).

The server runs on a 31-case copy of BUSI (so the shipped model classifies it in seconds, not minutes) and
on a results folder of real runs: the checkout's cross-validation results when present, else a real
1-epoch training made here.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (REPO, browser, browser_page, chromium_executable, open_app,  # noqa: F401  (fixtures)
                         running_server, screenshot, wait_idle)
from PIL import Image
from test_app_gallery_training import CV_RESULTS, NO_WEIGHTS, SUBSET

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory, gallery_data) -> Path:
    root = tmp_path_factory.mktemp("e2e-runs")
    if CV_RESULTS:
        for run in sorted(CV_RESULTS.iterdir()):
            if run.is_dir():
                shutil.copytree(run, root / run.name, ignore=NO_WEIGHTS)
        return root
    env = {**os.environ, "IMAGEMASKNET_CACHE": str(tmp_path_factory.mktemp("e2e-train-cache")),
           "IMAGEMASKNET_RUNS": str(root)}  # `evaluate --data` also files a report under the runs folder
    run = root / "tiny-fold1"
    for args in (["train", "--preset", "lesion-resunet", "--epochs", "1", "--limit", "20", "--fold", "1", "--data",
                  str(gallery_data), "--no-progress", "--num-workers", "0", "--out-dir", str(run)],
                 ["evaluate", "--run", str(run), "--data", str(gallery_data), "--resamples", "50", "--json",
                  str(run / "metrics.json")]):
        subprocess.run([sys.executable, "-m", "imagemasknet", *args], cwd=REPO, env=env, check=True,
                       capture_output=True, timeout=600)
    return root


@pytest.fixture(scope="module")
def gallery_data(tmp_path_factory, copy_busi_cases) -> Path:
    return copy_busi_cases(tmp_path_factory.mktemp("e2e-busi") / "Dataset_BUSI_with_GT", SUBSET)


@pytest.fixture(scope="module")
def server(chromium_executable, tmp_path_factory, gallery_data, results_folder):
    """``streamlit run app.py`` with the data and runs of this module."""
    extra = {"IMAGEMASKNET_RUNS": str(results_folder), "IMAGEMASKNET_DATA": str(gallery_data)}
    with running_server(tmp_path_factory.mktemp("gallery-server"), extra) as (base_url, _process):
        yield base_url


def match_count(page) -> tuple[int, int]:
    text = page.get_by_text(re.compile(r"\d+ of \d+ scans match")).first.inner_text()
    shown, total = re.search(r"(\d+) of (\d+) scans", text).groups()
    return int(shown), int(total)


def wait_images(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stImage"] img')]
        .every(img => img.complete && img.naturalWidth > 0)""", timeout=timeout_ms)


def image_pixels(page, locator) -> np.ndarray:
    """The pixels of an <img> as the server sent them (a media URL or an inline data: URI)."""
    src = locator.get_attribute("src")
    if src.startswith("data:"):
        body = base64.b64decode(src.split(",", 1)[1])
    else:
        origin = re.match(r"^https?://[^/]+", page.url).group(0)
        body = page.request.get(src if src.startswith("http") else origin + src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def open_page(page, base_url: str, title: str) -> None:
    """Open the app at its root, then the page through the sidebar menu, as a user does (a deep link works
    too: tests/test_e2e_deep_link.py)."""
    open_app(page, base_url)
    page.locator(f'[data-testid="stSidebarNav"] a[href$="/{title.lower()}"]').click()
    page.wait_for_url(re.compile(rf"/{title.lower()}"))
    wait_idle(page)


#: In the page: click the pager's button ``label`` and resolve to the milliseconds until ``count`` tiles
#: (other than the ones shown before) are in the page and decoded; -1 after 20 s.
CLICK_AND_TIME = """async ([label, count]) => {
    const images = () => [...document.querySelectorAll('[data-testid="stImage"] img')];
    const before = images().map(i => i.getAttribute('src')).join('|');
    const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === label);
    const start = performance.now();
    button.click();
    while (performance.now() - start < 20000) {
        await new Promise(resolve => requestAnimationFrame(resolve));
        const now = images();
        if (now.length === count && now.map(i => i.getAttribute('src')).join('|') !== before
            && now.every(i => i.complete && i.naturalWidth > 0)) return performance.now() - start;
    }
    return -1;
}"""


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the multiselect labelled ``label``."""
    page.locator('[data-testid="stMultiSelect"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    page.locator("h1").first.click()  # leave the field, so the screenshot shows it at rest
    wait_idle(page)


def test_gallery_filter_open_case_and_overlay(server, browser_page):
    page = browser_page
    open_page(page, server, "Gallery")
    page.get_by_text(re.compile(r"\d+ of \d+ scans match")).first.wait_for()
    wait_images(page)
    shown, total = match_count(page)
    assert shown == total == len(SUBSET)
    assert page.locator('[data-testid="stImage"]').count() == 24  # the first page of the grid
    assert page.get_by_text("Research use only").first.is_visible()  # inside app.py's navigation

    # Paging: page 2 (7 tiles), then back to a full page of 24, timed inside the browser from the click
    # to the last thumbnail decoded.
    page.evaluate(CLICK_AND_TIME, ["2", 7])
    wait_idle(page)
    elapsed_ms = page.evaluate(CLICK_AND_TIME, ["1", 24])
    print(f"\npage of 24 thumbnails shown {elapsed_ms:.0f} ms after the click (browser, cached)")
    assert 0 < elapsed_ms < 5000
    wait_idle(page)

    choose(page, "Class", "malignant")
    page.get_by_text(re.compile(rf"{sum(i.startswith('malignant') for i in SUBSET)} of {total} scans match")).wait_for()
    wait_images(page)
    screenshot(page, "gallery-grid.png", whole_page=True)
    assert match_count(page)[0] == sum(i.startswith("malignant") for i in SUBSET)
    captions = page.locator('[data-testid="stMarkdownContainer"] strong').all_inner_texts()
    assert not [c for c in captions if c.startswith(("benign (", "normal ("))]

    # Open the case of the grid's last tile: it opens in a dialog, in view (not far above, off-screen).
    last_open = page.locator('[data-testid="stButton"] button', has_text="Open").last
    last_open.scroll_into_view_if_needed()
    last_open.click()
    wait_idle(page)
    heading = page.get_by_role("dialog").get_by_role("heading", name=re.compile(r"malignant \(\d+\) — malignant"))
    heading.wait_for()
    wait_images(page)
    box, viewport = heading.bounding_box(), page.viewport_size
    assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], (box, viewport)
    overlay = page.locator('[data-testid="stImage"]').filter(has_text="Reference mask").locator("img").first
    pixels = image_pixels(page, overlay)
    green = (pixels[..., 1] > 180) & (pixels[..., 0] < 90) & (pixels[..., 2] < 170)
    assert green.sum() > 50, "the mask outline is not drawn on the scan"
    assert page.locator('[data-testid="stImage"]').filter(has_text="Grad-CAM").count() == 1
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()  # the probabilities
    screenshot(page, "gallery-case.png", whole_page=False)
    page.get_by_role("dialog").get_by_label("Close").click()  # the dialog's own close button
    page.get_by_role("dialog").wait_for(state="detached")
    wait_idle(page)

    # The filled style, and the audit summary.
    page.get_by_text("Fill the masks").click()
    wait_idle(page)
    wait_images(page)
    page.get_by_text(re.compile(r"Audit summary")).click()
    wait_idle(page)
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    screenshot(page, "gallery-filled-audit.png", whole_page=True)


def test_a_tagged_tile_opens_at_1280_pixels(server, browser):
    """Issue 25: a tile carrying badges (near-duplicate, low confidence, label conflict) keeps its Open button in
    view at a 1280-px window, and it opens the case."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    try:
        open_page(page, server, "Gallery")
        page.get_by_text(re.compile(r"\d+ of \d+ scans match")).first.wait_for()
        wait_images(page)
        tagged = page.locator('[data-testid="stVerticalBlock"]').filter(
            has=page.locator('[data-testid="stMarkdownContainer"] span', has_text=re.compile(r"^dup |low confidence"))
        ).filter(has=page.locator("button", has_text="Open")).last
        button = tagged.locator("button", has_text="Open").first
        button.scroll_into_view_if_needed()
        tile, box = tagged.bounding_box(), button.bounding_box()
        assert box["y"] + box["height"] <= tile["y"] + tile["height"] + 1, (box, tile)  # not cut off
        button.click()
        page.get_by_role("dialog").wait_for()
        page.get_by_role("dialog").get_by_text("The shipped model").first.wait_for(timeout=120_000)
    finally:
        context.close()


def test_training_page_charts(server, browser_page):
    page = browser_page
    open_page(page, server, "Training")
    page.get_by_role("heading", name="Curves per epoch").wait_for()
    charts = page.locator('[data-testid="stPlotlyChart"]')
    page.locator('[data-testid="stPlotlyChart"]:visible').first.wait_for()  # the shipped model's curves stay folded
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4", timeout=60_000)
    assert charts.count() >= 7
    # A curve was drawn (a trace path with points), not just empty axes.
    assert page.locator(".js-plotly-plot .scatterlayer .trace path.js-line").count() >= 1
    screenshot(page, "training-overview.png", whole_page=False)
    for name, target in (("training-curves.png", page.get_by_role("heading", name="Curves per epoch")),
                         ("training-evaluation.png", page.get_by_text(re.compile(r"^Mode: ")).first),
                         ("training-cv-spread.png", page.get_by_role("heading", name=re.compile("Cross-validation")))):
        if target.count():
            target.evaluate("element => element.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(800)
            screenshot(page, name, whole_page=False)


def test_no_training_table_is_cut_off_at_1280_pixels(server, browser):
    """Issue 17: at a 1280-px window every table of the Training page fits its column: no data grid needs a
    horizontal scroll bar to show its columns."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    try:
        open_page(page, server, "Training")
        page.get_by_role("heading", name="Curves per epoch").wait_for()
        page.locator('[data-testid="stDataFrame"]').first.wait_for()
        wait_idle(page)
        widths = page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid="stDataFrame"]')).map(frame => {
            const scroller = frame.querySelector('.dvn-scroller'); const head = Array.from(frame.querySelectorAll('[role=columnheader]')).map(h => h.innerText).join('/');
            return {head, scroll: scroller ? scroller.scrollWidth : 0, client: scroller ? scroller.clientWidth : 0,
                    frame: frame.getBoundingClientRect().right, column: frame.parentElement.getBoundingClientRect().right};
        })""")
        assert widths, "no tables on the Training page"
        for n, width in enumerate(widths):
            assert width["scroll"] <= width["client"] + 2, (n, width)
            assert width["frame"] <= width["column"] + 1, (n, width)
    finally:
        context.close()
