"""The active model: promoting a finished run in place of the shipped model, rolling it back, and comparing a
run with the model it would replace.

``active`` → ``.models/<version>/`` in the runs folder is the promoted model, a whole bundle
(:mod:`imagemasknet.models.bundle`): the weights, the card (arch, config, preprocessing, temperature, version,
promoted_at, held-out metrics), a familiarity reference computed from the run's training scans
(:func:`~imagemasknet.ops.release.run_material`), its curves, and ``previous/`` (the bundle it replaced, for
:func:`rollback`). A run has no cross-validation, so no malignancy flag: it is promoted only with a reason, and
every page says the flag is missing while it is active. ``active`` is a symbolic link swapped with one
``os.replace``, so at every instant it names a complete, loadable folder; without it the shipped model is the
active one (:class:`~imagemasknet.models.bundle.ModelStore`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from imagemasknet.core.files import folder_lock, now
from imagemasknet.core.paths import ACTIVE_NAME, runs_root
from imagemasknet.core.processes import process_alive
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import DEFAULT_MODEL, get_spec
from imagemasknet.models.bundle import (CARD, FAMILIARITY, FILES, HISTORY, MODELS_DIR, PREVIOUS, WEIGHTS, Bundle,
                                        BundleError, ModelStore)
from imagemasknet.models.card import ModelCard
from imagemasknet.models.weights import WeightsError, load_model
from imagemasknet.ops import audit_log
from imagemasknet.ops.access import AdminSession, require_admin
from imagemasknet.ops.jobs import job
from imagemasknet.ops.release import run_material
from imagemasknet.ops.train_lock import JobError
#: Held-out metrics compared between a finished run and the active model.
COMPARED_METRICS = ("accuracy", "macro_f1", "macro_auc", "recall_malignant", "lesion_dice")


class PromotionError(JobError):
    """A run that may not be promoted, or a promotion that failed (the active model is unchanged)."""


def _check_loads(arch: str, weights: Path, image_size: int) -> None:
    try:
        load_model(arch, weights, image_size, "cpu")
    except (WeightsError, KeyError, ValueError) as error:
        raise PromotionError(f"{weights} does not load as {arch}: {error}") from error


def _copy_file(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_model(source: Path, target: Path) -> None:
    """Copy a bundle's files (not its ``previous/``) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (source / name).is_file():
            _copy_file(source / name, target / name)
    _fsync_dir(target)


def _last_heldout(history: list[dict]) -> dict:
    for entry in reversed(history):
        if isinstance(entry.get("heldout"), dict) and entry["heldout"]:
            return entry["heldout"]
    return {}


def run_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    """mode → metric → value for a run: its evaluation (metrics.json) where present, else the last
    epoch's held-out numbers."""
    run = RunFolder(Path(run_dir))
    out: dict[str, dict[str, float]] = {}
    for mode, values in _last_heldout(run.history).items():
        if isinstance(values, dict):
            out[mode] = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    report = run.metrics.get("metrics")  # metrics.json: the evaluation of the run's best checkpoint
    if report is not None:
        for mode, result in report["modes"].items():
            for metric, entry in ((result or {}).get("metrics") or {}).items():
                value = entry.get("value") if isinstance(entry, dict) else entry
                if isinstance(value, (int, float)):
                    out.setdefault(mode, {})[metric] = float(value)
    return out


def check_promotable(name: str, root: Path | None = None) -> RunFolder:
    """The run, if it finished and its best checkpoint loads; PromotionError saying why not otherwise."""
    root = Path(root or runs_root()).resolve()
    found = job(name, root)
    if not found.path.is_dir():
        raise PromotionError(f"run {name} has no run folder (it failed before training started)")
    state = found.state
    if state != "finished":
        raise PromotionError(f"run {name} is {state}; only a finished run can be promoted")
    run = RunFolder(found.path)
    config = run.config
    best = found.path / "best.safetensors"
    if not config.get("arch") or not best.is_file():
        raise PromotionError(f"run {name} has no best.safetensors to promote")
    _check_loads(config["arch"], best, ModelCard.for_run(run).image_size)
    return run


def promotion_concerns(name: str, root: Path | None = None) -> list[str]:
    """Why promoting a finished run needs an administrator's explicit override, as sentences: it trained on
    a subset (``limit``), or it is below the active model on malignant sensitivity (image mode, where both
    are known). Empty when it may be promoted as it is."""
    root = Path(root or runs_root()).resolve()
    config = RunFolder(root / name).config
    concerns = ["it has no malignancy flag and no lesion exclusion (only a cross-validation sets them, with "
                "`imagemasknet release`), so while it is active no result is flagged or reassured as normal"]
    if config.get("limit"):
        concerns.append(f"it trained on a subset of {config['limit']} scans per split (a quick check, not a model)")
    row = next((r for r in comparison(name, root) if r["metric"] == "recall_malignant" and r["mode"] == "image"), None)
    if row and row["active"] is not None and row["run"] is not None and row["run"] < row["active"]:
        concerns.append(f"its malignant sensitivity ({row['run']:.3f}) is below the active model's ({row['active']:.3f})")
    return concerns


