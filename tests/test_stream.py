"""Streaming batch prediction (``imagemasknet predict --out/--resume/--workers``) on real BUSI scans:
the same records as the in-memory path, written as they come, resumable after a crash."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from imagemasknet import cli
from imagemasknet.data.scans import read_scan
from imagemasknet.inference.predictor import Predictor
from imagemasknet.inference.stream import CSV_FIELDS, done_files, scan_files


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.shipped(device="cpu")


def busi_scans(busi_root: Path, count: int) -> list[str]:
    """``count`` scan files spread over the three classes (no masks)."""
    files = sorted(str(p) for p in busi_root.glob("*/images/*.png"))
    if not files:
        files = sorted(str(p) for p in busi_root.rglob("*.png") if "_mask" not in p.name)
    step = len(files) / count
    return [files[int(k * step)] for k in range(count)]


def in_memory(predictor: Predictor, files: list[str]) -> list[dict]:
    """The one-scan-at-a-time path the app uses."""
    return [predictor.predict(read_scan(f, name=Path(f).name)).record(f) for f in files]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_streamed_records_equal_the_in_memory_path_on_100_scans(busi_root, predictor, tmp_path, capsys):
    files = busi_scans(busi_root, 100)
    expected = in_memory(predictor, files)
    out = tmp_path / "predictions.jsonl"
    assert cli.main(["predict", *files, "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    assert "100 predicted, 0 unreadable" in capsys.readouterr().err
    assert read_jsonl(out) == expected  # same order, same floats (JSON round-trips them exactly)

    # --json still prints one list, the same records, through the same streaming path.
    assert cli.main(["predict", *files[:20], "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == expected[:20]


def test_resume_skips_done_files_and_redoes_a_torn_last_record(busi_root, predictor, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for f in busi_scans(busi_root, 9):
        (folder / Path(f).name).symlink_to(f)
    (folder / "zz-not-a-scan.png").write_text("this is text, not a PNG")
    files = scan_files([folder])
    out = tmp_path / "out.jsonl"
    assert cli.main(["predict", str(folder), "--out", str(out), "--no-progress"]) == 0
    complete = read_jsonl(out)
    assert [r["file"] for r in complete] == files
    assert "error" in complete[-1] and all("error" not in r for r in complete[:-1])

    # Without --resume an existing output file is refused, never overwritten.
    assert cli.main(["predict", str(folder), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err

    # A crash mid-write: four whole records, then half of the fifth.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    assert set(done_files(out)) == set(files[:4])  # the torn record is cut off
    assert out.read_text() == "".join(lines[:4])
    assert cli.main(["predict", str(folder), "--out", str(out), "--resume", "--workers", "1", "--no-progress"]) == 0
    assert "5 predicted, 1 unreadable, 4 already in the file" in capsys.readouterr().err
    assert read_jsonl(out) == complete

    # Everything done: nothing new, and still exit 0 (the file holds predictions).
    assert cli.main(["predict", str(folder), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "0 predicted, 0 unreadable, 10 already in the file" in capsys.readouterr().err


def test_csv_output_and_file_list(busi_root, predictor, tmp_path, capsys):
    files = busi_scans(busi_root, 6)
    listing = tmp_path / "list.txt"
    listing.write_text("# scans to do\n" + "\n".join(files[:3]) + "\n\n")
    out = tmp_path / "out.csv"
    assert cli.main(["predict", *files[3:], "--files-from", str(listing), "--out", str(out), "--no-progress"]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == CSV_FIELDS
    expected = in_memory(predictor, files[3:] + files[:3])
    assert [r[0] for r in rows[1:]] == [e["file"] for e in expected]
    for row, record in zip(rows[1:], expected):
        assert row[1] == record["predicted_class"]
        flagged = record["suspicious_for_malignancy"]
        assert row[CSV_FIELDS.index("suspicious_for_malignancy")] == ("" if flagged is None else str(flagged).lower())
        assert float(row[4]) == pytest.approx(record["probabilities"]["malignant"], abs=1e-6)
    assert set(done_files(out)) == set(files)
    capsys.readouterr()

    # --csv on stdout: the same columns, row by row.
    assert cli.main(["predict", *files[:2], "--csv", "--no-progress"]) == 0
    printed = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert printed[0] == CSV_FIELDS and [r[0] for r in printed[1:]] == files[:2]


def test_formula_like_names_resume_and_same_named_scans_keep_their_own_grad_cam(busi_root, tmp_path, capsys,
                                                                                monkeypatch):
    """Review of issue 28: a CSV --resume compared raw names with the quoted ones the CSV holds ("'-scan.png"), so
    such files were predicted again on every resume; overlays of same-named scans overwrote each other; and one
    overlay that could not be saved ended the whole batch."""
    source = busi_scans(busi_root, 2)
    for folder, scan in zip(("a", "b"), source):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "-scan.png").symlink_to(scan)
    out, overlays = tmp_path / "out.csv", tmp_path / "cams"
    assert cli.main(["predict", str(tmp_path / "in"), "--out", str(out), "--grad-cam", str(overlays), "--no-progress"]) == 0
    assert sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png")) == [
        "a/-scan.gradcam.png", "b/-scan.gradcam.png"]
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "in"), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "0 predicted, 0 unreadable, 2 already in the file" in capsys.readouterr().err

    from imagemasknet.inference import stream

    def disk_full(path, write, mode=None):
        if "/b/" in str(path):
            raise OSError(28, "No space left on device")
        write(tmp_path / "scratch.png")

    monkeypatch.setattr(stream, "atomic_write", disk_full)
    assert cli.main(["predict", str(tmp_path / "in"), "--json", "--grad-cam", str(overlays), "--no-progress"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert "error" not in first and second["error"]["type"] == "OSError" and "No space left" in second["error"]["message"]
    assert cli.main(["predict", str(tmp_path / "in"), "--json", "--grad-cam", str(out), "--no-progress"]) == 2
    assert "cannot save Grad-CAM overlays" in capsys.readouterr().err


def test_predict_refuses_resume_without_out_and_an_empty_input(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--no-progress"]) == 2
    assert "no scans" in capsys.readouterr().err
