"""The Retrain page's logic (imagemasknet.ops.jobs) with real trainings: one-epoch runs on a 20-scan subset at
64 px, launched as background processes exactly as the page launches them; promotion and roll back of the
active model; cancel; stale locks; a SIGKILL in mid-training; an interrupted promotion; server-side form
validation; and the page itself through Streamlit's AppTest."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_helpers import ADMIN_PASSWORD
from streamlit.testing.v1 import AppTest

from imagemasknet import cli
from imagemasknet.core.files import file_sha256, read_json, write_json
from imagemasknet.core.paths import runs_root
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.dataset import DatasetNotFoundError
from imagemasknet.data.scans import read_scan
from imagemasknet.inference.predictor import Predictor, active_model_key
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.models.bundle import ModelStore
from imagemasknet.ops import access, audit_log, jobs, promotion, retrain_form, train_lock
from imagemasknet.training.config import PRESETS, TrainConfig

pytestmark = pytest.mark.slow


def active_card():
    """The promoted bundle's card, or None while the shipped model is active."""
    promoted = ModelStore().promoted()
    return promoted.card if promoted else None


def previous_card():
    previous = ModelStore().previous()
    return previous.card if previous else None

REPO = Path(__file__).resolve().parent.parent
QUICK = {"epochs": 1, "limit": 20, "image_size": 64, "fold": 0, "seed": 0}
QUICK_REASON = "a one-epoch test run, promoted to test promotion"
LONG = {**QUICK, "epochs": 400}  # long enough to be interrupted; each epoch takes well under a second


