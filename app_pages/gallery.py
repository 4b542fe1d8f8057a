"""Gallery: browse the bundled training sources (BUSI, BUS-BRA's training half) with their masks, folds, audit
flags and the shipped model's results.

Draws only; everything it shows is computed in :mod:`imagemasknet.app.gallery`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import md
from imagemasknet.app import gallery as g
from imagemasknet.app.charts import probability_chart
from imagemasknet.core.files import file_sha256
from imagemasknet.data.dataset import CLASSES, DatasetNotFoundError, listing_fingerprint, load_arrays
from imagemasknet.data.decode import read_case_mask
from imagemasknet.data.scans import ScanError, read_scan
from imagemasknet.data.sources import SOURCES
from imagemasknet.data.splits import SplitError, load_folds, split_file_for
from imagemasknet.evaluation.decision import LOW_CONFIDENCE_BELOW
from imagemasknet.inference.explain import heatmap_overlay
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models.bundle import BundleError, ModelStore
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.models.weights import WeightsError

MODE_TEXT = {"image": "scan only", "mask": "scan + reference mask"}
GRID_TILE_HEIGHT = 300  # px: every tile alike, whatever its badges (a 4:3 thumbnail and up to three lines)
ORDER_TEXT = {"dataset": "dataset order", "confidence": "least confident first", "wrong first": "wrong first"}


# --- cached data -----------------------------------------------------------------------------------


def _data_key(root: Path) -> str:
    """Changes when files are added to or removed from the class folders, or the cache moves."""
    parts = [os.environ.get("IMAGEMASKNET_CACHE", "")]
    for folder in sorted([root, *root.glob("*"), *root.glob("*/*")]):
        if folder.is_dir():
            parts.append(f"{folder.name}:{folder.stat().st_mtime_ns}")
    return "|".join(parts)


@st.cache_resource(show_spinner="Indexing and decoding the scans (cached after the first time)…", max_entries=4)
def dataset(source: str, key: str):
    busi = SOURCES[source].load()
    arrays = load_arrays(busi, 256)  # drops unreadable scans from busi.cases too
    return busi, arrays, {i: n for n, i in enumerate(arrays.ids)}, listing_fingerprint(busi), g.aspects(busi)


@st.cache_data(show_spinner=False, max_entries=4)
def out_of_fold(source: str, key: str, oof_mtime: int):
    """The shipped model's cross-validation predictions for the scans of this copy that it judged."""
    return g.out_of_fold(ModelStore().shipped().out_of_fold, dataset(source, key)[0])


@st.cache_resource(show_spinner="Loading the shipped model…", max_entries=2)
def predictor(weights_sha: str) -> Predictor:
    return Predictor.shipped(DEFAULT_MODEL)


@st.cache_data(show_spinner=False, max_entries=8)
def stored_predictions(path: str, mtime_ns: int, source: str, key: str) -> dict | None:
    return g.cached_predictions(Path(path), dataset(source, key)[1].ids)


@st.cache_data(show_spinner=False, max_entries=4)
def duplicates(source: str, key: str, audit_mtime: int) -> g.DuplicateInfo:
    return g.duplicate_info(dataset(source, key)[0])


@st.cache_data(show_spinner=False)
def folds(source: str) -> dict[str, int]:
    try:
        return g.fold_of(load_folds(split_file_for(source)))
    except SplitError:
        return {}


@st.cache_data(show_spinner=False, max_entries=4000)
def thumb(source: str, key: str, image_id: str, style: str) -> str:
    """A thumbnail as an inline data URI (no extra request per tile)."""
    _, arrays, index, _, aspect = dataset(source, key)
    return g.data_uri(g.thumbnail_bytes(arrays, image_id, style, index=index, aspect=aspect.get(image_id, 1.0)))


@st.cache_data(show_spinner="Drawing the case…", max_entries=32)
def case_view(image_path: str, mask_paths: tuple[str, ...], weights_sha: str | None, mode: str):
    """The scan at its own size, its merged reference mask, and (with a model) that one model's prediction,
    Grad-CAM of its answer and lesion outline."""
    scan = read_scan(Path(image_path))
    mask = read_case_mask(tuple(Path(p) for p in mask_paths), scan.pixels.shape)
    prediction = heat = None
    if weights_sha is not None:
        model = predictor(weights_sha)
        given = mask if mode == "mask" else None
        prediction = model.predict(scan, given)
        heat = model.grad_cam(scan, prediction.predicted_class, given)
    return scan.rgb, mask, prediction, heat


