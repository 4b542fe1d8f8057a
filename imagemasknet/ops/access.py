"""Who may retrain and promote: the administrator password, signed-in sessions and the login limit.

The password itself is never stored: ``imagemasknet admin set-password`` writes a salted scrypt hash
(``scrypt$N$r$p$SALT$HASH``, base64) to ``.streamlit/secrets.toml`` with permissions 600, or the
deployment sets it in the environment variable ``IMAGEMASKNET_ADMIN_HASH``. With neither, nobody is
an administrator and the Retrain page is read-only.

A correct password yields an :class:`AdminSession`, an HMAC over its times and the configured hash
under a key that lives only in this process's memory. :func:`require_admin` checks it, so the
functions that launch, cancel, promote or roll back refuse a missing, forged, expired or outdated
(password changed since) session themselves, not only the page that shows their buttons.

Failed logins are counted per :class:`Client` (its browser session and its network address) in a file under the
runs folder, shared by every server process: after :data:`MAX_FAILURES` failures within :data:`FAILURE_WINDOW_S`
seconds that session (or, after :data:`MAX_ADDRESS_FAILURES`, that address) is refused until the oldest of them is
that old. Nobody else is: however many wrong guesses a visitor makes, the administrator signs in from their own
session. The app listens on the machine itself only, so a visitor's address is the last hop of the reverse proxy's
``X-Forwarded-For``; someone on the machine could forge that header, so :data:`MAX_WEB_FAILURES` failures from
all web clients together pause web sign-in for everyone, and the command line (which no visitor reaches) stays
open to the administrator. Refused attempts reach the audit log at most once a minute per client, with a count
of those left out, so a flood cannot push real entries out of view.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imagemasknet.core.files import atomic_write, folder_lock, read_json, write_json
from imagemasknet.core.paths import runs_root, secrets_path
from imagemasknet.ops import audit_log

HASH_KEY = "admin_password_hash"
HASH_ENV = "IMAGEMASKNET_ADMIN_HASH"
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P, SALT_BYTES, KEY_BYTES = 2**14, 8, 1, 16, 32
MAX_FAILURES = 5  # per browser session
MAX_ADDRESS_FAILURES = 20  # per network address (several people may share one)
MAX_WEB_FAILURES = 100  # from all web clients together: the backstop for forged addresses
FAILURE_WINDOW_S = 300.0
AUDIT_REFUSALS_EVERY_S = 60.0  # at most one audit line of refused sign-ins per client per minute
AUDIT_REFUSALS_PER_MINUTE = 30  # and at most this many from all clients together
MAX_TRACKED_KEYS = 10_000  # sessions and addresses the failure record remembers
SESSION_LIFETIME_S = 8 * 3600.0
FAILURES_FILE = Path(".auth") / "login-failures.json"

_PROCESS_KEY = secrets.token_bytes(32)


class AccessError(PermissionError):
    """An action an administrator must take, refused; the message says why."""


class NotConfiguredError(AccessError):
    def __init__(self) -> None:
        super().__init__("No administrator password is configured, so retraining and promotion are switched off. "
                         "Run `imagemasknet admin set-password` on the server (or set "
                         f"{HASH_ENV}) and restart the app.")


class RateLimitedError(AccessError):
    def __init__(self, wait_s: float, everyone: bool = False) -> None:
        self.wait_s = wait_s
        wait = f"Try again in {max(1, round(wait_s))} s"
        super().__init__(f"Too many failed sign-in attempts from many clients. {wait}, or promote and roll back on "
                         "the server with `imagemasknet models`." if everyone else
                         f"Too many failed sign-in attempts. {wait}.")


class ConfigError(ValueError):
    """The configured hash is present but not one this module wrote."""


# --- hashing -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * 1024 * 1024)


def check_password_strength(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    check_password_strength(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.strip().split("$") if isinstance(stored, str) else []
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
        if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and salt and digest):
            raise ValueError
    except ValueError:
        raise ConfigError(f"the configured {HASH_KEY} is not a hash written by `imagemasknet admin set-password` "
                          "(expected scrypt$N$r$p$SALT$HASH); set the password again") from None
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; the final comparison takes the same time either way."""
    n, r, p, salt, digest = _parse(stored)
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        password = ""
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


# --- where the hash lives ------------------------------------------------------------------------------


