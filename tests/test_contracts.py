"""The contracts docs/architecture.md states — the prediction record, the model bundle and its card, the run
folder — read from the document itself and checked against the code, so neither can drift from the other."""
from __future__ import annotations

import re
from pathlib import Path

from imagemasknet.core import run_folder
from imagemasknet.core.paths import BUNDLED_COPY
from imagemasknet.data.scans import read_scan
from imagemasknet.inference.predictor import Predictor
from imagemasknet.inference.stream import CSV_FIELDS
from imagemasknet.models import bundle

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def documented(section: str, column: int = 0) -> list[str]:
    """The backticked names in the first column of the tables under ``## section``, in order."""
    text = DOC.read_text(encoding="utf-8")
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and not set(cells[0]) <= set("-: "):
            names += re.findall(r"`([^`]+)`", cells[column])
    return names


def test_a_prediction_record_has_exactly_the_documented_keys():
    prediction = Predictor.shipped(device="cpu").predict(read_scan(BUNDLED_COPY / "benign" / "images" / "benign (3).png"))
    record = prediction.record("benign (3).png")
    assert list(record) == documented("The prediction record")
    for key in record:  # every key has its CSV column, the probabilities and axes under their own names
        column = {"probabilities": "p_normal", "lesion_axes_mm": "lesion_long_mm"}.get(key, key)
        assert column in CSV_FIELDS or key == "model_sees_no_lesion", key


def test_a_bundle_holds_the_documented_files():
    files = [name for name in documented("The model bundle") if name.endswith((".safetensors", ".json"))]
    assert files[:5] == list(bundle.FILES)


def test_a_run_folder_is_named_and_written_as_documented():
    names = documented("The run folder")
    constants = [run_folder.CONFIG, run_folder.SPLIT, run_folder.HISTORY, run_folder.STATUS, run_folder.LOG,
                 run_folder.CALIBRATION, run_folder.BEST, run_folder.LAST, run_folder.STATE, run_folder.AVERAGE]
    assert set(constants) <= set(names)
    assert run_folder.metrics_file() in names and "metrics-LABEL.json" in names
    assert re.fullmatch(r"quick-\d{8}-\d{6}", run_folder.new_run_name("quick", DOC.parent / "no-such-folder"))
