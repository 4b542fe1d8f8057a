"""The one run-folder reader: it reads what a run wrote, never raises for a damaged folder but says what is
wrong, and lists only folders inside the results root."""
from __future__ import annotations

import os

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder, cv_groups, results_folder, results_folders, scan_runs

EPOCH = {"epoch": 1, "train": {"loss": 1.0}, "heldout": {"image": {"accuracy": 0.5}, "mask": {"accuracy": 0.75}},
         "validation": {"image": {"loss": 0.9}}}


def _run(folder, state="finished", epochs=2, **status):
    write_json(folder / "config.json", {"arch": "lesion-resunet", "epochs": epochs, "fold": None})
    write_json(folder / "history.json", [EPOCH, {**EPOCH, "epoch": 2, "heldout": {"image": {"accuracy": 0.6}}}])
    write_json(folder / "status.json", {"state": state, **status})
    write_json(folder / "calibration.json", {"temperature": {"image": 1.3, "mask": 1.1}})
    write_json(folder / "metrics.json", {"modes": {"image": {"metrics": {"accuracy": {"value": 0.6}}}}})
    return folder


def test_a_finished_run_reads_whole(tmp_path):
    run = RunFolder(_run(tmp_path / "lesion-resunet-fold3"))
    assert run.complete and run.problems == [] and run.state == "finished"
    assert (run.preset, run.fold, run.arch, run.epochs_done, run.epochs_total) == ("lesion-resunet", 3, "lesion-resunet", 2, 2)
    assert run.temperatures == {"image": 1.3, "mask": 1.1} and run.modes == ["image", "mask"]
    assert run.last_epoch("accuracy") == {"image": 0.6}  # the last epoch that recorded it
    assert set(run.metrics) == {"metrics"}


def test_a_damaged_run_says_what_is_wrong_and_keeps_what_it_has(tmp_path):
    folder = _run(tmp_path / "cut", state="running", pid=2**22 + 4321)
    (folder / "history.json").write_text('[{"epoch": 1, "train": {"lo')
    (folder / "metrics-test.json").write_text('{"n": 3}')
    run = RunFolder(folder)
    assert run.state == "crashed" and not run.complete
    assert any("history.json is not valid JSON" in p for p in run.problems)
    assert "metrics-test.json has no per-mode results" in run.problems
    assert any("process 4198625 is gone" in p for p in run.problems)
    assert run.config["arch"] == "lesion-resunet" and run.history == [] and set(run.metrics) == {"metrics"}


def test_a_folder_of_nothing_reads_as_empty(tmp_path):
    run = RunFolder(tmp_path / "nothing")
    assert run.config == {} and run.history == [] and run.temperatures == {} and run.log_tail() == ""
    assert "config.json is missing" in run.problems


def test_folds_group_by_preset_and_only_the_root_and_its_result_folders_are_listed(tmp_path):
    root = tmp_path / "runs"
    for k in (0, 1):
        _run(root / "cv" / f"lesion-resunet-fold{k}")
    _run(root / "single")
    outside = _run(tmp_path / "elsewhere" / "secret-fold0").parent
    os.symlink(outside, root / "escape")
    assert results_folders(root) == ["", "cv"]
    assert results_folder(root, "cv") == root / "cv"
    assert results_folder(root, "escape") is None and results_folder(root, "..") is None
    assert results_folder(root, str(outside)) is None
    assert [r.name for r in scan_runs(root, inside=root)] == ["single"]
    assert scan_runs(root / "escape", inside=root) == []
    groups = cv_groups(scan_runs(root / "cv", inside=root))
    assert [r.fold for r in groups["lesion-resunet"]] == [0, 1]


# --------------------------------------------------------------------------------------------- issue 28


def test_links_planted_in_a_run_folder_are_never_followed(tmp_path):
    """A visitor's page read what a planted link pointed to (`ln -s /etc/passwd runs/r/log.txt`); now the
    link is named as a problem and nothing behind it is read."""
    secret = tmp_path / "secrets.toml"
    secret.write_text('admin_password_hash = "scrypt$..."\n')
    folder = _run(tmp_path / "planted")
    (folder / "log.txt").symlink_to(secret)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(secret)
    run = RunFolder(folder)
    assert run.log_tail() == "" and run.config == {}
    assert any("config.json" in p and "symbolic link" in p for p in run.problems)
    from imagemasknet.ops.jobs import Job
    assert "scrypt" not in Job._read(folder / "log.txt")


def test_damaged_run_files_are_problems_not_crashes(tmp_path):
    folder = _run(tmp_path / "odd")
    write_json(folder / "metrics-test.json", {"modes": {"image": {"confusion": "not a table", "metrics": {}}}})
    (folder / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    with open(folder / "metrics-big.json", "wb") as big:  # 2 GB, sparse: refused by its size, never read
        big.truncate(2 * 2**30)
    with open(folder / "log.txt", "wb") as log:
        log.truncate(2 * 2**30)
        log.seek(2 * 2**30 - 20)
        log.write(b"\nlast line of a log\n")
    run = RunFolder(folder)
    assert "metrics-test.json has a 'image' confusion matrix that is not a square table of counts" in run.problems
    assert any("history.json is nested too deeply" in p for p in run.problems) and run.history == []
    assert any("metrics-big.json" in p and "more than" in p for p in run.problems)
    assert set(run.metrics) == {"metrics"}  # the sound report is still there
    assert run.log_tail(1) == "last line of a log"  # the end of a 2 GB log, read from its last 64 KB