# --- page ------------------------------------------------------------------------------------------

st.title("Gallery")

source = st.selectbox("Data set", list(SOURCES), key="g_source", format_func=lambda n: SOURCES[n].title,
                      help="The data sets the default model trains on, bundled with the project.")
try:
    root = SOURCES[source].locate()
    key = _data_key(root)
    busi, arrays, index, fingerprint, _ = dataset(source, key)
except DatasetNotFoundError as error:
    st.error(f"**The data set was not found.**\n\n{error}", icon=":material/folder_off:")
    st.markdown(
        "A clone of the project carries both data sets in `data/`. Restore them with `git checkout -- data`, or, for "
        "BUSI, set the environment variable `IMAGEMASKNET_DATA` to a copy of `Dataset_BUSI_with_GT`; then reload "
        "this page."
    )
    st.stop()

cases = busi.by_id()
st.caption(f"{len(busi.cases)} scans from `{root}` ({busi.layout} layout). Reference masks in green; "
           "folds are the committed 5-fold split.")
if busi.report:
    with st.expander(f"{len(busi.report.problems)} problems while loading the data"):
        st.dataframe(pd.DataFrame([p.__dict__ for p in busi.report.problems]), hide_index=True)

# The marks: each scan's out-of-fold prediction from the shipped model's cross-validation when it ships them
# (a test: the fold model never saw the scan); otherwise the shipped model itself, which trained on most of
# these scans, and the page says so.
model, weights_sha, predictions = None, None, {}
try:
    bundle = ModelStore().shipped()
    weights_sha = file_sha256(bundle.weights)
    model = predictor(weights_sha)
except (OSError, WeightsError, BundleError) as error:
    weights_sha = None
    st.warning(f"No shipped model to show predictions with ({error}); the model filters are off.",
               icon=":material/warning:")
oof_file = bundle.out_of_fold if model else None
cross_validated = out_of_fold(source, key, oof_file.stat().st_mtime_ns) if oof_file else None

modes = list(model.spec.modes) if model else []
top = st.columns([1, 1, 1, 1.2])
fill_masks = top[0].toggle("Fill the masks", key="g_fill", help="Off: the mask's outline; on: a tinted area.")
style = "filled" if fill_masks else "outline"
mode = top[1].selectbox("Model input", modes or ["image"], key="g_mode", format_func=MODE_TEXT.get,
                        disabled=len(modes) < 2, help="What the model was given when it classified each scan.")
order = top[2].selectbox("Order", list(ORDER_TEXT), key="g_order", format_func=ORDER_TEXT.get)

progress_slot = st.empty()  # on every run, so the first run's progress bar does not move what follows
if cross_validated:
    predictions = cross_validated.get(mode, {})
    st.caption(f"✓/✗ marks: **out-of-fold** predictions of {DEFAULT_MODEL}'s 5-fold cross-validation; each scan was "
               f"judged by the fold model that never trained on it ({len(predictions)} of {len(busi.cases)} scans). "
               "The case view's chart, Grad-CAM and lesion come from the shipped model, which trained on these scans.")
elif model is not None:
    temperature = float(model.temperatures.get(mode, 1.0))
    path = g.predictions_path(weights_sha, fingerprint, mode, temperature)
    stored = stored_predictions(str(path), path.stat().st_mtime_ns, source, key) if path.exists() else None
    if stored is None:
        bar = progress_slot.progress(0.0, text=f"Running the shipped model over all {len(arrays.ids)} scans "
                                               "(once; the results are cached on disk)…")
        g.predict_all(busi, arrays, model, mode,
                      progress=lambda done, total: bar.progress(done / total, text=f"Classified {done} of {total} scans…"))
        progress_slot.empty()
        stored = stored_predictions(str(path), path.stat().st_mtime_ns, source, key)
    predictions = stored or {}
    st.warning(f"✓/✗ marks: the shipped {DEFAULT_MODEL}, which **trained on most of these scans**, so they are not a "
               "test (no out-of-fold predictions ship with this model or match this copy of the data).",
               icon=":material/school:")

audit_file = g.audit_path(busi)
dups = duplicates(source, key, audit_file.stat().st_mtime_ns if audit_file.exists() else 0)
fold_index = folds(source)
rows = g.case_rows(busi, fold_index, dups, predictions)
by_id = {r.id: r for r in rows}

