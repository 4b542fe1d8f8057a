"""Check a BUSI copy against its ``checksums.sha256``: missing, changed and extra files.

The bundled copy (``data/busi/``) and the shared copy carry a ``checksums.sha256`` in ``sha256sum``
format, paths relative to the ``busi/`` folder (``Dataset_BUSI_with_GT/benign/images/benign (1).png``).
:func:`verify` hashes every listed file and walks the folder for files the list does not name.

:func:`ensure_verified` is what the loader calls: the first load of a copy hashes everything (about
half a second for the 108 MB of BUSI); a copy that passed is remembered by the size and modification
time of each of its files (in memory and in :func:`imagemasknet.data.busi.cache_dir`), so later loads only
stat the files. ``imagemasknet data verify`` always hashes everything. A folder with no
``checksums.sha256`` beside it (a user's own Kaggle download, a clinic's folder) is not checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagemasknet.core.paths import cache_dir

CHECKSUMS = "checksums.sha256"
SKIP_ENV = "IMAGEMASKNET_SKIP_VERIFY"
_verified_in_process: set[str] = set()


class DataIntegrityError(ValueError):
    """A data copy whose files do not match its checksum manifest."""

    def __init__(self, message: str, report: "VerifyReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class VerifyReport:
    """What :func:`verify` found; paths are relative to ``root`` (the folder holding the checksums)."""

    root: Path
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    checked: int = 0  # files listed in the manifest

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    def __bool__(self) -> bool:  # truthy when there are problems, like LoadReport
        return not self.ok

    def counts(self) -> str:
        return f"{len(self.missing)} missing, {len(self.changed)} changed, {len(self.extra)} extra"

    def summary(self, limit: int = 8) -> str:
        """One paragraph naming the files (at most ``limit`` per kind)."""
        parts = []
        for kind, paths in (("changed", self.changed), ("missing", self.missing), ("extra", self.extra)):
            if paths:
                shown = ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
                parts.append(f"{len(paths)} {kind}: {shown}")
        return "; ".join(parts) if parts else f"all {self.checked} files match"

    def format(self) -> str:
        """Every file, one a line (what ``imagemasknet data verify`` prints)."""
        lines = [f"{self.root / CHECKSUMS}: {self.checked} files listed; {self.counts()}"]
        for kind, paths in (("CHANGED", self.changed), ("MISSING", self.missing), ("EXTRA", self.extra)):
            lines += [f"{kind:8} {p}" for p in paths]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"root": str(self.root), "checked": self.checked, "ok": self.ok, "missing": self.missing,
                "changed": self.changed, "extra": self.extra}


def checksum_root(path: str | os.PathLike) -> Path | None:
    """The folder whose ``checksums.sha256`` covers ``path``: ``path`` itself (the ``busi/`` folder), or
    its parent when the parent's list names files under ``path`` (the ``Dataset_BUSI_with_GT`` folder)."""
    path = Path(path)
    if (path / CHECKSUMS).is_file():
        return path
    listing = path.parent / CHECKSUMS
    if listing.is_file():
        prefix = path.name + "/"
        try:
            if any(rel.startswith(prefix) for rel in read_checksums(listing)):
                return path.parent
        except (OSError, UnicodeDecodeError):
            return path.parent  # unreadable list: let verify() report it
    return None


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """``sha256sum`` output → {relative path: hex digest}. Both text (``HASH  name``) and binary
    (``HASH *name``) lines are read; blank lines and ``#`` comments are skipped."""
    entries: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition(" ")
        if not sep or len(digest) != 64 or not name or name[0] not in " *":
            raise DataIntegrityError(f"{path}: line {number} is not 'SHA256  PATH': {line[:80]!r}")
        entries[name[1:]] = digest.lower()
    return entries


def _listing(root: Path) -> dict[str, os.stat_result]:
    """Every regular file under ``root`` (relative POSIX path → stat), hidden files and folders and the
    checksum list itself left out."""
    files: dict[str, os.stat_result] = {}
    pending = [(str(root), "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            try:
                if entry.is_dir():
                    pending.append((entry.path, rel + "/"))
                elif rel != CHECKSUMS:
                    files[rel] = entry.stat()
            except OSError:
                continue
    return files


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify(root: str | os.PathLike) -> VerifyReport:
    """Hash every file ``checksums.sha256`` lists under ``root`` (the ``busi/`` folder, or the
    ``Dataset_BUSI_with_GT`` folder inside it) and look for files it does not list."""
    base = checksum_root(root)
    if base is None:
        raise FileNotFoundError(f"no {CHECKSUMS} in {Path(root)} or beside it: nothing to verify against")
    expected = read_checksums(base / CHECKSUMS)
    present = _listing(base)
    report = VerifyReport(base, checked=len(expected))
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            report.missing.append(rel)
            continue
        try:
            if _sha256(base / rel) != digest:
                report.changed.append(rel)
        except OSError:
            report.changed.append(rel)  # unreadable counts as not matching
    report.extra = sorted(rel for rel in present if rel not in expected)
    return report


def _signature(base: Path) -> str:
    """Changes when the checksum list or any file's name, size or modification time changes."""
    digest = hashlib.sha256((base / CHECKSUMS).read_bytes())
    digest.update(str(base.resolve()).encode())
    for rel, info in sorted(_listing(base).items()):
        digest.update(f"{rel}|{info.st_size}|{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() not in ("", "0", "false", "no")


def ensure_verified(dataset_root: str | os.PathLike) -> VerifyReport | None:
    """Refuse (:class:`DataIntegrityError`) a copy that does not match its checksum list.

    Returns None when there is no list to check against, else the report (with ``checked`` = 0 when
    the copy was already verified with these exact file sizes and times)."""
    base = checksum_root(dataset_root)
    if base is None:
        return None

    try:
        signature = _signature(base)
    except OSError as error:
        raise DataIntegrityError(f"cannot read {base / CHECKSUMS}: {error}") from error
    marker = cache_dir() / f"verified-{signature[:32]}.json"
    if signature in _verified_in_process or marker.is_file():
        _verified_in_process.add(signature)
        return VerifyReport(base)
    report = verify(base)
    if not report.ok:
        raise DataIntegrityError(
            f"The data copy in {base} does not match its {CHECKSUMS} ({report.counts()}). {report.summary()}. "
            "Restore or remove those files (in a clone of the project: `git checkout -- data/busi`, and "
            f"`git clean` for extra files), check the copy with `imagemasknet data verify --data {base}`, "
            f"or load it anyway with --no-verify (or {SKIP_ENV}=1, or verify=False).", report)
    _verified_in_process.add(signature)
    try:
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"root": str(base), "files": report.checked}) + "\n")
        os.replace(tmp, marker)
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time
    return report
