"""The app's pages, run by ``app.py`` through ``st.navigation``. The folder is not named ``pages/``, so
Streamlit never takes it for an old-style multipage app: a page opened by its address on a fresh server
goes through app.py like any other visit.
"""
from __future__ import annotations

import re


def md(text: object) -> str:
    """Escape text we did not write (file names, run names, messages quoting them) for Streamlit markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", str(text))