# --- audit summary ---
with st.expander(f"Audit summary — {len(dups.groups)} near-duplicate groups, {len(dups.conflicts)} label conflicts"):
    in_groups = sum(len(ids) for ids in dups.groups.values())
    st.markdown(f"**{len(dups.groups)}** near-duplicate groups holding **{in_groups}** scans "
                f"(**{in_groups - len(dups.groups)}** redundant copies); **{len(dups.conflicts)}** groups carry "
                "more than one label (label conflicts).")
    st.dataframe(pd.DataFrame(g.audit_summary(busi, dups, arrays)), hide_index=True)
    st.caption(f"Near-duplicate groups from {g.SOURCE_TEXT[dups.source]}.")
    if dups.groups:
        st.dataframe(pd.DataFrame(dups.group_table()), hide_index=True, height=220,
                     column_config={"label conflict": st.column_config.CheckboxColumn()})
    if dups.source != "audit":
        if st.button("Run the near-duplicate audit on this copy",
                     help="Compares every pair of scans (about 13 s of CPU on BUSI). The result is cached for every visitor."):
            with st.spinner("Auditing… (cached after this)"):
                result = g.run_audit(busi, arrays)
            if result is None:
                st.info("Another visitor's audit of this data is running; its result appears here when it ends.")
            else:
                duplicates.clear()
                st.rerun()


# --- detail view ---
def open_case(image_id: str) -> None:
    st.session_state["g_case"] = image_id


def close_case() -> None:
    st.session_state.pop("g_case", None)


def tile_text(row: g.CaseRow) -> str:
    fold = f" · fold {row.fold}" if row.fold is not None else ""
    lines = [f"**{row.id}**{fold}"]
    if row.predicted is not None:
        verdict = f"✓ {row.predicted} {row.confidence:.0%}" if row.correct else f"✗ {row.predicted} {row.confidence:.0%}"
        lines.append(f":{'green' if row.correct else 'red'}[{verdict}]")
    badges = []
    if row.low_confidence:
        badges.append(":orange-badge[low confidence]")
    if row.group:
        badges.append(f":violet-badge[dup {row.group}]")
    if row.conflict:
        badges.append(":red-badge[label conflict]")
    if badges:
        lines.append(" ".join(badges))
    return "  \n".join(lines)


@st.dialog("Case", width="large", on_dismiss=close_case)
def show_case(image_id: str) -> None:
    """One scan in a dialog, in view wherever its tile was: the reference mask, Grad-CAM and the model's lesion,
    its probabilities and facts, and the other members of its near-duplicate group."""
    row, case = by_id[image_id], cases[image_id]
    head = st.columns([5, 1])
    head[0].subheader(f"{row.id} — {row.label}")
    if head[1].button("Close", icon=":material/close:", key="close_case", width="stretch"):
        close_case()
        st.rerun()
    try:
        rgb, mask, prediction, heat = case_view(str(case.image_path), tuple(map(str, case.mask_paths)),
                                                weights_sha if model is not None else None, mode)
    except ScanError as error:
        st.error(f"Cannot read {case.image_path.name}: {error}")
        return
    left, middle, right = st.columns([1, 1, 1])
    left.image(g.overlay(rgb, mask, style), width="stretch",
               caption=f"Reference mask ({style}); {rgb.shape[1]}×{rgb.shape[0]} px")
    if prediction is not None:
        cam = heatmap_overlay(rgb, heat)
        if prediction.lesion_mask is not None and prediction.predicted_class != "normal":
            cam = g.overlay(cam, prediction.lesion_mask, "outline", g.MODEL_COLOUR)
        middle.image(cam, width="stretch",
                     caption=f"The shipped model's Grad-CAM for its answer '{prediction.predicted_class}' and its "
                             "lesion outline (orange).")
    else:
        middle.info("No model, so no Grad-CAM.")
    with right:
        if prediction is not None:
            st.markdown(f"**The shipped model:** {prediction.predicted_class} ({prediction.confidence:.0%}). It "
                        "trained on this scan, so this is not a test; the chart, Grad-CAM and outline are all its.")
            st.plotly_chart(probability_chart(prediction), config={"displayModeBar": False}, key="case_probabilities")
        if row.probabilities:
            source_text = ("out of fold: the fold model that never trained on it" if cross_validated
                           else "the shipped model, trained on it")
            st.markdown(f"**Tile mark ({source_text}):** {row.predicted} ({row.confidence:.0%}) — "
                        + (":green[correct]" if row.correct else ":red[wrong]")
                        + (" · :orange[low confidence]" if row.low_confidence else ""))
        facts = {
            "file": case.image_path.name,
            "label": row.label,
            "fold": "—" if row.fold is None else str(row.fold),
            "near-duplicate group": row.group or "none",
            "label conflict": "yes" if row.conflict else "no",
            "mask files": str(len(case.mask_paths)),
        }
        st.markdown("  \n".join(f"**{name}:** {md(value)}" for name, value in facts.items()))
    members = [i for i in dups.members(row.id) if i != row.id and i in by_id]
    if members:
        st.markdown(f"**Other members of near-duplicate group {row.group}**"
                    + (" — :red[the group holds more than one label]" if row.conflict else ""))
        strip = st.columns(max(len(members), 4))
        for column, member in zip(strip, members):
            with column:
                st.image(thumb(source, key, member, style), width="stretch")
                st.markdown(tile_text(by_id[member]))
                if st.button("Open", key=f"open_dup_{member}"):
                    open_case(member)
                    st.rerun()




