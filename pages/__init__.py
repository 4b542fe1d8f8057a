"""The app's pages. ``app.py`` runs them through ``st.navigation``; each page calls :func:`through_app` first."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

APP = Path(__file__).resolve().parent.parent / "app.py"


def through_app() -> None:
    """Until ``st.navigation`` has run once in a server, Streamlit takes a ``pages/`` folder beside the
    entry script for an old-style multipage app: a page opened by its address right after a restart runs
    alone, without app.py's navigation, page settings and notice. Run app.py instead (its navigation
    picks this same page from the address, and from then on the server uses it) and stop the bare run."""
    if getattr(PagesManager, "uses_pages_directory", False):
        runpy.run_path(str(APP))
        st.stop()


def md(text: object) -> str:
    """Escape text we did not write (file names, run names, messages quoting them) for Streamlit markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", str(text))