def promote(name: str, root: Path | None = None, *, admin: AdminSession | None = None,
            override: str | None = None) -> ModelCard:
    """Make a finished run the active model; the model it replaces becomes ``active/previous``.

    A run with :func:`promotion_concerns` is refused unless ``override`` gives the administrator's reason,
    which the audit log records with the concerns. The new model is staged in a fresh folder under
    ``.models/``, checked to load, and only then is the ``active`` link swapped with one ``os.replace``: a
    crash or a full disk at any point leaves the previous active model in place and loadable. Only for a
    signed-in administrator; audited. Returns the new model's card.
    """
    require_admin(admin)
    root = Path(root or runs_root()).resolve()
    job(name, root)  # a name that is no run name (a path) is refused before anything is logged or read
    concerns = promotion_concerns(name, root) if RunFolder(root / name).path.is_dir() else []
    reason = (override or "").strip()
    detail = f"override: {reason}; concerns: {'; '.join(concerns)}" if concerns and reason else None
    with _audited("promote", name, admin, root, detail):
        if concerns and not reason:
            raise PromotionError(f"run {name} is not promoted: {'; and '.join(concerns)}. Promote it anyway only with "
                                 "a reason, which the audit log records.")
        return _promote(name, root)


@contextlib.contextmanager
def _audited(action: str, run: str | None, admin: AdminSession, root: Path, detail: str | None = None) -> Iterator[None]:
    """Log ``action`` when it starts (so a process killed halfway still leaves its entry;
    :func:`~imagemasknet.ops.audit_log.close_interrupted` completes it later) and with the active model's hash
    before and after when it ends, whether it succeeds or not."""
    before = audit_log.active_model_hash(root)
    audit_log.append(action, run=run, outcome="started", session=admin, model_before=before, model_after=before,
                     root=root)
    try:
        yield
    except Exception as error:
        audit_log.append(action, run=run, outcome="failed", session=admin, model_before=before,
                         model_after=audit_log.active_model_hash(root), detail=str(error), root=root)
        raise
    audit_log.append(action, run=run, session=admin, model_before=before,
                     model_after=audit_log.active_model_hash(root), root=root,
                     **({"detail": detail} if detail else {}))


def _promote(name: str, root: Path) -> ModelCard:
    run = check_promotable(name, root)
    config = run.config
    spec = get_spec(config["arch"])
    card = dataclasses.replace(
        ModelCard.for_run(run), promoted_at=now(), heldout=run_metrics(run.path),
        architecture={"name": spec.name, "modes": list(spec.modes), "predicts_lesion": spec.predicts_lesion},
        trained_on=f"run {name}" + (f", fold {config.get('fold')} held out" if config.get("fold") is not None
                                    else ", all data") + (f", subset of {config['limit']} scans per split"
                                                          if config.get("limit") else ""))
    predictor = Predictor(Bundle.of_run(run), device="cpu", check_training_data=False)
    reference, familiarity = run_material(run, predictor)
    card = dataclasses.replace(card, familiarity=familiarity)
    with folder_lock(root, ACTIVE_NAME):
        current = ModelStore(runs=root).promoted_folder()
        staging = _stage(root, name, lambda folder: _fill_new(folder, run.path, card, reference, current))
        _swap_active(root, staging)
    return card


def _fill_new(folder: Path, run_dir: Path, card: ModelCard, reference, previous: Path | None) -> None:
    _copy_file(run_dir / "best.safetensors", folder / WEIGHTS)
    card.write(folder / CARD)
    reference.save(folder / FAMILIARITY)
    if (run_dir / "history.json").is_file():
        _copy_file(run_dir / "history.json", folder / HISTORY)
    if previous is not None:
        _copy_model(previous, folder / PREVIOUS)


def _stage(root: Path, version: str, fill) -> Path:
    """A complete, checked model folder under ``.models/`` (removed again if anything fails)."""
    models = root / MODELS_DIR
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", suffix=".tmp", dir=models))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from other accounts
        fill(staging)
        try:
            card = Bundle.read(staging).card
        except BundleError as error:
            raise PromotionError(f"the staged model folder is incomplete ({error})") from error
        _check_loads(card.arch, staging / WEIGHTS, card.image_size)
        _fsync_dir(staging)
        final = models / f"{version}-{time.strftime('%Y%m%d-%H%M%S')}-{staging.name[-12:-4]}"
        os.replace(staging, final)
        _fsync_dir(models)
        return final
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
            raise PromotionError(f"promotion failed ({reason}); the active model is unchanged") from error
        raise


