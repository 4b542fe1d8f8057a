"""A page opened by its address on a freshly started server (before anyone has loaded the app's root)
must still come through app.py: the app's navigation and the research-use notice, not Streamlit's
old-style listing of a pages folder (which would show an "app" entry and the file names). The pages live in
app_pages/, which Streamlit does not discover on its own, so no private API is needed for this."""
from __future__ import annotations

import pytest
from e2e_helpers import VIEWPORT, browser, chromium_executable, open_app, running_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

NAVIGATION = ["Classify", "Gallery", "Training", "Retrain"]


def test_first_visit_by_address_gets_the_app_navigation_and_notice(chromium_executable, browser, tmp_path):
    with running_server(tmp_path) as (base_url, _process):
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(90_000)
            for path, title in (("/retrain", "Retrain"), ("/training", "Training")):
                open_app(page, base_url + path)
                links = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
                assert [text.split("\n")[-1] for text in links] == NAVIGATION, links
                assert page.locator("h1").first.inner_text() == title
                assert page.locator('[data-testid="stSidebar"]').get_by_text("Research use only").count() == 1
        finally:
            context.close()
