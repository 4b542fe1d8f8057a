"""Who may retrain and promote: the password hash and `admin set-password`, sign-in and its rate limit,
refusals at the function level (not only hidden buttons), the append-only audit log, path-traversal
attempts in the form, and the Retrain page's sign-in through AppTest."""
from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import stat
import tomllib
from pathlib import Path

import pytest
from e2e_helpers import ADMIN_PASSWORD

from imagemasknet import cli
from imagemasknet.core import paths
from imagemasknet.models.bundle import ModelStore
from imagemasknet.core.files import file_sha256
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.ops import access, audit_log, jobs, promotion, retrain_form, train_lock
from imagemasknet.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
QUICK = {"epochs": 1, "limit": 20, "image_size": 64, "fold": 0}


# --- the hash and set-password --------------------------------------------------------------------------


def test_hash_is_salted_and_verifies_only_the_password():
    first, second = access.hash_password(ADMIN_PASSWORD), access.hash_password(ADMIN_PASSWORD)
    assert first != second and ADMIN_PASSWORD not in first  # a fresh salt each time
    assert first.startswith(f"scrypt${access.SCRYPT_N}$")
    assert access.verify_password(ADMIN_PASSWORD, first) and access.verify_password(ADMIN_PASSWORD, second)
    for wrong in ("", ADMIN_PASSWORD + " ", ADMIN_PASSWORD.upper(), "x" * 5000):
        assert not access.verify_password(wrong, first)
    with pytest.raises(ValueError, match="at least 10"):
        access.hash_password("short")
    for broken in ("", "plaintext-password", "scrypt$3$8$1$AAAA$AAAA", "bcrypt$1$2$3$4$5", "scrypt$16384$8$1$!!$AA"):
        with pytest.raises(access.ConfigError, match="set the password again"):
            access.verify_password(ADMIN_PASSWORD, broken)


def test_set_password_writes_only_the_hash_with_mode_600(tmp_path, monkeypatch, capsys):
    secrets = tmp_path / ".streamlit" / "secrets.toml"
    secrets.parent.mkdir()
    secrets.write_text('[connections.db]\nurl = "sqlite://"\n')
    monkeypatch.setenv(paths.SECRETS_ENV, str(secrets))
    assert not access.is_configured()

    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert cli.main(["admin", "set-password", "--password-stdin"]) == 0
    assert "not the password" in capsys.readouterr().err
    text = secrets.read_text()
    assert ADMIN_PASSWORD not in text
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert 'url = "sqlite://"' in text  # other keys kept, and still in their table
    parsed = tomllib.loads(text)
    assert parsed["connections"]["db"]["url"] == "sqlite://"
    assert access.verify_password(ADMIN_PASSWORD, parsed[access.HASH_KEY])
    assert access.configured_hash() == parsed[access.HASH_KEY]
    assert isinstance(access.login(ADMIN_PASSWORD), access.AdminSession)

    # again: one key, replaced; a short password is refused and changes nothing
    monkeypatch.setattr("sys.stdin", io.StringIO("another-password-1\n"))
    assert cli.main(["admin", "set-password", "--password-stdin"]) == 0
    assert secrets.read_text().count(access.HASH_KEY) == 1
    before = secrets.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["admin", "set-password", "--password-stdin"]) == 2
    assert "at least 10" in capsys.readouterr().err and secrets.read_text() == before
    assert not list(secrets.parent.glob(".*.tmp"))


def test_environment_hash_wins_and_a_broken_one_is_reported(monkeypatch, admin_hash):
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    assert access.configured_hash() == admin_hash
    monkeypatch.setenv(access.HASH_ENV, "my-password-in-clear")
    assert access.is_configured()  # configured, but broken: sign-in says so
    with pytest.raises(access.ConfigError):
        access.login("my-password-in-clear")


# --- sign-in, sessions, rate limit ---------------------------------------------------------------------


