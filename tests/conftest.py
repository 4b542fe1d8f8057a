"""Shared fixtures: an isolated cache and runs folder for every test, the real BUSI / BUS-BRA copies,
and a helper that copies a few real BUSI cases into a temporary folder in either layout."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from e2e_helpers import ADMIN_PASSWORD

import imagemasknet.data.busi as data_module
from imagemasknet.core.paths import DATA_DIR
from imagemasknet.core import paths
from imagemasknet.ops import access

# The test machine has two cores shared with other work; intra-op threads then fight over them and a
# tiny training run takes 5-7x longer than on one thread. IMAGEMASKNET_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("IMAGEMASKNET_TEST_THREADS", "1")))

_SHARED = Path("/work/shared/datasets")
# The copy bundled with the project first (data/busi/), then the package's idea of the shared copy (it
# follows the checkout), then the fixed location.
_BUSI_CANDIDATES = [data_module.BUNDLED_COPY, data_module.SHARED_COPY, _SHARED / "busi" / "Dataset_BUSI_with_GT"]
# BUS-BRA's training half, bundled with the project (so the tests that use it run everywhere, CI included); its
# evaluation half (../shared/datasets/busbra) is for measuring the shipped model only, never for tests that train.
_BUSBRA_CANDIDATES = [DATA_DIR / "busbra-train", _SHARED / "busbra-train"]


def _first_dir(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_dir()), None)


BUSI_ROOT = _first_dir(_BUSI_CANDIDATES)
BUSBRA_ROOT = _first_dir(_BUSBRA_CANDIDATES)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    """Every test gets its own decode cache and runs folder, and no IMAGEMASKNET_DATA from the shell,
    so nothing is written into the repository or the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(cache))
    monkeypatch.setenv("IMAGEMASKNET_RUNS", str(runs))
    monkeypatch.delenv("IMAGEMASKNET_DATA", raising=False)
    # No administrator unless a test configures one (never the shell's, never the repo's secrets file).
    monkeypatch.delenv(access.HASH_ENV, raising=False)
    monkeypatch.setenv(paths.SECRETS_ENV, str(runs / "no-secrets.toml"))
    return SimpleNamespace(cache=cache, runs=runs)


@pytest.fixture(scope="session")
def admin_hash() -> str:
    return access.hash_password(ADMIN_PASSWORD)


@pytest.fixture
def admin(monkeypatch, isolated_env, admin_hash) -> access.AdminSession:
    """An administrator password configured through the environment, and a signed-in session."""
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    return access.login(ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the whole session (decoding all 780 BUSI scans takes several seconds)."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def shared_cache(isolated_env, monkeypatch, shared_cache_dir) -> Path:
    """Point IMAGEMASKNET_CACHE at the session-wide temporary cache (still outside the repo)."""
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    return shared_cache_dir


@pytest.fixture(scope="session")
def busi_root() -> Path:
    if BUSI_ROOT is None:
        pytest.skip(f"BUSI data set not found (looked in {', '.join(map(str, _BUSI_CANDIDATES))})")
    return BUSI_ROOT


@pytest.fixture(scope="session")
def busi_manifest(busi_root) -> Path:
    manifest = busi_root.parent / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"BUSI manifest.csv not found next to {busi_root}")
    return manifest


@pytest.fixture(scope="session")
def busbra_root() -> Path:
    if BUSBRA_ROOT is None or not (BUSBRA_ROOT / "labels.csv").is_file():
        pytest.fail(f"BUS-BRA's training half not found (looked in {', '.join(map(str, _BUSBRA_CANDIDATES))}); "
                    "restore it with `git checkout -- data/busbra-train`")
    return BUSBRA_ROOT


def case_files(busi_root: Path, case_id: str) -> tuple[Path, list[Path]]:
    """(image, masks in _mask, _mask_1, ... order) of a case of the bundled shared copy."""
    label = case_id.split(" (")[0]
    image = busi_root / label / "images" / f"{case_id}.png"
    masks = sorted((busi_root / label / "masks").glob(f"{case_id}_mask*.png"),
                   key=lambda p: (len(p.stem), p.stem))
    if not image.is_file() or not masks:
        raise FileNotFoundError(f"{case_id} is not in {busi_root}")
    return image, masks


def copy_cases(busi_root: Path, dest: Path, case_ids: list[str], layout: str = "bundled") -> Path:
    """Copy real cases (images and every mask) into ``dest`` as a BUSI folder in ``layout``:

    * ``bundled``: ``CLASS/images/NAME.png`` and ``CLASS/masks/NAME_mask[_k].png``;
    * ``kaggle``:  ``CLASS/NAME.png`` and ``CLASS/NAME_mask[_k].png`` side by side.
    """
    if layout not in ("bundled", "kaggle"):
        raise ValueError(layout)
    for case_id in case_ids:
        image, masks = case_files(busi_root, case_id)
        label = case_id.split(" (")[0]
        image_dir = dest / label / "images" if layout == "bundled" else dest / label
        mask_dir = dest / label / "masks" if layout == "bundled" else dest / label
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, image_dir / image.name)
        for mask in masks:
            shutil.copyfile(mask, mask_dir / mask.name)
    return dest


@pytest.fixture(scope="session")
def busi_case_files(busi_root):
    """``busi_case_files(case_id)`` → (image, masks) of a case of the BUSI copy the tests use."""
    return lambda case_id: case_files(busi_root, case_id)


@pytest.fixture(scope="session")
def copy_busi_cases(busi_root):
    """``copy_busi_cases(dest, case_ids, layout="bundled")`` → a BUSI folder at ``dest`` with those real cases."""
    return lambda dest, case_ids, layout="bundled": copy_cases(busi_root, dest, case_ids, layout)


@pytest.fixture
def make_busi_copy(busi_root, tmp_path):
    """``make_busi_copy(case_ids, layout="bundled", name="busi")`` → a fresh BUSI folder under tmp_path."""

    def make(case_ids: list[str], layout: str = "bundled", name: str = "busi") -> Path:
        return copy_cases(busi_root, tmp_path / name, case_ids, layout)

    return make


@pytest.fixture
def top_level_slot():
    """``top_level_slot(at, matches)``: the index of the page's top-level element holding a node for which
    ``matches(node)`` is true. A fragment whose slot moves between reruns is drawn anew beside its stale
    copy, so pages keep their fragments' slots fixed."""

    def holds(node, matches) -> bool:
        return matches(node) or any(holds(child, matches) for child in getattr(node, "children", {}).values())

    def slot(at, matches) -> int | None:
        return next((index for index, child in at.main.children.items() if holds(child, matches)), None)

    return slot


@pytest.fixture
def retrain_page():
    """``retrain_page(session=None)``: the Retrain page under AppTest, signed in as ``session`` when given."""
    from streamlit.testing.v1 import AppTest

    def make(session: access.AdminSession | None = None):
        at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app_pages" / "retrain.py"), default_timeout=60)
        if session is not None:
            at.session_state["admin_session"] = session
        return at

    return make