def wait_until(predicate, timeout: float = 120, what: str = "condition", job: jobs.Job | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{job.log_tail()}" if job else ""))


@pytest.fixture
def env(monkeypatch, busi_root, shared_cache):
    """The page's environment: data found by the server (never the form), a shared decode cache, one
    thread per trainer (two shared cores). Subprocesses inherit it."""
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return runs_root()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, busi_root, shared_cache_dir, admin_hash):
    """A real one-epoch run launched through jobs.start and waited for; (runs root, run name)."""
    root = tmp_path_factory.mktemp("module-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(access.HASH_ENV, admin_hash)
        patch.setenv("IMAGEMASKNET_RUNS", str(root))
        patch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
        patch.setenv("IMAGEMASKNET_DATA", str(busi_root))
        patch.setenv("OMP_NUM_THREADS", "1")
        admin = access.login(ADMIN_PASSWORD)
        job = jobs.start(retrain_form.config_from_form(QUICK), admin=admin)
        assert jobs.current_job().name == job.name
        jobs.wait(job.name, timeout=180)
    return root.resolve(), job.name


def copy_run(finished_run, name: str | None = None) -> str:
    """Put a copy of the finished run folder into this test's runs root (as another run)."""
    root, source = finished_run
    name = name or source
    shutil.copytree(root / source, runs_root() / name)
    return name


# --- launch, finish, promote, roll back ---------------------------------------------------------------


def test_real_retrain_finishes_and_is_promoted_then_rolled_back(finished_run, env, monkeypatch, busi_root, admin):
    root, name = finished_run
    monkeypatch.setenv("IMAGEMASKNET_RUNS", str(root))
    job = jobs.job(name)
    assert job.state == "finished"
    assert jobs.current_job() is None and not train_lock.lock_path().exists()  # the lock went with the job
    assert job.record["returncode"] == 0
    assert job.progress.fraction == 1.0 and "epoch 1/1" in job.progress.text
    config = read_json(root / name / "config.json")
    assert (config["epochs"], config["limit"], config["image_size"]) == (1, 20, 64)
    assert config["out_dir"] == str(root / name)  # the folder jobs.py named, not one from the form
    assert name.startswith("lesion-resunet-")
    assert read_json(root / name / "status.json")["state"] == "finished"
    assert len(job.history) == 1 and "finished" in job.log_tail()

    # Before promotion the shipped model is the active one, and the comparison uses its card.
    assert active_card() is None and active_model_key() == f"shipped:{DEFAULT_MODEL}"
    rows = promotion.comparison(name)
    shipped_card = json.loads((REPO / "weights" / DEFAULT_MODEL / "model.json").read_text())
    accuracy = next(r for r in rows if r["metric"] == "accuracy" and r["mode"] == "image")
    assert accuracy["active"] == pytest.approx(shipped_card["cross_validation"]["image"]["accuracy"]["mean"])
    assert accuracy["run"] == pytest.approx(job.history[-1]["heldout"]["image"]["accuracy"])

    # A 20-scan quick run is refused unless an administrator gives a reason, which the log keeps.
    with pytest.raises(promotion.PromotionError, match="subset of 20 scans"):
        promotion.promote(name, admin=admin)
    assert active_card() is None
    card = promotion.promote(name, admin=admin, override=QUICK_REASON)
    assert card.version == name and card.arch == "lesion-resunet"
    assert card.temperature == read_json(root / name / "calibration.json")["temperature"]
    assert (root / "active").is_symlink() and (root / "active" / "model.safetensors").is_file()
    assert active_card().version == name and previous_card() is None
    predictor = Predictor.active(device="cpu")
    assert predictor.version == name and predictor.image_size == 64
    assert predictor.temperatures == pytest.approx(card.temperature)
    prediction = predictor.predict(read_scan(busi_root / "benign" / "images" / "benign (1).png"))
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-5
    key_promoted = active_model_key()
    assert key_promoted.startswith("active:")
    with pytest.raises(promotion.PromotionError):
        promotion.rollback(root / "nowhere", admin=admin)  # another root has nothing to roll back

    # A second run promoted over it keeps it as "previous"; roll back restores it, twice undoes.
    other = "lesion-resunet-20990101-000000"
    shutil.copytree(root / name, root / other)
    promotion.promote(other, admin=admin, override=QUICK_REASON)
    assert active_card().version == other and previous_card().version == name
    assert active_model_key() not in (key_promoted, f"shipped:{DEFAULT_MODEL}")
    assert promotion.rollback(admin=admin).version == name
    assert Predictor.active(device="cpu").version == name and previous_card().version == other
    assert promotion.rollback(admin=admin).version == other
    assert promotion.rollback(admin=admin).version == name

    # Rolling back the first promotion returns to the shipped model.
    (root / "active").unlink()
    promotion.promote(name, admin=admin, override=QUICK_REASON)
    assert promotion.rollback(admin=admin) is None
    assert active_card() is None and not (root / "active").exists()
    shipped = Predictor.active(device="cpu")
    assert shipped.version == shipped_card["version"] and shipped.image_size == 256
    assert not [p for p in (root / ".models").iterdir() if p.name.startswith(".")]  # no staging leftovers

    # The audit log holds the whole cycle, with the active weights' hashes around each change.
    log = audit_log.read(root)
    assert log.unreadable_lines == 0
    assert [(e["action"], e["run"], e["outcome"]) for e in log.entries[:3]] == [
        ("login", None, "ok"), ("launch", name, "ok"), ("finish", name, "finished")]
    # each promotion and roll back writes a "started" entry first (so a killed one is still in the log)
    ended = [e for e in log.entries if e["outcome"] != "started"]
    started = [e for e in log.entries if e["outcome"] == "started"]
    assert len(started) == len([e for e in ended if e["action"] in ("promote", "rollback")])
    assert [(e["action"], e["outcome"]) for e in ended[3:5]] == [("promote", "failed"), ("promote", "ok")]
    assert f"override: {QUICK_REASON}" in ended[4]["detail"] and "subset of 20 scans" in ended[4]["detail"]
    assert [e["action"] for e in ended[4:]] == ["promote", "promote", "rollback", "rollback", "rollback",
                                                "promote", "rollback"]
    assert all(e["session"] == admin.id and e["outcome"] == "ok" for e in ended[4:])
    shipped_hash = file_sha256(REPO / "weights" / DEFAULT_MODEL / "model.safetensors")
    run_hash = file_sha256(root / name / "best.safetensors")
    first, last = ended[4], ended[-1]
    assert (first["run"], first["model_before"], first["model_after"]) == (name, shipped_hash, run_hash)
    assert (last["run"], last["model_before"], last["model_after"]) == (name, run_hash, shipped_hash)
    assert log.entries[1]["model_before"] == log.entries[1]["model_after"] == shipped_hash


def test_cli_arguments_reproduce_the_config():
    config = retrain_form.config_from_form({**QUICK, "fold": None, "class_balanced": True, "lr": 3.3e-4}, "study-m1")
    args = cli.build_parser().parse_args(["train", *jobs.cli_args(config)])
    assert cli._config_from_args(args) == config
    assert config.arch == "imagemasknet" and config.optimizer == "adam"  # the preset under the form's values


def test_start_refuses_bad_configs_missing_data_and_full_disk(env, monkeypatch, tmp_path, admin):
    with pytest.raises(ValueError, match="out_dir"):
        jobs.start(TrainConfig(**{**retrain_form.config_from_form(QUICK).to_dict(), "out_dir": str(tmp_path / "x")}), admin=admin)
    with pytest.raises(ValueError, match="epochs"):
        jobs.start(TrainConfig(epochs=0), admin=admin)
    with pytest.raises(DatasetNotFoundError, match="BUSI folder not found"):
        jobs.start(TrainConfig(**{**retrain_form.config_from_form(QUICK).to_dict(), "data": str(tmp_path / "missing")}), admin=admin)
    monkeypatch.setattr(jobs, "free_bytes", lambda path: 5 * 2**20)
    with pytest.raises(jobs.JobError, match="Only 5 MB free"):
        jobs.start(retrain_form.config_from_form(QUICK), admin=admin)
    assert not train_lock.lock_path().exists() and jobs.recent_jobs() == []


# --- failures, cancel, locks, crashes -----------------------------------------------------------------


def test_failed_run_shows_its_log_and_takes_over_a_stale_lock(env, tmp_path, admin):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_json(train_lock.lock_path(), {"pid": dead.pid, "run": "ghost-run", "started": "long ago"})
    assert train_lock.read_lock().run == "ghost-run" and not train_lock.read_lock().alive
    assert jobs.current_job() is None  # a stale lock announces nothing

    empty = tmp_path / "not-busi"
    empty.mkdir()  # exists, so the launch goes ahead; the trainer then finds no scans in it
    config = TrainConfig(**{**retrain_form.config_from_form(QUICK).to_dict(), "data": str(empty)})
    job = jobs.start(config, admin=admin)
    assert train_lock.read_lock().run == job.name  # the stale lock was taken over
    job = jobs.wait(job.name, timeout=120)
    assert job.state == "failed", job.log_tail()
    assert "holds no BUSI images" in job.error and "holds no BUSI images" in job.log_tail()
    assert job.record["returncode"] == 2
    assert not train_lock.lock_path().exists()
    with pytest.raises(promotion.PromotionError, match="no run folder"):
        promotion.promote(job.name, admin=admin, override=QUICK_REASON)


def test_pid_reuse_and_live_locks(env, admin):
    me = os.getpid()
    write_json(train_lock.lock_path(), {"pid": me, "pid_start": train_lock.process_start(me), "run": "busy-run"})
    assert train_lock.read_lock().alive and jobs.current_job().name == "busy-run"
    with pytest.raises(train_lock.JobRunningError, match="busy-run"):
        jobs.start(retrain_form.config_from_form(QUICK), admin=admin)
    assert train_lock.read_lock().run == "busy-run"  # untouched
    start = train_lock.process_start(me)
    if start is not None:  # Linux: the same pid with another start time is another process
        write_json(train_lock.lock_path(), {"pid": me, "pid_start": start + 1, "run": "old-run"})
        assert not train_lock.read_lock().alive
        taken = train_lock.acquire_lock(runs_root(), "new-run")
        assert taken.run == "new-run" and train_lock.read_lock().run == "new-run"
        train_lock.release_lock(runs_root(), "new-run")
        assert not train_lock.lock_path().exists()
    # A lock file that O_EXCL finds must never be overwritten by a second creator.
    train_lock.acquire_lock(runs_root(), "first")
    with pytest.raises(train_lock.JobRunningError, match="first"):
        train_lock.acquire_lock(runs_root(), "second")


def test_cancel_stops_the_job_cleanly(env, admin):
    job = jobs.start(retrain_form.config_from_form(LONG), admin=admin)
    with pytest.raises(train_lock.JobRunningError, match=job.name):  # one job at a time
        jobs.start(retrain_form.config_from_form(QUICK), admin=admin)
    wait_until(lambda: len(job.history) >= 1, what="the first epoch", job=job)
    assert job.state == "running" and 0 < job.progress.fraction < 1
    assert jobs.cancel(admin=admin).name == job.name  # default: the job holding the lock
    job = jobs.wait(job.name, timeout=60)
    assert job.state == "cancelled", job.log_tail()
    status = read_json(job.path / "status.json")
    assert status["state"] == "cancelled" and status["epoch"] == len(job.history) >= 1
    assert isinstance(read_json(job.path / "history.json"), list)
    assert not list(job.path.glob(".*.tmp"))
    assert "cancelled" in job.log_tail()
    assert jobs.current_job() is None and not train_lock.lock_path().exists()
    assert jobs.cancel(job.name, admin=admin) is None  # nothing left to stop
    with pytest.raises(promotion.PromotionError, match="cancelled"):
        promotion.promote(job.name, admin=admin, override=QUICK_REASON)


def test_cancel_while_starting_is_recorded_as_cancelled(env, admin):
    job = jobs.start(retrain_form.config_from_form(LONG), admin=admin)
    assert job.state == "starting"  # python and torch are still importing
    jobs.cancel(job.name, admin=admin)  # the trainer's SIGTERM handler is not installed yet: the signal kills it
    job = jobs.wait(job.name, timeout=60)
    assert job.state == "cancelled"
    status = read_json(job.path / "status.json")
    assert status is None or status["state"] == "cancelled"
    assert not train_lock.lock_path().exists()


def test_sigkill_mid_training_leaves_the_active_model_loadable(env, finished_run, admin):
    promoted = copy_run(finished_run)
    promotion.promote(promoted, admin=admin, override=QUICK_REASON)
    job = jobs.start(retrain_form.config_from_form(LONG), admin=admin)
    wait_until(lambda: len(job.history) >= 1 and job.status.get("state") == "running", what="training", job=job)
    os.killpg(job.pid, signal.SIGKILL)
    job = jobs.wait(job.name, timeout=30)
    assert job.state == "crashed"
    assert read_json(job.path / "status.json")["state"] == "running"  # what the trainer last wrote...
    assert RunFolder(job.path).state == "crashed"  # ...and what every reader makes of it
    assert job.record["returncode"] == -signal.SIGKILL
    assert jobs.current_job() is None
    assert Predictor.active(device="cpu").version == promoted
    with pytest.raises(promotion.PromotionError, match="crashed"):
        promotion.promote(job.name, admin=admin, override=QUICK_REASON)
    # a crashed job's lock (had its launcher died too) is stale: the next launch may take it over
    write_json(train_lock.lock_path(), {"pid": job.pid, "run": job.name})
    assert jobs.current_job() is None
    train_lock.acquire_lock(runs_root(), "next")
    assert train_lock.read_lock().run == "next"


def test_interrupted_promotion_keeps_the_previous_active_model(env, finished_run, monkeypatch, admin):
    first = copy_run(finished_run, "lesion-resunet-20990101-000001")
    second = copy_run(finished_run, "lesion-resunet-20990101-000002")
    promotion.promote(first, admin=admin, override=QUICK_REASON)
    key = active_model_key()

    def copy_half_then_fail(source, target):
        data = Path(source).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(promotion, "_copy_file", copy_half_then_fail)
        with pytest.raises(promotion.PromotionError, match="disk is full"):
            promotion.promote(second, admin=admin, override=QUICK_REASON)
    assert active_model_key() == key and active_card().version == first
    assert Predictor.active(device="cpu").version == first
    assert not [p for p in (runs_root() / ".models").iterdir() if p.name.startswith(".")]

    # A crash after staging but before the link swap: the old link still stands.
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(promotion, "_swap_active", crash)
        with pytest.raises(KeyboardInterrupt):
            promotion.promote(second, admin=admin, override=QUICK_REASON)
    assert active_card().version == first and Predictor.active(device="cpu").version == first
    promotion.promote(second, admin=admin, override=QUICK_REASON)  # and the next promotion works
    assert active_card().version == second and previous_card().version == first


def test_only_finished_loadable_runs_are_promoted(env, finished_run, admin):
    broken = copy_run(finished_run, "lesion-resunet-20990101-000003")
    best = runs_root() / broken / "best.safetensors"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(promotion.PromotionError, match="does not load"):
        promotion.promote(broken, admin=admin, override=QUICK_REASON)
    running = copy_run(finished_run, "lesion-resunet-20990101-000004")
    status = read_json(runs_root() / running / "status.json")
    write_json(runs_root() / running / "status.json", {**status, "state": "running", "pid": os.getpid()})
    with pytest.raises(promotion.PromotionError, match="running"):
        promotion.promote(running, admin=admin, override=QUICK_REASON)
    assert active_card() is None and not (runs_root() / "active").exists()


# --- the page ------------------------------------------------------------------------------------------


def test_page_form_renders_from_the_dataclass(env, admin, retrain_page):
    at = retrain_page(admin).run()
    assert not at.exception
    numbers = {n.label: n for n in at.number_input}
    selects = {s.label: s for s in at.selectbox}
    checks = {c.label: c for c in at.checkbox}
    for field in retrain_form.form_fields():
        if field.kind in ("int", "float"):
            widget = numbers[field.label]
            assert widget.min == field.min and widget.max == field.max and widget.help == field.help
        elif field.kind == "limit":
            assert numbers[field.label].min == 0
        elif field.kind == "choice":
            assert list(selects[field.label].options) == [str(c) for c in field.choices]
        elif field.kind == "fold":
            assert len(selects[field.label].options) == len(field.choices)
        else:
            assert field.label in checks
    assert numbers["epochs"].value == PRESETS[DEFAULT_MODEL].get("epochs", 60)
    start = next(b for b in at.button if b.label == "Start training")
    assert not start.disabled
    # choosing a preset refills the form with its values
    at.selectbox(key="retrain_preset").set_value("study-m1").run()
    assert {n.label: n.value for n in at.number_input}["epochs"] == 10
    assert {s.label: s.value for s in at.selectbox}["arch"] == "imagemasknet"


def test_page_announces_a_running_job_and_disables_start(env, admin, retrain_page, top_level_slot):
    me = os.getpid()
    write_json(train_lock.lock_path(), {"pid": me, "pid_start": train_lock.process_start(me), "run": "lesion-resunet-20990101-1"})
    at = retrain_page(admin).run()
    assert not at.exception
    start = next(b for b in at.button if b.label == "Start training")
    assert start.disabled
    assert any("already running" in i.value and "lesion\\-resunet\\-20990101\\-1" in i.value for i in at.info)
    # When the job ends the notice goes; the Runs panel must keep its place in the page, or the browser
    # shows it twice (the new one beside the stale one) until the rerun completes.
    def runs_heading(node) -> bool:
        return getattr(node, "type", None) == "subheader" and node.value == "Runs"

    running_slot = top_level_slot(at, runs_heading)
    train_lock.lock_path().unlink()
    at.run()
    assert not any("already running" in i.value for i in at.info)
    assert top_level_slot(at, runs_heading) == running_slot is not None


def test_page_promotes_and_rolls_back(env, finished_run, admin, retrain_page):
    name = copy_run(finished_run)
    at = retrain_page(admin).run()
    assert not at.exception
    assert any("finished" in m.value for m in at.markdown)
    assert at.dataframe  # the side-by-side table
    at.button(key=f"promote:{name}").click().run()
    assert active_card() is None  # a confirmation first, with the concerns and no primary button yet
    assert any("subset of 20 scans" in w.value for w in at.warning)
    assert at.button(key=f"confirm:{name}").disabled
    at.text_input(key=f"override:{name}").set_value(QUICK_REASON).run()
    at.button(key=f"confirm:{name}").click().run()
    assert active_card().version == name
    assert any("is now the active model" in s.value for s in at.success)
    assert QUICK_REASON in audit_log.read().entries[-1]["detail"]
    # Every page now names the promoted model in a banner, and Classify's model box names it too.
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not app.exception
    assert any(f"Active model: {name}" in w.value for w in app.warning)
    assert name in app.selectbox(key="model").options[0]
    at.button(key="retrain_rollback").click().run()
    assert active_card() is None
    assert any("Rolled back" in s.value for s in at.success)


def test_page_shows_a_crashed_run_with_its_log(env, finished_run, retrain_page):
    name = copy_run(finished_run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = read_json(runs_root() / name / "status.json")
    write_json(runs_root() / name / "status.json", {**status, "state": "running", "pid": dead.pid})
    at = retrain_page().run()
    assert not at.exception
    assert any("crashed" in e.value for e in at.error)
    assert any("finished" in c.value or "epoch 1" in c.value for c in at.code)  # the log's tail
    assert not [b for b in at.button if b.label.startswith("Promote")]


def test_a_promotion_killed_after_its_swap_is_still_audited_and_leaves_no_stale_link(env, finished_run, admin, monkeypatch):
    """Issue 28: a promotion killed after the active link was swapped left no audit entry, and dangling
    `.active.<pid>.tmp` links stayed for good."""
    import datetime as dt

    name = copy_run(finished_run, "lesion-resunet-20990101-000009")
    stale = runs_root() / ".active.999999999.tmp"  # a dead process's half-made link
    stale.symlink_to("nowhere")

    def killed_after_the_swap(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(promotion, "_prune", killed_after_the_swap)
        with pytest.raises(KeyboardInterrupt):
            promotion.promote(name, admin=admin, override=QUICK_REASON)
    assert active_card().version == name  # the swap happened
    entries = [e for e in audit_log.read().entries if e["run"] == name]
    assert [e["outcome"] for e in entries] == ["started"]  # the promotion is in the log all the same
    later = lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)  # noqa: E731
    assert audit_log.close_interrupted(clock=later) == 1
    closing = audit_log.read().entries[-1]
    assert closing["outcome"] == "interrupted" and closing["model_after"] == audit_log.active_model_hash()
    assert closing["model_after"] != closing["model_before"]
    assert audit_log.close_interrupted(clock=later) == 0  # once
    promotion.promote(copy_run(finished_run, "lesion-resunet-20990101-000010"), admin=admin, override=QUICK_REASON)
    assert not stale.is_symlink()
    weights = ModelStore().active_link.resolve() / "model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) & 0o044  # readable by others, as atomic_write documents