class Clock:
    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_a_guessing_client_is_paused_but_never_locks_the_administrator_out(monkeypatch, admin_hash):
    """Issue 28: five wrong passwords used to refuse every sign-in for five minutes, the administrator's own
    included; now only the guessing browser session (and, later, its address) is paused."""
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    clock = Clock()
    guesser, administrator = access.Client("tab-guess", "203.0.113.9"), access.Client("tab-admin", "198.51.100.7")
    for attempt in range(access.MAX_FAILURES):
        with pytest.raises(access.AccessError, match="Wrong password"):
            access.login("not the password", clock=clock, client=guesser)
        clock.now += 1
    with pytest.raises(access.RateLimitedError) as limited:  # the guessing session, even with the right password
        access.login(ADMIN_PASSWORD, clock=clock, client=guesser)
    assert 290 <= limited.value.wait_s <= access.FAILURE_WINDOW_S
    session = access.login(ADMIN_PASSWORD, clock=clock, client=administrator)
    assert access.require_admin(session, clock=clock) is session
    # new sessions from the guesser's address get MAX_ADDRESS_FAILURES tries in all, then that address waits
    for n in range(access.MAX_ADDRESS_FAILURES - access.MAX_FAILURES):
        with pytest.raises(access.AccessError, match="Wrong password"):
            access.login("guess", clock=clock, client=access.Client(f"tab-{n}", "203.0.113.9"))
    with pytest.raises(access.RateLimitedError):
        access.login(ADMIN_PASSWORD, clock=clock, client=access.Client("tab-fresh", "203.0.113.9"))
    assert access.login(ADMIN_PASSWORD, clock=clock, client=access.Client("tab-other", "192.0.2.44"))
    clock.now += access.FAILURE_WINDOW_S
    assert access.login(ADMIN_PASSWORD, clock=clock, client=guesser)  # the pause ends with the window


def test_behind_the_proxy_a_visitor_is_its_forwarded_address_not_a_fresh_session(monkeypatch, admin_hash):
    """Review of issue 28: behind nginx Streamlit sees every visitor as the machine itself, so each new browser
    session got five fresh guesses; the proxy's last X-Forwarded-For hop is now the visitor's address."""
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    monkeypatch.setattr(access, "verify_password", lambda password, stored: password == ADMIN_PASSWORD)  # fast
    clock = Clock()
    visitor = lambda n: access.Client.from_request(f"tab-{n}", None, "10.9.9.9, 203.0.113.9")  # noqa: E731
    assert visitor(0).address == "203.0.113.9"  # the hop nginx appended, not the one the visitor sent
    for n in range(access.MAX_ADDRESS_FAILURES):
        with pytest.raises(access.AccessError, match="Wrong password"):
            access.login("guess", clock=clock, client=visitor(n))
    with pytest.raises(access.RateLimitedError):
        access.login(ADMIN_PASSWORD, clock=clock, client=visitor("fresh"))
    assert access.login(ADMIN_PASSWORD, clock=clock, client=access.Client.from_request("tab-a", None, "192.0.2.1"))
    local = access.Client.from_request("tab-l", None, None)
    assert local.address == access.LOCAL and access.Client.from_request("t", None, "junk").address == "unparsable"


def test_forged_addresses_hit_the_web_ceiling_and_the_command_line_stays_open(monkeypatch, admin_hash):
    """Someone on the machine can forge X-Forwarded-For; past MAX_WEB_FAILURES from the web, web sign-in pauses
    for everyone while the administrator can still promote from the command line."""
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    monkeypatch.setattr(access, "verify_password", lambda password, stored: password == ADMIN_PASSWORD)  # fast
    clock = Clock()
    for n in range(access.MAX_WEB_FAILURES):
        with pytest.raises(access.AccessError, match="Wrong password"):
            access.login("guess", clock=clock, client=access.Client.from_request(f"tab-{n}", None, f"10.0.{n}.1"))
    with pytest.raises(access.RateLimitedError, match="from many clients.*imagemasknet models"):
        access.login(ADMIN_PASSWORD, clock=clock, client=access.Client("tab-admin", "198.51.100.7"))
    assert access.login(ADMIN_PASSWORD, clock=clock, client=access.Client("command-line", web=False))
    clock.now += access.FAILURE_WINDOW_S
    assert access.login(ADMIN_PASSWORD, clock=clock, client=access.Client("tab-admin", "198.51.100.7"))


def test_a_flood_of_refused_sign_ins_leaves_a_few_attributed_audit_lines(monkeypatch, admin_hash):
    """Issue 28: fifty refused attempts were fifty audit lines with no session or client."""
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    monkeypatch.setattr(access, "verify_password", lambda password, stored: password == ADMIN_PASSWORD)  # fast
    clock = Clock()
    for n in range(50):
        with pytest.raises(access.AccessError):
            access.login("guess", clock=clock, client=access.Client("tab-flood", "203.0.113.9"))
        clock.now += 0.02
    clock.now += access.AUDIT_REFUSALS_EVERY_S
    with pytest.raises(access.AccessError):
        access.login("guess", clock=clock, client=access.Client("tab-flood", "203.0.113.9"))
    lines = [e for e in audit_log.read().entries if e["action"] == "login"]
    assert len(lines) == 2 and all(e["session"] == "tab-flood" and "203.0.113.9" in e["detail"] for e in lines)
    assert "49 more refused attempts" in lines[-1]["detail"]  # the first of the fifty had its own line


