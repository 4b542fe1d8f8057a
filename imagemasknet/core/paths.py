"""Where the project's files are: every folder it reads or writes, and the environment variables that move
them. Nothing here imports PyTorch.

* run folders: ``$IMAGEMASKNET_RUNS``, default ``./runs``; the promoted model is its ``active`` link
  (:class:`imagemasknet.models.bundle.ModelStore` resolves it);
* decoded-scan and index caches: ``$IMAGEMASKNET_CACHE``, default ``~/.cache/imagemasknet``;
* BUSI: ``$IMAGEMASKNET_DATA``, else the copy bundled in the repository, else ``./data/…``, else the shared copy
  (:func:`imagemasknet.data.busi.find_data_root` tries them in that order); the other training sources: the
  bundled copy, else the shared one (:mod:`imagemasknet.data.sources`);
* the shipped model bundles: inside the installed package, else the checkout's ``weights/``;
* the administrator's password hash: ``$IMAGEMASKNET_SECRETS``, default ``./.streamlit/secrets.toml``.
"""
from __future__ import annotations

import os
from pathlib import Path

RUNS_ENV, CACHE_ENV, DATA_ENV = "IMAGEMASKNET_RUNS", "IMAGEMASKNET_CACHE", "IMAGEMASKNET_DATA"
SECRETS_ENV = "IMAGEMASKNET_SECRETS"
PACKAGE = Path(__file__).resolve().parent.parent  # this file is imagemasknet/core/paths.py
REPOSITORY = PACKAGE.parent
# The copy that ships with the project (data/busi/ in the repository, with its checksums.sha256).
DATA_DIR = REPOSITORY / "data"  # the bundled training sources (data/busi/, data/busbra-train/)
SHARED_DATASETS = REPOSITORY.parent / "shared" / "datasets"  # a read-only copy beside the checkout, when there is one
BUNDLED_COPY = DATA_DIR / "busi" / "Dataset_BUSI_with_GT"
LOCAL_COPY = Path("data") / "Dataset_BUSI_with_GT"
SHARED_COPY = SHARED_DATASETS / "busi" / "Dataset_BUSI_with_GT"
SPLITS_DIR = REPOSITORY / "splits"  # the committed duplicate-aware folds
ACTIVE_NAME = "active"  # the runs folder's link to the promoted model


def _weights_dir() -> Path:
    """``pip install .`` maps the repository's ``weights/`` to ``imagemasknet/weights/`` (pyproject.toml)."""
    installed = PACKAGE / "weights"
    return installed if installed.is_dir() else REPOSITORY / "weights"


WEIGHTS_DIR = _weights_dir()


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "imagemasknet"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def secrets_path() -> Path:
    """Where `imagemasknet admin set-password` writes the administrator's hash and the app reads it:
    ``$IMAGEMASKNET_SECRETS``, else ``./.streamlit/secrets.toml`` (Streamlit's own secrets file)."""
    override = os.environ.get(SECRETS_ENV)
    return Path(override) if override else Path.cwd() / ".streamlit" / "secrets.toml"


def data_override() -> Path | None:
    """The BUSI folder ``$IMAGEMASKNET_DATA`` names, if it is set."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None
