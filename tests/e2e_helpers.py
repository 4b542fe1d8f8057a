"""End-to-end test plumbing: a real `streamlit run app.py` server and a headless Chromium (Playwright).

Use from a test module with::

    from e2e_helpers import browser, browser_page, chromium_executable, streamlit_server  # noqa: F401

``streamlit_server`` (module scope) yields the base URL of a fresh server on a free localhost port;
``browser_page`` (per test) is a Playwright page at 1400×900. When no Chromium can be found the tests
are skipped, unless the environment variable CI is set, in which case they fail.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Where the browser tests save their screenshots: a temporary folder, unless $IMAGEMASKNET_SCREENSHOTS names
#: one (``IMAGEMASKNET_SCREENSHOTS=docs/screenshots`` refreshes the README's, best with the full CV results
#: in ./results, which the Training page's shots show).
SCREENSHOTS = Path(os.environ.get("IMAGEMASKNET_SCREENSHOTS") or Path(tempfile.gettempdir()) / "imagemasknet-screenshots")
VIEWPORT = {"width": 1400, "height": 900}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
SERVER_START_TIMEOUT = 120  # seconds; importing torch on a busy machine is slow
#: The administrator password of every test server (and of the `admin` fixture).
ADMIN_PASSWORD = "test-admin-password-7"


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str):
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
        missing("no Chromium found (looked at $CHROMIUM, /usr/bin/chromium, chromium on PATH)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("the Python package playwright is not installed")
    return path


@contextlib.contextmanager
def running_server(work: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run app.py`` on a free localhost port, with its cache and runs folders under ``work``
    and the test administrator password (``extra_env`` overrides any of them); yields (base URL, process)
    and stops it afterwards."""
    from imagemasknet.core.paths import SECRETS_ENV
    from imagemasknet.ops.access import HASH_ENV, hash_password

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if name != "IMAGEMASKNET_DATA"}
    env.update(IMAGEMASKNET_CACHE=str(work / "cache"), IMAGEMASKNET_RUNS=str(work / "runs"), PYTHONUNBUFFERED="1")
    env.update({HASH_ENV: hash_password(ADMIN_PASSWORD), SECRETS_ENV: str(work / "no-secrets.toml")})
    env.update(extra_env or {})
    log = work / "streamlit.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_health(base_url, process, log)
        yield base_url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def streamlit_server(chromium_executable, tmp_path_factory):
    """A fresh ``streamlit run app.py`` for the module; yields its base URL."""
    with running_server(tmp_path_factory.mktemp("streamlit-server")) as (base_url, _process):
        yield base_url


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


def wait_idle(page, timeout: float = 120, quiet: float = 1.0) -> None:
    """Wait until Streamlit is not running the script (no "Running…" status widget for ``quiet`` s)."""
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
        elif now - quiet_since > quiet:
            return
        page.wait_for_timeout(200)
    raise TimeoutError("the Streamlit script kept running")


def screenshot(page, name: str, whole_page: bool = True, max_height: int = 3000) -> Path:
    """Save ``SCREENSHOTS/NAME``. Streamlit scrolls inside its main area rather than the document, so
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


UPLOADER = '[data-testid="stFileUploader"] input[type=file]'
#: The Classify page's answer line, "Most likely: Benign, 71%".
ANSWER = '[data-testid="stMarkdownContainer"]:has-text("Most likely:")'


def shown_answer(page) -> tuple[str, str] | None:
    """(class, probability) of the answer line on the page, or None while there is none."""
    texts = page.locator(ANSWER).all_inner_texts()
    found = re.search(r"Most likely: (\w+), (\d+%)", texts[0]) if texts else None
    return (found[1], found[2]) if found else None


def classify_concurrently(browser, base_url: str, files: list[Path], timeout: float = 600) -> list[tuple[str, float]]:
    """Open one browser context (its own Streamlit session) per file on the Classify page, upload all the
    files at once, and return (class shown, seconds from upload to result) per file. The pages are
    polled in turn, so a time is late by at most one polling round (about 0.1 s per page)."""
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in files]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.set_default_timeout(timeout * 1000)
            open_app(page, base_url)
        started = []
        for page, path in zip(pages, files):
            page.locator(UPLOADER).first.set_input_files(str(path))
            started.append(time.monotonic())
        results: dict[int, tuple[str, float]] = {}
        deadline = time.monotonic() + timeout
        while len(results) < len(pages):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pages) - len(results)} of {len(pages)} sessions had no result in {timeout} s")
            for index, page in enumerate(pages):
                if index in results:
                    continue
                answer = shown_answer(page)
                if answer:
                    results[index] = (answer[0], time.monotonic() - started[index])
            time.sleep(0.05)
        return [results[i] for i in range(len(pages))]
    finally:
        for context in contexts:
            context.close()


def process_rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