def test_sign_in_on_a_runs_folder_that_cannot_be_written_says_why(monkeypatch, admin_hash, tmp_path):
    monkeypatch.setenv(access.HASH_ENV, admin_hash)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(access, "write_json", full)
    with pytest.raises(access.AccessError, match="cannot be written \\(No space left on device\\)"):
        access.login("a wrong one", root=tmp_path)


def test_sessions_expire_cannot_be_forged_and_end_when_the_password_changes(monkeypatch, admin_hash):
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    clock = Clock()
    session = access.login(ADMIN_PASSWORD, clock=clock)
    forged = dataclasses.replace(session, expires=session.expires + 10 * access.SESSION_LIFETIME_S)
    with pytest.raises(access.AccessError, match="not valid"):
        access.require_admin(forged, clock=clock)
    with pytest.raises(access.AccessError, match="not valid"):
        access.require_admin(access.AdminSession(clock.now, clock.now + 60, "0" * 32, "0" * 64), clock=clock)
    for not_a_session in (None, "admin", {"signature": session.signature}, True):
        with pytest.raises(access.AccessError, match="sign in"):
            access.require_admin(not_a_session, clock=clock)
    clock.now = session.expires
    with pytest.raises(access.AccessError, match="expired"):
        access.require_admin(session, clock=clock)
    clock.now = session.issued + 1
    assert access.require_admin(session, clock=clock)
    monkeypatch.setenv(access.HASH_ENV, access.hash_password("a brand new password"))
    with pytest.raises(access.AccessError, match="password changed"):
        access.require_admin(session, clock=clock)
    monkeypatch.delenv(access.HASH_ENV)
    with pytest.raises(access.NotConfiguredError):
        access.require_admin(session, clock=clock)


# --- refusals at the function level ----------------------------------------------------------------------


@pytest.mark.parametrize("configured", [False, True], ids=["no-admin-configured", "admin-configured"])
def test_unauthenticated_calls_are_refused_by_the_functions(configured, monkeypatch, admin_hash, busi_root):
    if configured:
        monkeypatch.setenv(access.HASH_ENV, admin_hash)
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_root))
    config = retrain_form.config_from_form(QUICK)
    fake = access.AdminSession(0.0, 9e12, "f" * 32, "f" * 64)
    for session in (None, fake):
        calls = [lambda: jobs.start(config, admin=session), lambda: promotion.promote("any-run", admin=session),
                 lambda: promotion.rollback(admin=session), lambda: jobs.cancel("any-run", admin=session)]
        for call in calls:
            with pytest.raises(access.NotConfiguredError if not configured else access.AccessError):
                call()
    assert jobs.current_job() is None and not train_lock.lock_path().exists()  # nothing was launched
    assert not ModelStore().active_link.exists()


def test_path_traversal_in_any_field_is_refused(monkeypatch, admin, busi_root):
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_root))
    attempts = [
        {"arch": "../../etc/passwd"}, {"mask_schedule": "../x"}, {"augment": "/etc/shadow"},
        {"fold": "../1"}, {"limit": "20/../../x"}, {"epochs": "1; rm -rf /"}, {"lr": "../1"},
        {"out_dir": "../../tmp/x"}, {"data": "/etc"}, {"split_file": "../../etc/passwd"}, {"device": "../cuda"},
        {"num_workers": 1}, {"data_mode": "add"},
    ]
    for values in attempts:
        with pytest.raises(ValueError):
            retrain_form.config_from_form({**QUICK, **values})
    # a config built by hand with a path in it is refused by start itself
    with pytest.raises(ValueError, match="out_dir"):
        jobs.start(TrainConfig(**{**retrain_form.config_from_form(QUICK).to_dict(), "out_dir": "../../tmp/x"}), admin=admin)
    for name in ("../outside", "..", "a/../../b", "/etc", ".models", "runs\\..\\x", ""):
        with pytest.raises(ValueError, match="not a run name"):
            promotion.promote(name, admin=admin)
        with pytest.raises(ValueError, match="not a run name"):
            jobs.cancel(name, admin=admin)
    assert jobs.current_job() is None
    refused = [e for e in audit_log.read().entries if e["action"] in ("launch", "promote")]
    assert refused and all(e["outcome"] in ("refused", "failed") for e in refused)


# --- the audit log ---------------------------------------------------------------------------------------


def test_a_torn_line_never_corrupts_earlier_or_later_entries(tmp_path):
    audit_log.append("login", outcome="ok", root=tmp_path)
    audit_log.append("launch", run="run-1", root=tmp_path)
    with open(audit_log.log_path(tmp_path), "ab") as log:
        log.write(b'{"time": "2026-11-26T10:00:00", "action": "prom')  # a crash in mid-write
    audit_log.append("cancel", run="run-1", outcome="requested", root=tmp_path)
    log = audit_log.read(tmp_path)
    assert [e["action"] for e in log.entries] == ["login", "launch", "cancel"]
    assert log.unreadable_lines == 1
    shipped = file_sha256(REPO / "weights" / DEFAULT_MODEL / "model.safetensors")
    assert all(e["model_before"] == e["model_after"] == shipped for e in log.entries)
    with pytest.raises(ValueError):
        audit_log.append("delete-everything", root=tmp_path)


