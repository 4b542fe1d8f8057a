"""The bundled BUSI copy and its checksum manifest: `imagemasknet data verify` and the loader's refusal.

Small copies are real bundled files with the matching lines of the real ``checksums.sha256``; the
"whole bundled copy" cases link every bundled file into a temporary folder (so nothing in the
repository is touched) and replace only the file they change.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

import imagemasknet.data.busi as data_module
import imagemasknet.data.verify as verify_module
from imagemasknet import cli
from imagemasknet.data.busi import load_busi
from imagemasknet.data.owndata import load_dataset
from imagemasknet.data.verify import CHECKSUMS, DataIntegrityError, checksum_root, read_checksums, verify

BUNDLED = data_module.BUNDLED_COPY.parent  # data/busi
CASES = ["benign (1)", "benign (2)", "malignant (1)", "malignant (2)", "normal (1)", "normal (2)"]

pytestmark = pytest.mark.skipif(not (BUNDLED / CHECKSUMS).is_file(), reason=f"bundled BUSI copy not found in {BUNDLED}")


@pytest.fixture(autouse=True)
def forget_verified(monkeypatch):
    """Each test starts with no copy remembered as verified in this process."""
    monkeypatch.setattr(verify_module, "_verified_in_process", set())
    monkeypatch.delenv(verify_module.SKIP_ENV, raising=False)


def small_copy(dest: Path, cases: list[str] = CASES) -> Path:
    """``dest/busi``: a few real cases with their masks, the README, and their real checksum lines."""
    listed = read_checksums(BUNDLED / CHECKSUMS)
    chosen = ["README.md"]
    for case in cases:
        label = case.split(" (")[0]
        chosen.append(f"Dataset_BUSI_with_GT/{label}/images/{case}.png")
        chosen += sorted(rel for rel in listed if rel.startswith(f"Dataset_BUSI_with_GT/{label}/masks/{case}_mask"))
    busi = dest / "busi"
    for rel in chosen:
        (busi / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUNDLED / rel, busi / rel)
    (busi / CHECKSUMS).write_text("".join(f"{listed[rel]}  {rel}\n" for rel in chosen))
    return busi


def linked_bundled_copy(dest: Path) -> Path:
    """The whole bundled copy as symbolic links (cheap; nothing in the repository can change)."""
    busi = dest / "busi"
    for folder, _, names in os.walk(BUNDLED):
        for name in names:
            source = Path(folder) / name
            target = busi / source.relative_to(BUNDLED)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    return busi


def change_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    path.unlink()  # a link is replaced by a real, changed file
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


# --------------------------------------------------------------------------- the bundled copy

def test_bundled_copy_matches_its_manifest_and_is_the_default(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # the bundled copy is found from the package, not the working folder
    assert data_module.find_data_root() == data_module.BUNDLED_COPY
    for name in ("README.md", "manifest.csv", "near_duplicates.csv", CHECKSUMS):
        assert (BUNDLED / name).is_file(), name
    report = verify(BUNDLED)
    assert report.ok and report.checked == 1581, report.summary()
    assert cli.main(["data", "verify"]) == 0
    out = capsys.readouterr().out
    assert "1581 files listed; 0 missing, 0 changed, 0 extra" in out and out.strip().endswith("OK")
    # The Dataset folder or the busi/ folder above it: the same list is used.
    assert checksum_root(data_module.BUNDLED_COPY) == checksum_root(BUNDLED) == BUNDLED
    data = load_busi()
    assert len(data.cases) == 780 and data.root == data_module.BUNDLED_COPY


def test_a_changed_byte_and_a_missing_file_in_the_bundled_copy_are_caught(tmp_path, capsys):
    busi = linked_bundled_copy(tmp_path)
    changed = "Dataset_BUSI_with_GT/malignant/images/malignant (7).png"
    missing = "Dataset_BUSI_with_GT/benign/masks/benign (98)_mask_1.png"
    change_a_byte(busi / changed)
    (busi / missing).unlink()

    report = verify(busi / "Dataset_BUSI_with_GT")
    assert report.changed == [changed] and report.missing == [missing] and report.extra == []
    assert cli.main(["data", "verify", "--data", str(busi)]) == 1
    out = capsys.readouterr().out
    assert f"CHANGED  {changed}" in out and f"MISSING  {missing}" in out and out.strip().endswith("FAILED")

    with pytest.raises(DataIntegrityError) as error:
        load_busi(busi / "Dataset_BUSI_with_GT")
    message = str(error.value)
    assert changed in message and missing in message and "--no-verify" in message
    assert error.value.report.changed == [changed]
    # Told to go on, it loads (the damaged file is still read; the missing extra mask is simply absent).
    data = load_busi(busi / "Dataset_BUSI_with_GT", verify=False)
    assert len(data.cases) == 780
    assert data.by_id()["benign (98)"].mask_paths == (busi / "Dataset_BUSI_with_GT/benign/masks/benign (98)_mask.png",)


# --------------------------------------------------------------------------- small copies

def test_small_copy_verifies_and_loads(tmp_path):
    busi = small_copy(tmp_path)
    assert verify(busi).ok
    data = load_busi(busi / "Dataset_BUSI_with_GT")
    assert sorted(data.ids) == sorted(CASES)
    # The busi/ folder itself is accepted too.
    assert load_busi(busi).ids == data.ids


@pytest.mark.parametrize("damage", ["changed", "missing", "extra"])
def test_each_kind_of_damage_is_caught_and_refused_unless_told_to_go_on(damage, tmp_path, monkeypatch, capsys):
    busi = small_copy(tmp_path)
    root = busi / "Dataset_BUSI_with_GT"
    if damage == "changed":
        rel = "Dataset_BUSI_with_GT/benign/images/benign (2).png"
        change_a_byte(busi / rel)
    elif damage == "missing":
        rel = "Dataset_BUSI_with_GT/normal/masks/normal (1)_mask.png"
        (busi / rel).unlink()
    else:
        rel = "Dataset_BUSI_with_GT/malignant/images/malignant (99).png"
        shutil.copyfile(BUNDLED / rel, busi / rel)
    report = verify(busi)
    assert getattr(report, damage) == [rel]
    assert sum(map(len, (report.changed, report.missing, report.extra))) == 1

    with pytest.raises(DataIntegrityError, match=re.escape(f"1 {damage}: {rel}")):
        load_busi(root)
    with pytest.raises(DataIntegrityError):
        load_dataset(str(root))
    # The CLI says so in one line and exits 2 ...
    assert cli.main(["audit", "--data", str(root), "--format", "json"]) == 2
    assert rel in capsys.readouterr().err
    # ... and goes on with --no-verify, leaving the environment as it was.
    assert cli.main(["audit", "--data", str(root), "--format", "json", "--no-verify"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert verify_module.SKIP_ENV not in os.environ
    # verify=False, or the environment variable, go on too.
    expected = len(CASES) + (1 if damage == "extra" else 0)
    assert len(load_busi(root, verify=False).cases) == expected
    monkeypatch.setenv(verify_module.SKIP_ENV, "1")
    assert len(load_busi(root).cases) == expected


def test_repeated_loads_do_not_hash_again_until_a_file_changes(tmp_path, isolated_env, monkeypatch):
    busi = small_copy(tmp_path)
    root = busi / "Dataset_BUSI_with_GT"
    hashed = []
    real_verify = verify_module.verify
    monkeypatch.setattr(verify_module, "verify", lambda path: hashed.append(path) or real_verify(path))

    load_busi(root)
    assert len(hashed) == 1
    assert list(isolated_env.cache.glob("verified-*.json"))
    load_busi(root)
    assert len(hashed) == 1  # remembered in this process
    monkeypatch.setattr(verify_module, "_verified_in_process", set())
    load_busi(root)
    assert len(hashed) == 1  # remembered in the cache folder (a new process)

    # A change of content changes the file's time (set explicitly here: a same-size rewrite within one
    # clock tick could keep it), so the copy is hashed again and refused.
    target = root / "malignant" / "images" / "malignant (1).png"
    change_a_byte(target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataIntegrityError, match="malignant \\(1\\).png"):
        load_busi(root)
    assert len(hashed) == 2
    with pytest.raises(DataIntegrityError):  # a failure is never remembered
        load_busi(root)
    assert len(hashed) == 3


def test_folders_without_a_checksum_list_are_not_verified(make_busi_copy, tmp_path, capsys):
    root = make_busi_copy(CASES[:4], "kaggle", name="kaggle-download")
    assert checksum_root(root) is None
    assert len(load_busi(root).cases) == 4
    with pytest.raises(FileNotFoundError, match="nothing to verify against"):
        verify(root)
    assert cli.main(["data", "verify", "--data", str(root)]) == 2
    assert "nothing to verify against" in capsys.readouterr().err
    # A checksum list beside the folder that covers other folders is not this folder's.
    (tmp_path / CHECKSUMS).write_text(f"{'0' * 64}  elsewhere/file.png\n")
    assert checksum_root(root) is None


def test_a_malformed_checksum_list_is_a_clear_error(tmp_path):
    busi = small_copy(tmp_path)
    with open(busi / CHECKSUMS, "a") as handle:
        handle.write("not a checksum line\n")
    with pytest.raises(DataIntegrityError, match="line 14 is not 'SHA256  PATH'"):
        load_busi(busi / "Dataset_BUSI_with_GT")
