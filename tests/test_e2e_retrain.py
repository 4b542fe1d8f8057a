"""End to end in a real browser: the Retrain page of `streamlit run app.py` in headless Chromium.

Fills the form (one epoch, a 20-scan subset at 64 px), starts the job, reloads the page while it runs
(the page finds the job again through the lock), waits for the progress bar to reach the end, and
promotes the run. Saves the screenshot retrain.png (see e2e_helpers.SCREENSHOTS).
"""
from __future__ import annotations

import re
import time

import pytest
from e2e_helpers import (ADMIN_PASSWORD, browser, browser_page, chromium_executable, open_app,  # noqa: F401  (fixtures)
                         screenshot, streamlit_server, wait_idle)

from imagemasknet.models import DEFAULT_MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def one_thread_trainer():
    """The server (and the trainer it launches) inherit this: one intra-op thread on the shared cores."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")


def wait_for_text(page, pattern: str, timeout: float = 180) -> None:
    page.locator('[data-testid="stMarkdownContainer"]', has_text=re.compile(pattern)).first.wait_for(
        timeout=timeout * 1000)


def open_retrain(page, base_url: str) -> None:
    """Through the app's navigation (a cold deep link to /retrain would skip app.py's st.navigation)."""
    open_app(page, base_url)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Retrain").click()
    page.get_by_role("heading", name="Retrain").wait_for()
    wait_idle(page)


def sign_in(page) -> None:
    page.get_by_label("Administrator password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name=re.compile("Sign in")).click()
    page.get_by_text("Signed in as administrator").wait_for()
    wait_idle(page)


def test_retrain_start_watch_promote(streamlit_server, browser_page):
    page = browser_page
    open_retrain(page, streamlit_server)
    assert page.get_by_text("Active model:").first.is_visible()
    assert "shipped" in page.locator(".st-key-retrain_active").inner_text()
    assert page.get_by_role("button", name=re.compile("Start training")).count() == 0  # not signed in
    sign_in(page)

    set_number(page, "epochs", 1)
    set_number(page, "limit", 20)
    set_number(page, "image size", 64)
    page.get_by_role("button", name=re.compile("Start training")).click()
    wait_for_text(page, r"(starting|running|finished)", timeout=60)

    # Leave and come back: the job keeps running and the page finds it again.
    page.goto("about:blank")
    open_retrain(page, streamlit_server)
    sign_in(page)  # a new browser session: signed out again
    run = page.locator(".st-key-retrain_run")
    run.wait_for()
    assert re.search(rf"{DEFAULT_MODEL}-\d{{8}}-\d{{6}}", run.inner_text())

    deadline = time.monotonic() + 180
    while "finished" not in run.inner_text():
        assert time.monotonic() < deadline, run.inner_text()
        assert not re.search(r"failed|crashed|cancelled", run.inner_text()), run.inner_text()
        page.wait_for_timeout(500)
    assert "epoch 1/1" in run.inner_text()
    progress = page.locator('[data-testid="stProgress"] [role="progressbar"]').first
    assert progress.get_attribute("aria-valuenow") == "100"
    page.get_by_role("button", name=re.compile("Promote to active model")).wait_for()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
    wait_idle(page)
    page.wait_for_timeout(1000)  # let the curves draw
    screenshot(page, "retrain.png")

    page.get_by_role("button", name=re.compile("Promote to active model")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("subset of 20 scans").wait_for()  # the confirmation names what speaks against it
    dialog.get_by_label(re.compile("Reason for promoting it anyway")).fill("a one-epoch browser test run")
    dialog.get_by_label(re.compile("Reason for promoting it anyway")).press("Enter")
    dialog.get_by_role("button", name=re.compile("^Promote$")).click()
    wait_for_text(page, "is now the active model", timeout=60)
    assert page.get_by_text("Active model:").first.is_visible()
    active = page.locator(".st-key-retrain_active").inner_text()
    name = re.search(rf"{DEFAULT_MODEL}-\d{{8}}-\d{{6}}", run.inner_text()).group(0)
    assert name in active and "Roll back" in active
