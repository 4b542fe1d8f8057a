"""ImageMaskNet web app: `streamlit run app.py`. Navigation, page config and the notices only."""
import streamlit as st

from imagemasknet.core.processes import limit_memory_arenas
from imagemasknet.ops.promotion import active_model_notice

limit_memory_arenas()  # the server's sessions run in threads: their freed memory is shared, not kept per thread

st.set_page_config(page_title="ImageMaskNet", page_icon="🩺", layout="wide")

page = st.navigation([
    st.Page("app_pages/classify.py", title="Classify", icon=":material/biotech:", default=True),
    st.Page("app_pages/gallery.py", title="Gallery", icon=":material/photo_library:"),
    st.Page("app_pages/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("app_pages/retrain.py", title="Retrain", icon=":material/model_training:"),
])
# Which page this run shows and which the last one did, so a page can tell a visit from a rerun.
st.session_state["page_before"], st.session_state["page_now"] = st.session_state.get("page_now"), page.url_path
st.sidebar.warning("**Research use only — not a diagnosis.**", icon=":material/info:")
if notice := active_model_notice():  # a retrained model replaces the shipped one: every page says so
    st.warning(notice, icon=":material/published_with_changes:")
page.run()