# A case opens in a dialog (in view wherever its tile was): from its tile, from a near-duplicate in another
# case, or from a link with ?case=NAME (read once). It stays open until closed, and never outlives a visit to
# another page (app.py records the page each run shows).
if st.session_state.get("page_before") != st.session_state.get("page_now"):
    close_case()
if (linked := st.query_params.get("case")) is not None:
    st.query_params.pop("case", None)
    open_case(linked)
if (opened := st.session_state.get("g_case")) in cases:
    show_case(opened)

# --- filters, grid and pages ---
@st.fragment
def browse(rows: list[g.CaseRow], order: str, style: str, with_predictions: bool, source: str, key: str) -> None:
    """Filters, the grid and its pager. A fragment: paging and filtering rerun only this part."""
    fold_values = sorted({r.fold for r in rows if r.fold is not None})
    row1 = st.columns([1.2, 1, 1.2, 1.2, 1.2])
    chosen_classes = row1[0].multiselect("Class", list(CLASSES), key="g_classes", placeholder="all classes")
    chosen_folds = row1[1].multiselect("Fold", fold_values, key="g_folds", placeholder="all folds")
    chosen_flags = row1[2].multiselect("Audit flags", list(g.FLAGS), key="g_flags", placeholder="any",
                                       help="Keeps scans that have every chosen flag.")
    chosen_results = row1[3].multiselect("Model's result", list(g.RESULTS), key="g_results", placeholder="any",
                                         disabled=not with_predictions,
                                         help=f"Keeps scans with any chosen result; low confidence: top probability "
                                              f"under {LOW_CONFIDENCE_BELOW:.0%} (the rule every page, report and record uses).")
    query = row1[4].text_input("Search file name", key="g_query", placeholder="e.g. malignant (12)")

    shown = g.sort_rows(g.filter_rows(rows, chosen_classes, chosen_folds, chosen_flags, chosen_results, query), order)
    pages = g.page_count(len(shown))
    # The pager's key follows the filters, so a new filter starts again at page 1.
    signature = hashlib.sha1(repr((chosen_classes, chosen_folds, chosen_flags, chosen_results, query, order)).encode())

    st.markdown(f"**{len(shown)} of {len(rows)} scans** match")
    grid_slot = st.container(key="gallery_grid")
    with st.container(horizontal_alignment="center"):
        page = st.pagination(pages, key=f"g_page_{signature.hexdigest()[:10]}")

    with grid_slot:
        if not shown:
            st.info("No scan matches these filters.")
        grid = st.grid(6, gap="small")
        for row in g.page_of(shown, page):
            with grid.container(border=True, height=GRID_TILE_HEIGHT):
                st.image(thumb(source, key, row.id, style), width="stretch")
                # Above the text: however many badges a tile carries, the button is never cut off.
                if st.button("Open", key=f"open_{row.id}", icon=":material/zoom_in:", type="tertiary"):
                    open_case(row.id)
                    st.rerun(scope="app")  # the case view sits outside this fragment
                st.markdown(tile_text(row))


browse(rows, order, style, bool(predictions), source, key)
