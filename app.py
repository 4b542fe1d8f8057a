"""ImageMaskNet web app: `streamlit run app.py`. Navigation, page config and the notices only."""
import streamlit as st

from imagemasknet.jobs import active_model_notice

st.set_page_config(page_title="ImageMaskNet", page_icon="🩺", layout="wide")

page = st.navigation([
    st.Page("pages/classify.py", title="Classify", icon=":material/biotech:", default=True),
    st.Page("pages/gallery.py", title="Gallery", icon=":material/photo_library:"),
    st.Page("pages/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
])
st.sidebar.warning("**Research use only — not a diagnosis.**", icon=":material/info:")
if notice := active_model_notice():  # a retrained model replaces the shipped one: every page says so
    st.warning(notice, icon=":material/published_with_changes:")
page.run()
