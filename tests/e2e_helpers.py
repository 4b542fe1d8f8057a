"""End-to-end test plumbing: a real `streamlit run app.py` server and a headless Chromium (Playwright).

Use from a test module with::

    from e2e_helpers import browser, browser_page, chromium_executable, streamlit_server  # noqa: F401

``streamlit_server`` (module scope) yields the base URL of a fresh server on a free localhost port;
``browser_page`` (per test) is a Playwright page at 1400×900. When no Chromium can be found the tests
are skipped, unless the environment variable CI is set, in which case they fail.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 900}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
SERVER_START_TIMEOUT = 120  # seconds; importing torch on a busy machine is slow


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str):
    if _on_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base_url: str, process: subprocess.Popen, log: Path, timeout: float = SERVER_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    path = find_chromium()
    if path is None:
        _missing("no Chromium found (looked at $CHROMIUM, /usr/bin/chromium, chromium on PATH)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the Python package playwright is not installed")
    return path


@pytest.fixture(scope="module")
def streamlit_server(chromium_executable, tmp_path_factory):
    """Start ``streamlit run app.py`` on a free localhost port; yield its base URL; stop it afterwards."""
    work = tmp_path_factory.mktemp("streamlit-server")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, IMAGEMASKNET_CACHE=str(work / "cache"), IMAGEMASKNET_RUNS=str(work / "runs"),
               PYTHONUNBUFFERED="1")
    env.pop("IMAGEMASKNET_DATA", None)
    log = work / "streamlit.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_health(base_url, process, log)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def browser(chromium_executable):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def browser_page(browser):
    """A fresh page (own context: own cookies and Streamlit session) at 1400×900."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(90_000)
    try:
        yield page
    finally:
        context.close()


# ------------------------------------------------------------------------------------------------
# Streamlit page helpers
# ------------------------------------------------------------------------------------------------
def open_app(page, url: str) -> None:
    """Load a Streamlit page and wait until its script has run once."""
    page.goto(url)
    page.locator('[data-testid="stApp"]').wait_for()
    wait_idle(page)


def wait_idle(page, timeout: float = 120) -> None:
    """Wait until Streamlit is not running the script (no "Running…" status widget for a moment)."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0 or \
            page.locator('[data-testid="stSpinner"]').count() > 0
        now = time.monotonic()
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since > 1.0:
            return
        page.wait_for_timeout(200)
    raise TimeoutError("the Streamlit script kept running")


def screenshot(page, name: str, whole_page: bool = True, max_height: int = 3000) -> Path:
    """Save ``docs/screenshots/NAME``. Streamlit scrolls inside its main area rather than the document, so
    for the whole page the viewport is made as tall as the content for the shot, then restored."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    size = page.viewport_size or VIEWPORT
    if whole_page:
        height = page.evaluate("""() => {
            const main = document.querySelector('[data-testid="stMain"]') || document.body;
            return Math.max(main.scrollHeight, document.body.scrollHeight);
        }""")
        page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height), max_height))})
        page.wait_for_timeout(800)  # let charts and images re-layout
    try:
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path
