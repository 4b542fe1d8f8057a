"""The app under load, in real browsers: ten Streamlit sessions (Playwright contexts) classify ten
different BUSI scans at once against one `streamlit run app.py`, each must show what the shipped
Predictor says about its own scan; and the uploaded bytes are never written to disk.

The no-disk check watches the server's temporary folder (its TMPDIR), its cache and runs folders,
the repository (less .git, .venv and test outputs) and ~/.streamlit: no file there may be created
or changed during the uploads with a piece of an uploaded scan in it, and the temporary folder
must hold no file. Timings are a benchmark (benchmarks/app_load.py), not asserted here.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from e2e_helpers import (REPO, browser, chromium_executable, classify_concurrently,  # noqa: F401  (fixtures)
                         running_server)

from imagemasknet.core.paths import BUNDLED_COPY, SHARED_COPY

pytestmark = pytest.mark.e2e

BUSI = BUNDLED_COPY if BUNDLED_COPY.is_dir() else SHARED_COPY
SCANS = [BUSI / label / "images" / f"{label} ({n}).png" for label, numbers in
         (("benign", (3, 5, 7, 9)), ("malignant", (2, 4, 6)), ("normal", (2, 4, 6))) for n in numbers]
#: Top-level folders of the repository that tests and tools write to (compiled files are skipped everywhere).
NOT_WATCHED = {".git", ".venv", "tests", ".pytest_cache", ".hypothesis", "results"}


@pytest.fixture(scope="module")
def server(chromium_executable, tmp_path_factory):
    work = tmp_path_factory.mktemp("load-server")
    temporary = work / "tmp"
    temporary.mkdir()
    with running_server(work, {"TMPDIR": str(temporary)}) as (base_url, process):
        yield SimpleNamespace(url=base_url, work=work, tmp=temporary, process=process)


def snapshot(roots: list[Path]) -> dict[Path, tuple[int, int]]:
    files = {}
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [d for d in subfolders
                             if d != "__pycache__" and not (Path(folder) == REPO and d in NOT_WATCHED)]
            for name in names:
                path = Path(folder) / name
                try:
                    info = path.stat()
                except OSError:
                    continue
                files[path] = (info.st_size, info.st_mtime_ns)
    return files


def test_ten_sessions_at_once_each_get_their_own_correct_result_and_nothing_touches_the_disk(server, browser):
    missing = [p for p in SCANS if not p.is_file()]
    if missing:
        pytest.skip(f"BUSI scans not found: {missing[:2]}")
    from imagemasknet.data.scans import read_scan
    from imagemasknet.inference.predictor import Predictor

    predictor = Predictor.shipped()
    expected = [predictor.predict(read_scan(path)).predicted_class.capitalize() for path in SCANS]
    assert len(set(expected)) > 1  # the scans do not all get one class, so a mix-up would show

    roots = [server.tmp, server.work, REPO, Path.home() / ".streamlit"]
    before = snapshot(roots)
    started = time.time_ns()
    results = classify_concurrently(browser, server.url, SCANS)
    assert [label for label, _seconds in results] == expected

    after = snapshot(roots)
    changed = [path for path, (size, mtime) in after.items() if before.get(path) != (size, mtime) and mtime >= started]
    pieces = [path.read_bytes()[4096:8192] for path in SCANS]  # inside the compressed pixel data
    for path in changed:
        try:
            content = path.read_bytes()
        except OSError:
            continue
        assert not any(piece in content for piece in pieces), f"{path} holds uploaded bytes"
    # (PyTorch makes an empty torchinductor folder there at import: folders are allowed, files are not)
    assert not [p for p in server.tmp.rglob("*") if p.is_file()], "the server wrote a file into its temporary folder"
