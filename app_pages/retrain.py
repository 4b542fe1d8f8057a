"""Retrain: launch a training job from the TrainConfig form, watch it live, cancel it, and promote a
finished run to the active model (or roll back). Draws only; :mod:`imagemasknet.ops.jobs` does the work,
and the job runs as its own process, so it carries on when the browser closes.
"""
from __future__ import annotations

import math
import secrets

import pandas as pd
import streamlit as st

from app_pages import md
from imagemasknet.app import charts, tables
from imagemasknet.core.paths import runs_root
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.models.bundle import ModelStore
from imagemasknet.ops import access, jobs, promotion, retrain_form, train_lock
from imagemasknet.training.config import PRESETS

PLOT_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
NO_PRESET = "(defaults)"
STATE_TEXT = {
    "starting": ":material/hourglass_top: starting — loading the data set",
    "running": ":material/play_circle: running",
    "cancelling": ":material/stop_circle: cancelling…",
    "finished": ":material/check_circle: finished",
    "failed": ":material/error: failed",
    "cancelled": ":material/cancel: cancelled",
    "crashed": ":material/heart_broken: crashed — the training process is gone",
    "unknown": ":material/help: unknown",
}




def flash(kind: str, message: str) -> None:
    """A message shown once, after the rerun that follows an action."""
    st.session_state["retrain_flash"] = (kind, message)


def models_changed() -> None:
    """A promotion or roll back: drop every cached Predictor so the app loads the new active model."""
    st.cache_resource.clear()


# --- the form, drawn from TrainConfig ----------------------------------------------------------------


def widget(field: retrain_form.FormField, value, key: str):
    label, help_text = field.label, field.help or None
    if field.kind == "choice":
        options = list(field.choices)
        return st.selectbox(label, options, index=options.index(value) if value in options else 0, help=help_text,
                            key=key)
    if field.kind == "fold":
        options = list(field.choices)
        return st.selectbox(label, options, index=options.index(value) if value in options else 0, key=key,
                            format_func=lambda k: "all data (no test fold)" if k is None else f"fold {k} held out",
                            help=help_text)
    if field.kind == "bool":
        return st.checkbox(label, value=bool(value), help=help_text, key=key)
    if field.kind == "limit":
        chosen = st.number_input(label, min_value=0, max_value=int(field.max) if field.max else None,
                                 value=int(value or 0), step=1, key=key,
                                 help=f"{help_text} — 0 uses every scan")
        return int(chosen) or None
    if field.kind == "int":
        return int(st.number_input(label, min_value=int(field.min) if field.min is not None else None,
                                   max_value=int(field.max) if field.max is not None else None, value=int(value),
                                   step=1, help=help_text, key=key))
    step = 10 ** round(math.log10(value)) / 10 if value else 0.01
    return float(st.number_input(label, min_value=field.min, max_value=field.max, value=float(value),
                                 step=float(step), format="%g", help=help_text, key=key))


def admin() -> access.AdminSession | None:
    """The signed-in administrator's session (checked by :func:`admin_panel` at the top of each run)."""
    return st.session_state.get("admin_session")


def admin_panel() -> None:
    """Sign in or out, or say why this page is read-only; a session that is no longer valid is dropped,
    so :func:`admin` returns only a valid one for the rest of the run."""
    if not access.is_configured():
        st.info("**Read-only.** No administrator password is configured on this server, so nobody can launch "
                "training, promote or roll back here. To enable it, run `imagemasknet admin set-password` in the "
                f"app's folder (or set `{access.HASH_ENV}`) and restart the app.", icon=":material/lock:")
        st.session_state.pop("admin_session", None)
        return
    if admin() is not None:
        try:
            access.require_admin(admin())
        except (access.AccessError, access.ConfigError) as error:
            del st.session_state["admin_session"]
            st.warning(str(error), icon=":material/lock_clock:")
    if admin() is not None:
        left, right = st.columns([4, 1])
        left.success("Signed in as administrator: you can launch, cancel, promote and roll back.",
                     icon=":material/admin_panel_settings:")
        if right.button("Sign out", icon=":material/logout:", key="admin_sign_out"):
            del st.session_state["admin_session"]
            st.rerun()
        return
    with st.form("admin_sign_in", border=True):
        st.markdown("**Administrator sign-in** — everyone can watch runs; launching, cancelling, promoting and "
                    "rolling back need the administrator password.")
        password = st.text_input("Administrator password", type="password", max_chars=access.MAX_PASSWORD_LENGTH)
        submitted = st.form_submit_button("Sign in", icon=":material/login:")
    if submitted:
        client = access.Client.from_request(st.session_state.setdefault("client_id", secrets.token_hex(8)),
                                            st.context.ip_address, st.context.headers.get("X-Forwarded-For"))
        try:
            st.session_state["admin_session"] = access.login(password, client=client)
        except (access.AccessError, access.ConfigError) as error:
            st.error(str(error), icon=":material/block:")
        else:
            st.rerun()


