"""Training: the shipped model's card, every run folder, per-epoch curves, evaluation charts and the
per-fold spread of cross-validation runs. Draws only; :mod:`imagemasknet.core.run_folder`,
:mod:`imagemasknet.app.tables` and :mod:`imagemasknet.app.charts` compute.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import md
from imagemasknet.app import charts, tables
from imagemasknet.core import run_folder
from imagemasknet.core.paths import runs_root
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.models.bundle import CARD, ModelStore
from imagemasknet.models.card import ModelCard, ModelCardError
from imagemasknet.ops import audit_log, jobs

PLOT_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
SPLIT_NAMES = {"train": "train", "heldout": "held-out (test fold)", "validation": "validation (inner)"}


def _stamp(root: Path) -> tuple:
    """Changes whenever a run folder gains, loses or rewrites a file (so live runs refresh)."""
    stamp = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in folder.iterdir():
            if file.suffix in (".json", ".txt", ".safetensors"):
                try:
                    info = file.stat()
                except OSError:
                    continue
                stamp.append((folder.name, file.name, info.st_size, info.st_mtime_ns))
    return tuple(stamp)


@st.cache_data(show_spinner="Reading run folders…", max_entries=8)
def load_runs(folder: str, root: str, stamp: tuple) -> list[run_folder.RunFolder]:
    return run_folder.scan_runs(folder, inside=root)


def highlighted(table: pd.DataFrame) -> "pd.io.formats.style.Styler":
    """Marks the malignant-sensitivity row."""
    def mark(row):
        chosen = row.get("metric") == tables.HIGHLIGHTED or row.get("cross-validation metric") == tables.HIGHLIGHTED
        return ["background-color: #FFF3D6; font-weight: 600" if chosen else ""] * len(row)

    return table.style.apply(mark, axis=1)


@st.cache_data(show_spinner=False, max_entries=8)
def load_card(path: str, mtime_ns: int) -> tuple[ModelCard | None, str | None]:
    try:
        return ModelCard.read(Path(path)), None
    except ModelCardError as error:
        return None, str(error)


st.title("Training")

# --- shipped model -----------------------------------------------------------------------------------
shipped_folder = ModelStore().shipped_folder()
card_path = shipped_folder / CARD
card, card_problem = load_card(str(card_path), card_path.stat().st_mtime_ns if card_path.exists() else 0)
with st.container(border=True, key="model_card"):
    if card is None:
        st.warning(f"No model card for the shipped model: {card_problem}")
    else:
        st.subheader(f"Shipped model: {card.name}" + (f" · version {card.version}" if card.version else ""))
        if card.provisional:
            st.info(card.note or "This model card is provisional.", icon=":material/info:")
        facts = tables.card_facts(card)
        if facts:
            st.markdown("  \n".join(f"**{k}:** {v}" for k, v in facts.items()))
        card_table = tables.card_rows(card)
        if card_table:
            st.markdown(f"**5-fold cross-validation on {md(tables.card_sources(card))}** (folds keep near-duplicates "
                        "and patients together; mean ± std over folds)")
            st.dataframe(highlighted(pd.DataFrame(card_table).rename(columns={"metric": "cross-validation metric"})),
                         hide_index=True, width="stretch")
        by_source = tables.card_source_rows(card)
        if by_source:
            st.markdown("**The same folds, per training source**")
            st.dataframe(pd.DataFrame(by_source), hide_index=True, width="stretch")
        protocol = tables.card_protocol_rows(card)
        external = tables.card_external_rows(card)
        if protocol:  # one under the other: side by side, their columns did not fit a 1280-px window
            st.markdown("**Study protocol** (tested on the images it trained on; optimistic, for comparison)")
            st.dataframe(pd.DataFrame(protocol).rename(columns={"metric": "study-protocol metric"}),
                         hide_index=True, width="stretch")
        if external:
            st.markdown("**External data** (never trained on)")
            st.dataframe(pd.DataFrame(external), hide_index=True, width="stretch")
        if card.intended_use:
            with st.expander("Intended use"):
                st.markdown(card.intended_use)
        if card.limitations:
            with st.expander("Limitations"):
                st.markdown("\n".join(f"- {item}" for item in card.limitations))

# --- the shipped model's own training curves (shipped beside its weights, so a fresh clone has them) -------
shipped_history = run_folder.shipped_history(shipped_folder)
if shipped_history:
    with st.expander(f"Training curves of the shipped model ({len(shipped_history)} epochs)", expanded=False):
        left, right = st.columns(2)
        histories = {f"{DEFAULT_MODEL} (shipped)": shipped_history}
        left.plotly_chart(charts.curves_figure(histories, "loss", ["train", "validation"]), config=PLOT_CONFIG, key="s_loss")
        right.plotly_chart(charts.curves_figure(histories, "accuracy", ["train", "validation"]), config=PLOT_CONFIG,
                           key="s_accuracy")
        st.caption(f"Trained on all of {md(tables.card_sources(card)) if card else 'its training data'} but a 10 % "
                   "validation split, which these curves also show; its test figures are the cross-validation's above.")

# --- audit log ---------------------------------------------------------------------------------------
try:
    jobs.log_endings()
except OSError as error:  # a read-only or full runs folder: the page still shows what it can read
    st.warning(f"The runs folder cannot be written ({error.strerror or error}), so runs that ended are not yet in "
               "the audit log; the Retrain page cannot launch or promote until it can.", icon=":material/warning:")
log_entries = audit_log.read()
with st.expander(f"Audit log: launches, cancels, finishes, failures, promotions, roll backs, sign-ins "
                 f"({len(log_entries.entries)})"):
    if log_entries.entries:
        actions = st.multiselect("Actions", audit_log.ACTIONS, key="t_audit_actions", placeholder="every action",
                                 help="Show only these actions: a flood of refused sign-ins never hides a promotion.")
        shown_entries = [e for e in log_entries.entries if not actions or e.get("action") in actions]
        st.dataframe(pd.DataFrame(audit_log.display_rows(shown_entries)), hide_index=True, width="stretch")
        st.caption(f"Newest first, from `{audit_log.log_path()}` (append-only). Model hashes are the first 12 hex "
                   "digits of the active weights' SHA-256 before and after each action.")
    else:
        st.caption(f"Nothing logged yet in `{audit_log.log_path()}`.")
    if log_entries.unreadable_lines:
        st.warning(f"{log_entries.unreadable_lines} line(s) of the log could not be read (a write cut off by a "
                   "crash); the other entries are intact.")

# --- results folder ----------------------------------------------------------------------------------
# Only folders under the server's results root ($IMAGEMASKNET_RUNS, default ./runs) are offered, by name:
# a visitor never types a path, so nothing outside the root is read or even tested for existence.
root = runs_root()
folders = run_folder.results_folders(root)
runs: list[run_folder.RunFolder] = []
if not folders:
    st.info("No training runs yet on this server. Train one with `imagemasknet train --preset lesion-effnet-lite0`, "
            "or from the Retrain page; its curves and evaluations then appear here.", icon=":material/info:")
else:
    chosen_folder = st.selectbox("Results folder", folders, key="t_folder",
                                 format_func=lambda n: "all runs (the results root)" if n == "" else n,
                                 help="The server's results folder and the sub-folders in it that hold run folders "
                                      "(set by the operator with IMAGEMASKNET_RUNS).")
    folder = run_folder.results_folder(root, chosen_folder)
    if folder is not None:
        try:
            runs = load_runs(str(folder), str(root), _stamp(folder))
        except OSError:
            st.warning("This results folder could not be read just now; try again.")
    if not runs:
        st.info("No run folders here yet. Train one with `imagemasknet train --preset lesion-effnet-lite0`, or from "
                "the Retrain page.", icon=":material/info:")

def show_runs(runs: list[run_folder.RunFolder]) -> None:
    """The runs table, their curves, and one run's evaluation and log."""
    by_name = {r.name: r for r in runs}
    st.subheader(f"Runs ({len(runs)})")
    st.dataframe(pd.DataFrame([tables.run_row(r) for r in runs]), hide_index=True, width="stretch",
                 column_config={"run": st.column_config.TextColumn(width="medium")})
    incomplete = [r for r in runs if r.problems or r.state != "finished"]
    for run in incomplete:
        what = "; ".join(run.problems) or f"state: {run.state}"
        shown = [part for part, present in (("config", bool(run.config)), (f"{run.epochs_done} epochs", bool(run.history)),
                                             ("metrics", bool(run.metrics))) if present]
        st.warning(f"**{run.name}** is incomplete ({run.state}): {what}. Showing what it has"
                   + (f": {', '.join(shown)}." if shown else " — nothing readable yet."), icon=":material/construction:")

    # --- curves -----------------------------------------------------------------------------------------
    st.subheader("Curves per epoch")
    with_history = [r.name for r in runs if r.history]
    if not with_history:
        st.info("No run has finished an epoch yet.")
    else:
        controls = st.columns([2.6, 1.7, 1.3])
        default = [n for n in with_history if n.endswith("fold0")][:3] or with_history[:2]
        chosen = controls[0].multiselect("Runs to compare", with_history, default=default, key="t_runs")
        splits = controls[1].multiselect("Splits", list(SPLIT_NAMES), default=["train", "heldout"], key="t_splits",
                                         format_func=SPLIT_NAMES.get)
        all_modes = sorted({m for n in chosen for m in by_name[n].modes}, key=lambda m: (m != "image", m))
        modes = controls[2].multiselect("Modes", all_modes, default=all_modes, key="t_modes",
                                        help="Inference modes: image only, or image + lesion mask.")
        histories = {n: by_name[n].history for n in chosen}
        if histories:
            loss_tab, scores_tab, extra_tab = st.tabs(["Loss & accuracy", "Precision, recall, F1", "AUC & lesion Dice"])
            with loss_tab:
                left, right = st.columns(2)
                left.plotly_chart(charts.curves_figure(histories, "loss", splits, modes), config=PLOT_CONFIG, key="c_loss")
                right.plotly_chart(charts.curves_figure(histories, "accuracy", splits, modes), config=PLOT_CONFIG,
                                   key="c_accuracy")
            with scores_tab:
                st.caption("Precision, recall and F1 are macro averages over the three classes (not recorded for training).")
                columns = st.columns(3)
                for column, metric in zip(columns, ("macro_precision", "macro_recall", "macro_f1")):
                    column.plotly_chart(charts.curves_figure(histories, metric, splits, modes, height=360), config=PLOT_CONFIG,
                                        key=f"c_{metric}")
            with extra_tab:
                left, right = st.columns(2)
                left.plotly_chart(charts.curves_figure(histories, "macro_auc", splits, modes), config=PLOT_CONFIG, key="c_auc")
                right.plotly_chart(charts.curves_figure(histories, "lesion_dice", splits, modes), config=PLOT_CONFIG,
                                   key="c_dice")

    # --- one run's evaluation ----------------------------------------------------------------------------
    st.subheader("Evaluation of a run")
    names = [r.name for r in runs]
    # Default: the first sound run evaluated on its own test fold, else the first with any evaluation; a damaged
    # run (its problems named above) is never picked for the visitor.
    sound = [n for n in names if not by_name[n].problems] or names
    first = next((n for n in sound if {"metrics-test", "metrics"} & set(by_name[n].metrics) and by_name[n].fold is not None),
                 next((n for n in sound if by_name[n].metrics), sound[0]))
    name = st.selectbox("Run", names, index=names.index(first), key="t_run")
    run = by_name[name]
    status = run.status
    st.caption(" · ".join(part for part in (
        f"model {run.arch}", f"state {run.state}",
        f"epoch {run.epochs_done}" + (f" of {run.epochs_total}" if run.epochs_total else ""),
        f"started {status['started']}" if status.get("started") else "",
        f"updated {status['updated']}" if status.get("updated") else "",
        f"fold {run.fold}" if run.fold is not None else "",
    ) if part))
    if run.problems:
        st.warning(f"This run folder is incomplete — it shows what it has. {'; '.join(run.problems)}.",
                   icon=":material/construction:")
    if not run.metrics:
        st.info(f"No evaluation yet. Make one with `imagemasknet evaluate --run {run.path}` "
                "(writes metrics.json to the run folder).")
    else:
        report_name = st.selectbox("Evaluation", sorted(run.metrics, key=lambda f: (f != "metrics-test", f)), key="t_report",
                                   format_func=lambda f: f"{f}.json — {run.metrics[f].get('evaluated_on', '')}")
        report = run.metrics[report_name]
        st.caption(f"{report.get('n', '?')} scans; 95 % bootstrap confidence intervals in brackets.")
        st.dataframe(pd.DataFrame(tables.metrics_wide(report)), hide_index=True)
        if per_source := tables.report_source_rows(report):
            st.markdown("**Per source**")
            st.dataframe(pd.DataFrame(per_source), hide_index=True, width="stretch")
        for mode, result in report.get("modes", {}).items():
            st.markdown(f"**Mode: {mode}**" + (f" — temperature {result['temperature']:.2f}"
                                               if isinstance(result.get("temperature"), (int, float)) else ""))
            left, middle, right = st.columns(3)
            if result.get("confusion"):
                left.plotly_chart(charts.confusion_figure(result["confusion"], title=f"Confusion matrix ({mode})"),
                                  config=PLOT_CONFIG, key=f"cm_{mode}")
            aucs = {c: tables.value_of(result.get("metrics", {}).get(f"auc_{c}")) for c in result.get("roc", {})}
            if result.get("roc"):
                middle.plotly_chart(charts.roc_figure(result["roc"], aucs, title=f"ROC, one class vs rest ({mode})"),
                                    config=PLOT_CONFIG, key=f"roc_{mode}")
            if result.get("reliability"):
                ece = tables.value_of(result.get("metrics", {}).get("ece"))
                right.plotly_chart(charts.reliability_figure(result["reliability"], f"Reliability ({mode})", ece),
                                   config=PLOT_CONFIG, key=f"rel_{mode}")
    log = run.log_tail(30)
    if log:
        with st.expander("Log (last 30 lines)"):
            st.code(log, language=None)


if runs:
    show_runs(runs)

# --- cross-validation spread -------------------------------------------------------------------------
groups = run_folder.cv_groups(runs)
card_folds = tables.card_fold_values(card)
if groups or card_folds:
    st.subheader("Cross-validation: per-fold spread")
    metric = st.selectbox("Metric", list(tables.METRIC_NAMES), key="t_cv_metric", format_func=tables.METRIC_NAMES.get)
    rows = [row for members in groups.values() for row in tables.fold_values(members, metric)]
    rows += tables.card_fold_values(card, metric)
    st.plotly_chart(charts.fold_spread_figure(rows, metric), config=PLOT_CONFIG, key="cv_spread")
    if rows:
        st.dataframe(pd.DataFrame(tables.spread_summary(rows)), hide_index=True)
        sources = sorted({r["source"] for r in rows})
        st.caption("Each point is one fold's test result; from " + ", ".join(sources) + ".")