APPENDS_PER_WORKER = 150


def _append_many(root: str, worker: int) -> None:
    for n in range(APPENDS_PER_WORKER):
        audit_log.append("cancel", run=f"w{worker}-{n}", outcome="requested", detail="x" * 300, root=Path(root),
                         model_before="a" * 64, model_after="a" * 64)


def test_appends_from_many_processes_never_interleave(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    log = audit_log.read(tmp_path)
    assert log.unreadable_lines == 0 and len(log.entries) == 4 * APPENDS_PER_WORKER
    assert {e["run"] for e in log.entries} == {f"w{w}-{n}" for w in range(4) for n in range(APPENDS_PER_WORKER)}
    lines = audit_log.log_path(tmp_path).read_bytes().splitlines()
    assert all(json.loads(line)["action"] == "cancel" for line in lines)


def test_a_log_past_its_limit_is_rotated_and_the_newest_entries_stay_readable(tmp_path, monkeypatch):
    """Review of issue 28: a log over LOG_LIMIT was refused whole, so a flood of refused sign-ins could blank the
    page's log; now it rotates (nothing deleted) and an oversized file still shows its newest entries."""
    monkeypatch.setattr(audit_log, "LOG_LIMIT", 5000)
    for n in range(40):
        audit_log.append("login", outcome="wrong password", detail=f"attempt {n} " + "x" * 300, root=tmp_path)
    rotated = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) >= 2 and all(path.stat().st_size <= 5000 + 1000 for path in rotated)
    log = audit_log.read(tmp_path)
    assert log.unreadable_lines == 0 and log.entries[-1]["detail"].startswith("attempt 39 ")
    kept = [json.loads(line) for path in [*rotated, audit_log.log_path(tmp_path)] for line in path.read_text().splitlines()]
    assert [e["detail"].split()[1] for e in kept] == [str(n) for n in range(40)]  # every entry, in order

    oversized = tmp_path / "big"
    oversized.mkdir()
    audit_log.log_path(oversized).write_bytes(b"".join(path.read_bytes() for path in [*rotated, audit_log.log_path(tmp_path)]))
    log = audit_log.read(oversized)
    assert log.unreadable_lines == 0 and 0 < len(log.entries) < 40 and log.entries[-1]["detail"].startswith("attempt 39 ")


# --- the page ------------------------------------------------------------------------------------------


def sign_in(at, password: str):
    field = next(t for t in at.text_input if t.label == "Administrator password")
    field.input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    return at.run()


def labels(at) -> list[str]:
    return [b.label for b in at.button]


def test_page_is_read_only_without_an_administrator(busi_root, monkeypatch, retrain_page):
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_root))
    at = retrain_page().run()
    assert not at.exception
    assert any("Read-only" in i.value and "imagemasknet admin set-password" in i.value for i in at.info)
    assert not at.text_input and not {"Start training", "Sign in"} & set(labels(at))
    # a visitor is told who can start a run, not asked to start one
    assert any("only an administrator can start one" in c.value for c in at.caption)
    assert not any("Start one above" in c.value for c in at.caption)


def test_page_sign_in_wrong_password_rate_limit_and_success(monkeypatch, admin_hash, busi_root, retrain_page):
    monkeypatch.setenv(access.HASH_ENV, admin_hash)
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_root))
    at = retrain_page().run()
    assert not at.exception and "Sign in" in labels(at) and "Start training" not in labels(at)
    for attempt in range(access.MAX_FAILURES):
        at = sign_in(at, "wrong password!")
        assert any("Wrong password" in e.value for e in at.error)
    at = sign_in(at, ADMIN_PASSWORD)
    assert any("Too many failed sign-in attempts" in e.value for e in at.error)
    assert "Start training" not in labels(at)

    (Path(os.environ["IMAGEMASKNET_RUNS"]) / access.FAILURES_FILE).unlink()  # as if the window had passed
    at = sign_in(at, ADMIN_PASSWORD)
    assert not at.exception and not at.error
    assert "Start training" in labels(at) and "Sign out" in labels(at)
    assert any("Signed in as administrator" in s.value for s in at.success)
    next(b for b in at.button if b.label == "Sign out").click()
    at.run()
    assert "Sign in" in labels(at) and "Start training" not in labels(at)