def launch_form(running: jobs.Job | None) -> None:
    st.subheader("Launch")
    if admin() is None:
        st.caption("Sign in as administrator to launch a training run.")
        return
    preset = st.selectbox("Preset", [NO_PRESET, *PRESETS], index=1 + list(PRESETS).index(DEFAULT_MODEL)
                          if DEFAULT_MODEL in PRESETS else 0, key="retrain_preset",
                          help="fills the form with a preset's settings (the same presets as `imagemasknet train --preset`)")
    preset_name = None if preset == NO_PRESET else preset
    defaults = retrain_form.form_defaults(preset_name)
    fields = retrain_form.form_fields()
    with st.form("retrain_form", border=True):
        values = {}
        columns = st.columns(3)
        for n, field in enumerate(fields):
            with columns[n % 3]:
                values[field.name] = widget(field, defaults[field.name], key=f"retrain:{preset}:{field.name}")
        submitted = st.form_submit_button("Start training", type="primary", disabled=running is not None,
                                          icon=":material/play_arrow:")
    if running is not None:
        st.info(f"A training job is already running: **{md(running.name)}** (process {running.pid}). One job runs "
                "at a time on this machine; Start is available again when it ends or is cancelled.",
                icon=":material/info:")
    if not submitted:
        return
    try:
        config = retrain_form.config_from_form(values, preset_name)
        started = jobs.start(config, preset_name, admin=admin())
    except train_lock.JobRunningError as error:
        st.warning(str(error), icon=":material/block:")
    except (ValueError, FileNotFoundError, jobs.JobError, OSError, access.AccessError) as error:
        st.error(f"Not started: {error}", icon=":material/error:")
    else:
        st.session_state["retrain_watch"] = started.name
        flash("success", f"Started {started.name}.")
        st.rerun()


# --- the active model --------------------------------------------------------------------------------


def promoted_card():
    """The promoted bundle's card, or None while the shipped model is active."""
    promoted = ModelStore().promoted()
    return promoted.card if promoted else None


def active_model() -> None:
    store = ModelStore()
    card = promoted_card()
    previous = store.previous().card if card and store.previous() else None
    with st.container(border=True, key="retrain_active"):
        if card:
            st.markdown(f"**Active model:** `{card.version}` ({md(card.arch)}), promoted {md(card.promoted_at or '?')}"
                        f" — {md(card.trained_on)}")
        else:
            st.markdown(f"**Active model:** the shipped `{DEFAULT_MODEL}` (cross-validated; see the Training page)")
        if card and admin() is not None:
            label = f"Roll back to {previous.version}" if previous else "Roll back to the shipped model"
            if st.button(label, icon=":material/undo:", key="retrain_rollback"):
                try:
                    restored = promotion.rollback(admin=admin())
                except (jobs.JobError, access.AccessError) as error:
                    st.error(str(error))
                else:
                    models_changed()
                    flash("success", f"Rolled back: {restored.version if restored else 'the shipped model'} is the "
                                     "active model again.")
                    st.rerun()


# --- watching a run ----------------------------------------------------------------------------------


def finished_panel(job: jobs.Job) -> None:
    card = promoted_card()
    rows = promotion.comparison(job.name)
    active_title = f"promoted run {card.version}" if card else f"shipped {DEFAULT_MODEL} (cross-validation mean)"
    if rows:
        table = pd.DataFrame(rows).rename(columns={"active": "active model", "run": "this run"})
        st.markdown(f"**Held-out metrics** — this run beside the active model ({md(active_title)})")
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if c not in ("metric", "mode")})
        st.caption("The shipped model's numbers are 5-fold cross-validation means on all of BUSI; a run's are its last "
                   "epoch on its own held-out fold (a subset when `limit` was set) or its evaluation, so small "
                   "differences are noise.")
    if card and card.version == job.name:
        st.success(f"{job.name} is the active model.", icon=":material/verified:")
        return
    if admin() is None:
        st.caption("An administrator can promote this run to the active model.")
        return
    if st.button("Promote to active model…", icon=":material/upgrade:", key=f"promote:{job.name}"):
        st.session_state["retrain_promoting"] = job.name
    if st.session_state.get("retrain_promoting") == job.name:  # open until confirmed, cancelled or dismissed
        confirm_promotion(job.name)


def _promotion_closed() -> None:
    st.session_state.pop("retrain_promoting", None)


@st.dialog("Promote to the active model?", width="large", on_dismiss=_promotion_closed)
def confirm_promotion(name: str) -> None:
    """The candidate beside the active model, what speaks against it, and an explicit confirmation."""
    card = promoted_card()
    st.markdown(f"**{md(name)}** would replace the active model, "
                f"{md(card.version) if card else 'the shipped ' + md(DEFAULT_MODEL)}, for every user of this app.")
    rows = promotion.comparison(name)
    if rows:
        table = pd.DataFrame(rows).rename(columns={"active": "active model", "run": "this run"})
        table["metric"] = table["metric"].map(tables.plain)
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(format="%.3f") for c in ("active model", "this run", "difference")})
    concerns = promotion.promotion_concerns(name)
    reason = ""
    for concern in concerns:
        st.warning(f"Not recommended: {md(concern)}.", icon=":material/warning:")
    if concerns:
        reason = st.text_input("Reason for promoting it anyway (recorded in the audit log)", key=f"override:{name}",
                               max_chars=300)
    ready = not concerns or bool(reason.strip())
    left, right = st.columns(2)
    if left.button("Promote", type="primary", disabled=not ready, icon=":material/upgrade:", key=f"confirm:{name}"):
        try:
            promotion.promote(name, admin=admin(), override=reason or None)
        except (jobs.JobError, access.AccessError) as error:
            st.error(str(error), icon=":material/error:")
        else:
            _promotion_closed()
            models_changed()
            flash("success", f"Promoted: {name} is now the active model (the previous one is kept for roll back).")
            st.rerun()
    if right.button("Cancel", key=f"cancel-promotion:{name}"):
        _promotion_closed()
        st.rerun()