def configured_hash() -> str | None:
    """The administrator's hash (environment first, then the secrets file), or None when there is none."""
    from_env = os.environ.get(HASH_ENV, "").strip()
    if from_env:
        _parse(from_env)
        return from_env
    path = secrets_path()
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            value = tomllib.load(handle).get(HASH_KEY)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    if value is None:
        return None
    _parse(value)
    return value


def is_configured() -> bool:
    try:
        return configured_hash() is not None
    except ConfigError:
        return True  # configured, but broken: sign-in says why instead of pretending there is no admin


def write_password_hash(hashed: str, path: Path | None = None) -> Path:
    """Put ``hashed`` into the secrets file (other keys kept) atomically, with permissions 600."""
    _parse(hashed)
    path = Path(path or secrets_path())
    kept = []
    if path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.split("=", 1)[0].strip() != HASH_KEY]
    # First, so the key stays at the top level even if the file has [tables].
    text = "\n".join([f'{HASH_KEY} = "{hashed}"', *kept]) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode=0o600)
    return path


# --- sessions ------------------------------------------------------------------------------------------


def _fingerprint(stored: str) -> str:
    return hashlib.sha256(stored.encode("utf-8")).hexdigest()


def _sign(issued: float, expires: float, nonce: str, stored: str) -> str:
    message = f"{issued!r}|{expires!r}|{nonce}|{_fingerprint(stored)}".encode()
    return hmac.new(_PROCESS_KEY, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AdminSession:
    """Proof of a successful sign-in in this server process; pass it to the guarded job functions."""

    issued: float
    expires: float
    nonce: str
    signature: str

    @property
    def id(self) -> str:
        """A short, non-secret name for the audit log."""
        return self.nonce[:8]


LOCAL = "local"  # the address of a client on the machine itself, with no reverse proxy in between
ALL_WEB = "web:*"  # the failure key every web client shares


@dataclass(frozen=True)
class Client:
    """Who is signing in: the browser session (an id the page makes, not a secret), the network address it came
    from, and whether it came through the web (the command line is not counted against the web's ceiling)."""

    session: str = LOCAL
    address: str = LOCAL
    web: bool = True

    @classmethod
    def from_request(cls, session: str, peer: str | None, forwarded_for: str | None) -> "Client":
        """The client of a web request. Streamlit reports no ``peer`` for a connection from the machine itself,
        which is what the reverse proxy is: then the last ``X-Forwarded-For`` hop, the one the proxy added, is
        the visitor's address, and with no such header the visitor is on the machine."""
        if peer is None:
            hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
            peer = hops[-1] if hops else LOCAL
        try:
            address = str(ipaddress.ip_address(peer))
        except ValueError:
            address = LOCAL if peer == LOCAL else "unparsable"  # forged junk shares one key
        return cls(session, address)

    def keys(self) -> list[str]:
        """The failure counters this client's attempts go to: its session, its address, and all web clients'."""
        if not self.web:
            return [f"session:{self.session}"]
        return [f"session:{self.session}", f"address:{self.address}", ALL_WEB]


def _limit(key: str) -> int:
    if key == ALL_WEB:
        return MAX_WEB_FAILURES
    return MAX_ADDRESS_FAILURES if key.startswith("address:") else MAX_FAILURES


def _record(root: Path) -> dict:
    stored = read_json(root / FAILURES_FILE, {})
    if not isinstance(stored, dict):
        return {"failures": {}, "audited": {}}
    failures = stored.get("failures") if isinstance(stored.get("failures"), dict) else {}
    audited = stored.get("audited") if isinstance(stored.get("audited"), dict) else {}
    return {"failures": {k: [float(t) for t in v if isinstance(t, (int, float))] for k, v in failures.items()
                         if isinstance(v, list)},
            "audited": {k: v for k, v in audited.items() if isinstance(v, list) and len(v) == 2}}


def _save(root: Path, record: dict, now: float) -> None:
    """Drop what is older than the window, keep the newest keys, write atomically."""
    failures = {k: [t for t in v if now - FAILURE_WINDOW_S < t <= now] for k, v in record["failures"].items()}
    failures = dict(sorted(((k, v) for k, v in failures.items() if v), key=lambda kv: kv[1][-1])[-MAX_TRACKED_KEYS:])
    audited = {k: v for k, v in record["audited"].items() if now - float(v[0]) < FAILURE_WINDOW_S}
    write_json(root / FAILURES_FILE, {"failures": failures, "audited": audited})


def _audit_refusal(root: Path, record: dict, client: Client, outcome: str, now: float) -> None:
    """One audit line per client (its address when known, else its session) per minute, and at most
    :data:`AUDIT_REFUSALS_PER_MINUTE` from everyone; the attempts left out are counted on the client's next line."""
    key = f"address:{client.address}" if client.address != LOCAL else f"session:{client.session}"
    last, skipped = record["audited"].get(key, [0.0, 0])
    start, lines = record["audited"].get("*", [now, 0])
    if now - float(start) >= 60:
        start, lines = now, 0
    if now - float(last) < AUDIT_REFUSALS_EVERY_S or lines >= AUDIT_REFUSALS_PER_MINUTE:
        record["audited"][key] = [last, int(skipped) + 1]
        return
    detail = f"client {client.address}" + (
        f"; {int(skipped)} more refused attempts from this client since its last line" if skipped else "")
    audit_log.append("login", outcome=outcome, session=client.session, detail=detail, root=root)
    record["audited"][key] = [now, 0]
    record["audited"]["*"] = [start, int(lines) + 1]


def _unwritable(root: Path, error: OSError) -> AccessError:
    return AccessError(f"Sign-in is unavailable: the runs folder {root} cannot be written "
                       f"({error.strerror or error}), so attempts cannot be counted. Free space or make it writable.")


def login(password: str, root: Path | None = None, clock: Callable[[], float] = time.time,
          client: Client = Client()) -> AdminSession:
    """An :class:`AdminSession` for the right password; AccessError (wrong password, too many tries from this
    client, no administrator, a runs folder that cannot be written) otherwise. Every success goes to the audit
    log, refusals at most once a minute per client."""
    root = Path(root or runs_root())
    stored = configured_hash()
    if stored is None:
        raise NotConfiguredError()
    try:
        with folder_lock(root, "auth"):
            now = clock()
            record = _record(root)
            recent = {key: [t for t in record["failures"].get(key, []) if now - FAILURE_WINDOW_S < t <= now]
                      for key in client.keys()}
            blocked = [key for key, times in recent.items() if len(times) >= _limit(key)]
            if blocked:
                wait = max(min(recent[key]) + FAILURE_WINDOW_S - now for key in blocked)
                _audit_refusal(root, record, client, "rate limited", now)
                _save(root, record, now)
                raise RateLimitedError(wait, everyone=blocked == [ALL_WEB])
            if not verify_password(password, stored):
                for key, times in recent.items():
                    record["failures"][key] = [*times, now]
                _audit_refusal(root, record, client, "wrong password", now)
                _save(root, record, now)
                left = MAX_FAILURES - len(recent[client.keys()[0]]) - 1
                raise AccessError("Wrong password." + (
                    f" {left} more attempt{'s' if left != 1 else ''} before sign-in from this browser is paused for "
                    f"{FAILURE_WINDOW_S / 60:.0f} minutes." if left < 3 else ""))
            for key in client.keys():
                if key != ALL_WEB:  # one success does not forgive everybody's failures
                    record["failures"].pop(key, None)
            _save(root, record, now)
    except AccessError:
        raise
    except OSError as error:  # after AccessError, which is one (a PermissionError)
        raise _unwritable(root, error) from error
    nonce = secrets.token_hex(16)
    session = AdminSession(now, now + SESSION_LIFETIME_S, nonce, _sign(now, now + SESSION_LIFETIME_S, nonce, stored))
    audit_log.append("login", outcome="ok", session=session, detail=f"client {client.address}", root=root)
    return session


def require_admin(session: object, clock: Callable[[], float] = time.time) -> AdminSession:
    """``session`` if it is a valid, unexpired sign-in for the password configured now; AccessError otherwise."""
    stored = configured_hash()
    if stored is None:
        raise NotConfiguredError()
    if not isinstance(session, AdminSession):
        raise AccessError("Only an administrator may do this: sign in on the Retrain page first.")
    expected = _sign(session.issued, session.expires, session.nonce, stored)
    if not hmac.compare_digest(expected, str(session.signature)):
        raise AccessError("This sign-in is not valid (the password changed or the server restarted): sign in again.")
    if not session.issued <= clock() < session.expires:
        raise AccessError("The administrator sign-in has expired: sign in again.")
    return session