def _swap_active(root: Path, target: Path | None) -> None:
    """Point ``active`` at ``target`` (None: back to the shipped model) in one atomic step."""
    link = ModelStore(runs=root).active_link
    if link.exists() and not link.is_symlink():
        # A plain folder (made by hand): move it aside first; a crash here falls back to shipped.
        os.replace(link, root / MODELS_DIR / f"manual-{time.strftime('%Y%m%d-%H%M%S')}")
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
    else:
        temporary = root / f".{ACTIVE_NAME}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(os.path.relpath(target, root), temporary, target_is_directory=True)
        os.replace(temporary, link)
    _fsync_dir(root)
    _prune(root, keep=target)
    _remove_stale_links(root)


def _remove_stale_links(root: Path) -> None:
    """Temporary ``active`` links left by promotions killed before their swap (their process is gone)."""
    for leftover in root.glob(f".{ACTIVE_NAME}.*.tmp"):
        pid = leftover.name.split(".")[2]
        if leftover.is_symlink() and pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _prune(root: Path, keep: Path | None, spare: int = 2) -> None:
    """Delete old model folders (leftovers of interrupted promotions included), sparing the active one
    and the ``spare`` newest others, which a reader may still be loading."""
    models = root / MODELS_DIR
    with contextlib.suppress(OSError):
        folders = sorted((p for p in models.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        kept = 0
        for folder in folders:
            if keep is not None and folder.resolve() == keep.resolve():
                continue
            if kept < spare and not folder.name.startswith("."):
                kept += 1
                continue
            shutil.rmtree(folder, ignore_errors=True)


def rollback(root: Path | None = None, *, admin: AdminSession | None = None) -> ModelCard | None:
    """Restore the model the active one replaced. Returns the card now active, or None when that is the
    shipped model. The rolled-back model becomes ``previous``, so a second roll back undoes the first.
    Only for a signed-in administrator; audited."""
    require_admin(admin)
    root = Path(root or runs_root()).resolve()
    promoted = ModelStore(runs=root).promoted()
    with _audited("rollback", promoted.card.version if promoted else None, admin, root):
        return _rollback(root)


def _rollback(root: Path) -> ModelCard | None:
    store = ModelStore(runs=root)
    with folder_lock(root, ACTIVE_NAME):
        folder = store.promoted_folder()
        if folder is None:
            raise PromotionError("nothing to roll back: the shipped model is the active model")
        previous = store.previous()
        if previous is None:
            _swap_active(root, None)
            return None

        def fill(staging: Path) -> None:
            _copy_model(folder / PREVIOUS, staging)
            _copy_model(folder, staging / PREVIOUS)

        _swap_active(root, _stage(root, previous.card.version or "previous", fill))
        return previous.card


def comparison(name: str, root: Path | None = None) -> list[dict]:
    """Rows {metric, mode, active, run}: a run's held-out numbers beside the active model's (the shipped
    card's cross-validation means, or a promoted model's own held-out numbers)."""
    root = Path(root or runs_root()).resolve()
    mine = run_metrics(root / name)
    promoted = ModelStore(runs=root).promoted()
    theirs = promoted.card.heldout if promoted is not None else _shipped_means()
    rows = []
    for mode in sorted(set(mine) | set(theirs), key=lambda m: (m != "image", m)):
        for metric in COMPARED_METRICS:
            a, b = (theirs.get(mode) or {}).get(metric), (mine.get(mode) or {}).get(metric)
            if a is None and b is None:
                continue
            rows.append({"metric": metric, "mode": mode, "active": a, "run": b,
                         "difference": None if a is None or b is None else b - a})
    return rows


def active_model_notice(root: Path | None = None) -> str | None:
    """The banner every page shows while a promoted model replaces the shipped one (and what it cannot do);
    None otherwise."""
    promoted = ModelStore(runs=root).promoted() if root else ModelStore().promoted()
    if promoted is None:
        return None
    card = promoted.card
    gaps = "".join(f" Note: {gap}." for gap in promoted.missing)
    return (f"Active model: {card.version}, a retrained {card.arch} promoted {card.promoted_at or '?'}, "
            f"in place of the shipped {DEFAULT_MODEL}. Its figures are its own run's, not the shipped model's "
            f"cross-validation; an administrator can roll it back on the Retrain page.{gaps}")


def active_label(root: Path | None = None) -> str:
    """A short name for the active model: the promoted run's, or the shipped model's."""
    promoted = ModelStore(runs=root).promoted() if root else ModelStore().promoted()
    return f"{promoted.card.version} (promoted {promoted.card.promoted_at or '?'})" if promoted else f"shipped {DEFAULT_MODEL}"


def _shipped_means() -> dict[str, dict[str, float]]:
    """The shipped default's cross-validation means; none when its bundle is missing or unreadable."""
    try:
        return ModelStore().shipped().card.cross_validation_means()
    except BundleError:
        return {}