@st.fragment(run_every=2)
def watch() -> None:
    st.subheader("Runs")
    try:
        jobs.log_endings()
    except OSError as error:  # a read-only or full runs folder: watching still works, changing does not
        st.warning(f"The runs folder {md(runs_root())} cannot be written ({md(error.strerror or error)}): no run "
                   "can be launched, cancelled or promoted here until it can.", icon=":material/warning:")
    running = jobs.current_job()
    recent = jobs.recent_jobs()
    names = [j.name for j in recent]
    if running is not None and running.name not in names:
        names.insert(0, running.name)
    if not names:
        st.caption("No training runs yet. Start one above." if admin() is not None else
                   "No training runs yet; only an administrator can start one.")
        return
    chosen = st.session_state.get("retrain_watch")
    if running is not None and st.session_state.get("retrain_seen_running") != running.name:
        chosen = running.name  # a job started elsewhere (another tab, a reload): follow it
        st.session_state["retrain_seen_running"] = running.name
    if chosen not in names:
        chosen = running.name if running is not None else names[0]
    st.session_state["retrain_select"] = chosen
    st.selectbox("Run", names, key="retrain_select", on_change=_select_changed)
    job = jobs.job(chosen)
    state = job.state
    was_active = st.session_state.get("retrain_active_state", {}).get(job.name)
    st.session_state.setdefault("retrain_active_state", {})[job.name] = state in jobs.ACTIVE_STATES

    with st.container(border=True, key="retrain_run"):
        st.markdown(f"**{md(job.name)}** — {STATE_TEXT.get(state, state)}")
        progress = job.progress
        st.progress(progress.fraction, text=progress.text)
        if state in ("starting", "running") and admin() is not None:
            if st.button("Cancel", icon=":material/stop:", key=f"cancel:{job.name}"):
                stop(job, force=False)
        elif state == "cancelling" and admin() is not None:
            if st.button("Force stop", icon=":material/dangerous:", key=f"kill:{job.name}",
                         help="SIGKILL: stops at once; the run folder keeps its last complete files"):
                stop(job, force=True)
        history = job.history
        if history:
            left, right = st.columns(2)
            left.plotly_chart(charts.curves_figure({job.name: history}, "loss", height=320), config=PLOT_CONFIG,
                              key=f"loss:{job.name}:{len(history)}")
            right.plotly_chart(charts.curves_figure({job.name: history}, "accuracy", height=320), config=PLOT_CONFIG,
                               key=f"acc:{job.name}:{len(history)}")
        elif state in jobs.ACTIVE_STATES:
            st.caption("Curves appear after the first epoch.")
        if state in ("failed", "crashed"):
            reason = job.error or ("status.json says running, but the training process is gone (killed, out of "
                                   "memory, or the machine restarted)" if state == "crashed" else "see the log")
            st.error(f"The run {state}: {reason}", icon=":material/error:")
            st.code(job.log_tail() or "(no log)", language=None)
        elif state == "cancelled":
            st.warning("The run was cancelled; its folder is consistent but it cannot be promoted.",
                       icon=":material/cancel:")
        elif state == "finished":
            finished_panel(job)
    if was_active and state not in jobs.ACTIVE_STATES:
        st.rerun()  # the job ended: redraw the whole page (the form's Start button comes back)


def stop(job: jobs.Job, force: bool) -> None:
    try:
        jobs.cancel(job.name, force=force, admin=admin())
    except access.AccessError as error:
        st.error(str(error), icon=":material/block:")
    else:
        st.toast(f"{'Stopping' if force else 'Cancelling'} {job.name}…")


def _select_changed() -> None:
    st.session_state["retrain_watch"] = st.session_state["retrain_select"]


st.title("Retrain")
st.caption("Train a model on this machine with the same settings as `imagemasknet train`, watch it, and promote "
           "a finished run to the active model the Classify page uses. The job runs in the background: closing "
           "the browser does not stop it.")
# Each section in a container of its own: however many elements the sections show (the "already
# running" notice comes and goes), the Runs panel keeps its place in the page, so a rerun redraws it in
# place instead of beside a stale copy.
with st.container():
    if "retrain_flash" in st.session_state:
        kind, message = st.session_state.pop("retrain_flash")
        getattr(st, kind)(message)
with st.container():
    admin_panel()
with st.container():
    active_model()
with st.container():
    launch_form(jobs.current_job())
watch()
