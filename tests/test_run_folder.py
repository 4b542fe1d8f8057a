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
