"""AppTest of the Gallery and Training pages on real data: a 31-case copy of BUSI, a real 1-epoch training
run (evaluated), real cross-validation folders when the checkout has them under results/ (else a second
real 1-epoch fold), and deliberately half-written run folders (truncated JSON, an empty history, a crashed
run)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import imagemasknet.data.busi as data_module
from imagemasknet.app import charts
from imagemasknet.app import gallery as g
from imagemasknet.app import tables
from imagemasknet.core import run_folder
from imagemasknet.data.splits import load_folds
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.ops import jobs

REPO = Path(__file__).resolve().parent.parent
GALLERY = str(REPO / "app_pages" / "gallery.py")
TRAINING = str(REPO / "app_pages" / "training.py")



def find_cv_results() -> Path | None:
    """A cross-validation results folder of this checkout (results/ is not committed): one holding
    ``<preset>-fold<k>`` run folders of at least two presets, else of one."""
    candidates = sorted(p for p in (REPO / "results").glob("*") if p.is_dir()) if (REPO / "results").is_dir() else []
    scored = [(len(run_folder.cv_groups(run_folder.scan_runs(p))), p) for p in candidates]
    scored = [(n, p) for n, p in scored if n]
    return max(scored, key=lambda item: item[0])[1] if scored else None


CV_RESULTS = find_cv_results()
NO_WEIGHTS = shutil.ignore_patterns("*.safetensors")
TIMEOUT = 180

#: Three label-conflict groups, same-label near-duplicates, and singletons of every class over all five folds.
SUBSET = (["normal (1)", "benign (269)", "benign (399)", "malignant (93)", "benign (131)", "benign (42)", "malignant (51)",
           "benign (1)", "benign (318)"]
          + [f"normal ({i})" for i in range(2, 9)] + [f"benign ({i})" for i in range(5, 12)]
          + [f"malignant ({i})" for i in range(1, 9)])
CONFLICTS = {"normal (1)", "benign (269)", "benign (399)", "malignant (93)", "benign (131)", "benign (42)", "malignant (51)"}
DUPLICATES = CONFLICTS | {"benign (1)", "benign (318)", "malignant (4)", "malignant (5)", "malignant (7)", "malignant (8)"}


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def busi_subset(copy_busi_cases, tmp_path_factory) -> Path:
    return copy_busi_cases(tmp_path_factory.mktemp("busi-subset") / "Dataset_BUSI_with_GT", SUBSET)


@pytest.fixture(scope="session")
def gallery_cache(tmp_path_factory) -> Path:
    """One cache for the session: the shipped model classifies the subset once."""
    return tmp_path_factory.mktemp("gallery-cache")


@pytest.fixture
def gallery_env(monkeypatch, isolated_env, busi_subset, gallery_cache):
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(busi_subset))
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(gallery_cache))
    return busi_subset


def _cli(*args: str, env: dict) -> None:
    result = subprocess.run([sys.executable, "-m", "imagemasknet", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _truncate(path: Path, keep: float = 0.5) -> None:
    text = path.read_text()
    path.write_text(text[: int(len(text) * keep)])


@pytest.fixture(scope="session")
def runs_folder(busi_subset, tmp_path_factory) -> Path:
    """A results folder: a real 1-epoch run (trained and evaluated here), real CV folds when the checkout
    has results/cv-run1-oldarch (else a second real 1-epoch fold), and three half-written folders."""
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "IMAGEMASKNET_CACHE": str(tmp_path_factory.mktemp("train-cache")),
           "IMAGEMASKNET_RUNS": str(root)}
    env.pop("IMAGEMASKNET_DATA", None)
    folds = ["1"] if CV_RESULTS else ["1", "2"]
    for fold in folds:
        run = root / f"tiny-fold{fold}"
        _cli("train", "--preset", "lesion-resunet", "--epochs", "1", "--limit", "20", "--fold", fold, "--data",
             str(busi_subset), "--no-progress", "--num-workers", "0", "--out-dir", str(run), env=env)
        _cli("evaluate", "--run", str(run), "--data", str(busi_subset), "--resamples", "50", "--json",
             str(run / "metrics.json"), env=env)
    if CV_RESULTS:
        groups = run_folder.cv_groups(run_folder.scan_runs(CV_RESULTS))
        for members in groups.values():
            for run in members[:3]:
                shutil.copytree(run.path, root / run.name, ignore=NO_WEIGHTS)
        source = root / next(iter(groups.values()))[0].name
    else:
        source = root / "tiny-fold1"
    # A run that crashed mid-write: truncated history and metrics, status "running" with a dead pid.
    broken = root / "broken-fold9"
    shutil.copytree(source, broken)
    _truncate(broken / "history.json")
    metrics = sorted(broken.glob("metrics*.json"))[0]
    _truncate(metrics, 0.3)
    (broken / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345, "epoch": 3}))
    # A run that has just started: config and status, an empty history, nothing else.
    started = root / "just-started"
    started.mkdir()
    shutil.copyfile(source / "config.json", started / "config.json")
    (started / "history.json").write_text("[]")
    (started / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "epoch": 0}))
    # A folder whose config is cut off and whose history is not a list.
    garbage = root / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text('{"arch": "lesion-')
    (garbage / "history.json").write_text('{"epoch": 1}')
    (garbage / "log.txt").write_text("started\n")
    return root


def _app(path: str) -> AppTest:
    return AppTest.from_file(path, default_timeout=TIMEOUT)


def _count(at: AppTest) -> tuple[int, int]:
    """(shown, total) from the "**N of M scans** match" line."""
    line = next(m.value for m in at.markdown if "scans** match" in m.value)
    shown, total = line.split("**")[1].split(" of ")
    return int(shown), int(total.split()[0])


def _tiles(at: AppTest) -> list[str]:
    return [b.key.removeprefix("open_") for b in at.button if b.key and b.key.startswith("open_") and not
            b.key.startswith("open_dup_")]


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# --- gallery ------------------------------------------------------------------------------------------


def test_gallery_grid_filters_and_pages(gallery_env):
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert not at.error
    assert _count(at) == (31, 31)
    assert len(_tiles(at)) == 24  # first page
    assert len(at.get("pagination")) == 1

    at.get("pagination")[0].set_value(2).run(timeout=TIMEOUT)
    assert len(_tiles(at)) == 7

    at.multiselect(key="g_classes").set_value(["malignant"]).run(timeout=TIMEOUT)
    assert _count(at) == (sum(i.startswith("malignant") for i in SUBSET), 31)
    assert all(t.startswith("malignant") for t in _tiles(at))  # the pager went back to page 1

    at.multiselect(key="g_classes").set_value([]).run(timeout=TIMEOUT)
    at.multiselect(key="g_flags").set_value(["label conflict"]).run(timeout=TIMEOUT)
    assert set(_tiles(at)) == CONFLICTS
    at.multiselect(key="g_flags").set_value(["near-duplicate"]).run(timeout=TIMEOUT)
    assert set(_tiles(at)) == DUPLICATES
    at.multiselect(key="g_flags").set_value([]).run(timeout=TIMEOUT)

    fold_of = g.fold_of(load_folds())
    at.multiselect(key="g_folds").set_value([3]).run(timeout=TIMEOUT)
    assert set(_tiles(at)) == {i for i in SUBSET if fold_of[i] == 3}
    at.multiselect(key="g_folds").set_value([]).run(timeout=TIMEOUT)

    at.text_input(key="g_query").set_value("benign (1").run(timeout=TIMEOUT)
    assert set(_tiles(at)) == {i for i in SUBSET if "benign (1" in i} == {"benign (1)", "benign (10)", "benign (11)",
                                                                         "benign (131)"}
    at.text_input(key="g_query").set_value("MALIGNANT (93).png").run(timeout=TIMEOUT)  # file names, any case
    assert _tiles(at) == ["malignant (93)"]
    at.text_input(key="g_query").set_value("").run(timeout=TIMEOUT)

    # The model's results split the data: correct + wrong = all; low confidence is a subset.
    at.multiselect(key="g_results").set_value(["correct"]).run(timeout=TIMEOUT)
    correct = _count(at)[0]
    at.multiselect(key="g_results").set_value(["wrong"]).run(timeout=TIMEOUT)
    wrong = _count(at)[0]
    assert correct + wrong == 31
    at.multiselect(key="g_results").set_value(["low confidence"]).run(timeout=TIMEOUT)
    assert _count(at)[0] <= 31
    _no_errors(at)


def test_gallery_detail_view_and_audit_summary(gallery_env, top_level_slot):
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    assert not [s for s in at.subheader if "—" in s.value]  # no case open yet

    def grid(node) -> bool:
        return getattr(node, "type", None) == "markdown" and "scans** match" in node.value

    grid_slot = top_level_slot(at, grid)
    at.text_input(key="g_query").set_value("malignant (93)").run(timeout=TIMEOUT)
    at.button(key="open_malignant (93)").click().run(timeout=TIMEOUT)
    _no_errors(at)
    assert top_level_slot(at, grid) == grid_slot is not None  # opening a case leaves the grid in its place
    assert "case" not in at.query_params  # nothing that would keep it open on another page
    assert any(s.value == "malignant (93) — malignant" for s in at.subheader)
    facts = " ".join(m.value for m in at.markdown)
    assert "**file:** malignant \\(93\\)\\.png" in facts  # the whole file name, not a cut-off table cell
    captions = " ".join(c for image in at.image for c in image.captions)
    assert "Reference mask" in captions and "Grad-CAM" in captions
    assert len(at.get("plotly_chart")) == 1  # the probabilities
    assert any("near-duplicate group" in m.value and "more than one label" in m.value for m in at.markdown)
    assert at.button(key="open_dup_benign (399)")  # the other member of its group, side by side

    at.button(key="open_dup_benign (399)").click().run(timeout=TIMEOUT)
    assert any(s.value == "benign (399) — benign" for s in at.subheader)
    at.run(timeout=TIMEOUT)  # a rerun of the page (a filter changed) keeps it open
    assert any(s.value == "benign (399) — benign" for s in at.subheader)
    at.button(key="close_case").click().run(timeout=TIMEOUT)
    assert not any("—" in s.value for s in at.subheader)
    at.query_params["case"] = "malignant (93)"  # a shared link opens it
    at.run(timeout=TIMEOUT)
    assert any(s.value == "malignant (93) — malignant" for s in at.subheader)
    at.session_state["page_before"], at.session_state["page_now"] = "training", "gallery"  # back from another page
    at.run(timeout=TIMEOUT)
    assert not any("—" in s.value for s in at.subheader)

    # Audit summary: per-class counts with duplicates and conflicts.
    table = at.dataframe[0].value
    assert list(table["class"]) == ["normal", "benign", "malignant", "all"]
    assert table.set_index("class").loc["all", "images"] == 31
    assert table.set_index("class").loc["all", "in label conflicts"] == len(CONFLICTS)
    assert table.set_index("class").loc["all", "in near-duplicate groups"] == len(DUPLICATES)


def test_gallery_runs_the_audit_on_request(gallery_env, gallery_cache, monkeypatch, tmp_path):
    fresh = tmp_path / "cache"  # the session's decoded scans and predictions, but no audit yet
    shutil.copytree(gallery_cache, fresh)
    for stale in fresh.glob("audit-*.json"):
        stale.unlink()
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(fresh))
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    assert any("committed split" in c.value for c in at.caption)
    button = next(b for b in at.button if b.label.startswith("Run the near-duplicate audit"))
    button.click().run(timeout=TIMEOUT)
    _no_errors(at)
    assert any("near-duplicate audit of this copy" in c.value for c in at.caption)
    at.multiselect(key="g_flags").set_value(["label conflict"]).run(timeout=TIMEOUT)
    assert set(_tiles(at)) <= DUPLICATES  # the audit finds the same copies (or a subset of them)


def test_gallery_missing_dataset_message(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("IMAGEMASKNET_DATA", str(empty))
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    message = at.error[0].value
    assert "BUSI" in message and "Dataset_BUSI_with_GT" in message and "IMAGEMASKNET_DATA" in message
    assert not _tiles(at)

    # No copy anywhere: the message lists where it looked.
    monkeypatch.delenv("IMAGEMASKNET_DATA")
    monkeypatch.setattr(data_module, "SHARED_COPY", tmp_path / "nowhere")
    monkeypatch.setattr(data_module, "BUNDLED_COPY", tmp_path / "no-bundled-copy")
    monkeypatch.chdir(tmp_path)
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert "No BUSI data found" in at.error[0].value and "data/Dataset_BUSI_with_GT" in at.error[0].value


def test_gallery_predictions_are_cached_on_disk(gallery_env, gallery_cache, monkeypatch):
    from imagemasknet.data.busi import load_busi
    from imagemasknet.data.dataset import load_arrays
    from imagemasknet.inference.predictor import Predictor

    busi = load_busi(gallery_env)
    arrays = load_arrays(busi)
    model = Predictor.shipped(device="cpu")
    first = g.predict_all(busi, arrays, model, "image")
    assert list(first) == busi.ids
    assert all(abs(sum(p.values()) - 1) < 1e-4 for p in first.values())
    import imagemasknet.evaluation.evaluate as evaluate

    monkeypatch.setattr(evaluate, "predict_arrays", lambda *a, **k: pytest.fail("recomputed instead of cached"))
    again = g.predict_all(busi, arrays, model, "image")
    assert {i: pytest.approx(p, abs=1e-6) for i, p in again.items()} == first
    assert len(list(gallery_cache.glob("gallery-predictions-image-*.json"))) == 1


def test_gallery_second_view_is_quick(gallery_env):
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    started = time.perf_counter()
    at.run(timeout=TIMEOUT)
    elapsed = time.perf_counter() - started
    _no_errors(at)
    assert elapsed < 3.0, f"a cached gallery page took {elapsed:.2f} s"


def test_thumbnail_styles_differ():
    image = np.full((256, 256), 90, np.uint8)
    mask = np.zeros((256, 256), bool)
    mask[80:160, 60:200] = True
    outline, filled = g.thumbnail(image, mask, "outline"), g.thumbnail(image, mask, "filled")
    box_w, box_h = g.THUMB_BOX
    assert outline.shape == filled.shape == (box_h, box_w, 3)
    centre = (box_h // 2, box_w // 2)
    assert tuple(outline[centre]) == (90, 90, 90)  # an outline leaves the lesion's inside alone
    assert tuple(filled[centre]) != (90, 90, 90)
    assert (outline != [90, 90, 90]).any(axis=2).sum() > 0


def test_thumbnails_keep_the_scan_shape_in_one_box_size():
    """Issue 17: tiles are alike in size, and a scan is shown in its own shape (letterboxed), not squashed."""
    image = np.full((256, 256), 200, np.uint8)
    mask = np.zeros((256, 256), bool)
    box_w, box_h = g.THUMB_BOX
    for aspect in (0.8, 1.0, 4 / 3, 1.6, 2.2):
        picture = g.thumbnail(image, mask, aspect=aspect)
        assert picture.shape == (box_h, box_w, 3)
        lit = (picture > 0).any(axis=2)
        rows, cols = np.flatnonzero(lit.any(1)), np.flatnonzero(lit.any(0))
        shown = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
        assert shown == pytest.approx(aspect, rel=0.03), aspect


# --- training -----------------------------------------------------------------------------------------


def test_training_page_shows_runs_charts_and_survives_broken_folders(runs_folder, monkeypatch):
    monkeypatch.setenv("IMAGEMASKNET_RUNS", str(runs_folder))
    at = _app(TRAINING)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert not at.text_input  # no free path to type
    assert at.selectbox(key="t_folder").options[0] == "all runs (the results root)"
    runs_table = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert {"tiny-fold1", "broken-fold9", "just-started", "garbage"} <= set(runs_table["run"])
    warnings = " ".join(w.value for w in at.warning)
    assert "broken-fold9" in warnings and "not valid JSON" in warnings and "crashed" in warnings
    assert "just-started" in warnings and "no finished epoch" in warnings
    assert "garbage" in warnings
    subheaders = [s.value for s in at.subheader]
    assert "Curves per epoch" in subheaders and "Evaluation of a run" in subheaders
    assert "Cross-validation: per-fold spread" in subheaders
    charts = at.get("plotly_chart")
    assert len(charts) >= 7 + 3  # curves + confusion, ROC and reliability of the first evaluated run + spread

    # Every run can be selected, broken ones included, without breaking the page.
    for name in runs_table["run"]:
        at.selectbox(key="t_run").set_value(name).run(timeout=TIMEOUT)
        _no_errors(at)
    at.selectbox(key="t_run").set_value("broken-fold9").run(timeout=TIMEOUT)
    assert any("incomplete" in w.value for w in at.warning)
    at.selectbox(key="t_run").set_value("tiny-fold1").run(timeout=TIMEOUT)
    table = next(d.value for d in at.dataframe if "metric" in d.value.columns and "image" in d.value.columns)
    assert "accuracy" in list(table["metric"])
    assert "(" in table.set_index("metric").loc["accuracy", "image"]  # value with its CI

    # Comparing runs on one chart; the broken run's truncated history is simply not offered.
    at.multiselect(key="t_runs").set_value(["tiny-fold1"] + [n for n in at.multiselect(key="t_runs").options
                                                              if n != "tiny-fold1"][:2]).run(timeout=TIMEOUT)
    _no_errors(at)


def test_a_damaged_run_or_a_read_only_runs_folder_never_breaks_the_training_page(runs_folder, monkeypatch, tmp_path):
    """Issue 28: a metrics.json whose confusion matrix is a string broke the page (and that run was the
    default selection); a planted link showed /etc/passwd as the log; a read-only runs folder crashed it."""
    root = tmp_path / "results"
    shutil.copytree(runs_folder / "tiny-fold1", root / "a-damaged-fold0")
    shutil.copytree(runs_folder / "tiny-fold1", root / "tiny-fold1")
    report = json.loads((root / "a-damaged-fold0" / "metrics.json").read_text())
    for mode in report["modes"].values():
        mode["confusion"] = "not a table"
    (root / "a-damaged-fold0" / "metrics-test.json").write_text(json.dumps(report))
    (root / "a-damaged-fold0" / "log.txt").unlink(missing_ok=True)
    (root / "a-damaged-fold0" / "log.txt").symlink_to("/etc/passwd")
    monkeypatch.setenv("IMAGEMASKNET_RUNS", str(root))

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(jobs, "log_endings", read_only)
    at = _app(TRAINING)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert at.selectbox(key="t_run").value == "tiny-fold1"  # not the damaged run
    warnings = " ".join(w.value for w in at.warning)
    assert "a-damaged-fold0" in warnings and "confusion matrix that is not a square table" in warnings
    assert "cannot be written (Read-only file system)" in warnings
    at.selectbox(key="t_run").set_value("a-damaged-fold0").run(timeout=TIMEOUT)
    _no_errors(at)
    assert "root:" not in _page_text(at) and not any("root:x:" in c.value for c in at.code)


def _page_text(at: AppTest) -> str:
    """Everything the page shows a visitor: text, notices, choices and table cells."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader", "title")
             for e in getattr(at, kind)]
    parts += [str(o) for box in at.selectbox for o in box.options]
    parts += [str(o) for box in at.multiselect for o in box.options]
    parts += [d.value.to_string() for d in at.dataframe]
    return "\n".join(parts)


def test_training_page_reads_only_folders_under_the_results_root(runs_folder, monkeypatch, tmp_path):
    """Issue 19: a visitor picks among folders the server found under the results root; run folders outside it
    are never read, neither by name nor through a symbolic link, and no message says whether a path exists."""
    root = tmp_path / "results"
    shutil.copytree(runs_folder / "tiny-fold1", root / "tiny-fold1")
    shutil.copytree(runs_folder / "tiny-fold1", root / "cv-a" / "model-fold0")
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs_folder / "tiny-fold1", outside / "planted-secret-run")
    (root / "escape-link").symlink_to(outside / "planted-secret-run")  # a run folder that is a link out
    (root / "linked-results").symlink_to(outside)  # a results folder that is a link out
    monkeypatch.setenv("IMAGEMASKNET_RUNS", str(root))
    at = _app(TRAINING)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert not at.text_input
    assert run_folder.results_folders(root) == ["", "cv-a"]
    for name in ("", "cv-a"):
        at.selectbox(key="t_folder").set_value(name).run(timeout=TIMEOUT)
        _no_errors(at)
        text = _page_text(at)
        assert "planted-secret-run" not in text and "escape-link" not in text and "linked-results" not in text
        assert str(outside) not in text
    # What a forged request could send instead of a listed name (a selectbox sends only listed ones, and the
    # page resolves names through results_folder, which maps anything else to nothing).
    for sneaky in (str(outside), "../elsewhere", "cv-a/../../elsewhere", "linked-results", "escape-link", "/etc"):
        assert run_folder.results_folder(root, sneaky) is None
    assert run_folder.scan_runs(root / "escape-link", inside=root) == []
    assert [r.name for r in run_folder.scan_runs(root, inside=root)] == ["tiny-fold1"]
    (root / "inner-link").symlink_to(root / "tiny-fold1")  # a link is no run folder, even one leading inside
    assert [r.name for r in run_folder.scan_runs(root)] == ["tiny-fold1"]


def test_training_page_on_a_fresh_clone_shows_the_shipped_model_without_an_error(monkeypatch, tmp_path):
    """Issue 17: no runs folder yet is a neutral note; the shipped model's card, its own training curves and
    its per-fold cross-validation chart are there anyway, with plain metric names."""
    monkeypatch.setenv("IMAGEMASKNET_RUNS", str(tmp_path / "none-yet"))
    at = _app(TRAINING)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert not at.error and not (tmp_path / "none-yet").exists()
    assert any("No training runs yet" in i.value for i in at.info)
    assert "Cross-validation: per-fold spread" in [s.value for s in at.subheader]
    assert len(at.get("plotly_chart")) >= 3  # the shipped model's loss and accuracy curves, the fold spread
    card_table = next(d.value for d in at.dataframe if "cross-validation metric" in d.value.columns)
    names = list(card_table["cross-validation metric"])
    assert "malignant sensitivity" in names and "recall_malignant" not in names


def test_run_reader_reports_what_is_wrong(runs_folder):
    broken = run_folder.RunFolder(runs_folder / "broken-fold9")
    assert broken.state == "crashed"
    assert any("history.json is not valid JSON" in p for p in broken.problems)
    assert broken.history == [] and broken.config  # what it has
    assert run_folder.RunFolder(runs_folder / "garbage").config == {}
    started = run_folder.RunFolder(runs_folder / "just-started")
    assert started.state == "running" and "history.json has no finished epoch yet" in started.problems
    figure = charts.curves_figure({"just-started": started.history}, "loss")
    assert not figure.data and figure.layout.annotations
    # one run's curves differ by colour, not only by dash; several runs keep a colour each
    one = charts.curves_figure({"tiny": run_folder.RunFolder(runs_folder / "tiny-fold1").history}, "loss",
                               splits=("train", "heldout"))
    assert len(one.data) >= 2 and len({trace.line.color for trace in one.data}) == len(one.data)
    tiny = run_folder.RunFolder(runs_folder / "tiny-fold1")
    assert tiny.complete and "metrics" in tiny.metrics
    assert tables.metrics_wide(tiny.metrics["metrics"])[0]["metric"] == "accuracy"
    rows = tables.fold_values([tiny], "accuracy")
    assert {r["mode"] for r in rows} == {"image", "mask"} and all(r["fold"] == 1 for r in rows)


def test_out_of_fold_marks_apply_only_to_the_very_files_judged(busi_subset, tmp_path):
    """The Gallery's marks come from the cross-validation's out-of-fold file, matched by file hash: a scan
    whose file differs (another copy under the same name) gets no mark from it."""
    from imagemasknet.core.files import file_sha256
    from imagemasknet.data.busi import load_busi
    from imagemasknet.models.bundle import write_out_of_fold

    busi = load_busi(busi_subset)
    first, second = busi.cases[:2]
    rows = [{"id": case.id, "sha256": file_sha256(case.image_path)[:16], "label": case.label, "fold": 0,
             "probabilities": {"image": {"normal": 0.1, "benign": 0.2, "malignant": 0.7},
                               "mask": {"normal": 0.3, "benign": 0.3, "malignant": 0.4}}} for case in (first, second)]
    rows[1]["sha256"] = "0" * 16  # judged on other pixels
    write_out_of_fold(tmp_path / "oof.json", "m", rows)
    marks = g.out_of_fold(tmp_path / "oof.json", busi)
    assert set(marks) == {"image", "mask"}
    assert set(marks["image"]) == {first.id}
    assert marks["mask"][first.id]["malignant"] == 0.4
    assert g.out_of_fold(tmp_path / "absent.json", busi) is None and g.out_of_fold(None, busi) is None


def test_switching_the_model_input_reads_out_of_fold_marks_without_running_the_model(gallery_env, monkeypatch):
    """Issue 17: with the cross-validation's out-of-fold predictions shipped, "scan + reference mask" does not
    run the model over every scan (it took 34 s); the marks say where they come from."""
    from imagemasknet.core.paths import WEIGHTS_DIR

    if not (WEIGHTS_DIR / DEFAULT_MODEL / "oof.json").is_file():
        pytest.skip("the shipped default model has no out-of-fold predictions")
    monkeypatch.setattr(g, "predict_all", lambda *a, **k: pytest.fail("ran the model instead of reading the marks"))
    at = _app(GALLERY)
    at.run(timeout=TIMEOUT)
    _no_errors(at)
    assert any("out-of-fold" in c.value for c in at.caption)
    at.selectbox(key="g_mode").set_value("mask").run(timeout=TIMEOUT)
    _no_errors(at)
    assert _count(at) == (31, 31) and any("✓" in t or "✗" in t for t in (m.value for m in at.markdown))


def test_the_duplicate_audit_runs_once_at_a_time_and_once_per_copy(busi_subset, isolated_env, monkeypatch):
    """Issue 28: any visitor could start the Gallery's audit (about 13 s of CPU), several at once."""
    from imagemasknet.core.files import try_folder_lock
    from imagemasknet.core.paths import cache_dir
    from imagemasknet.data.busi import load_busi

    busi = load_busi(busi_subset)
    runs = []
    real = g.audit
    monkeypatch.setattr(g, "audit", lambda *args: runs.append(1) or real(*args))
    with try_folder_lock(cache_dir(), "duplicate-audit") as mine:  # another visitor's audit is running
        assert mine and g.run_audit(busi) is None and not runs
    first = g.run_audit(busi)
    assert first is not None and runs == [1]
    assert json.dumps(g.run_audit(busi)) == json.dumps(first) and runs == [1]  # cached: not run again


def test_pooled_figures_are_tabled_per_training_source(shared_cache_dir, monkeypatch):
    """Issue 24: every figure is reported per source as well as pooled; the Training page's tables say which
    hospital each row is."""
    import dataclasses

    from imagemasknet.data.dataset import load_arrays
    from imagemasknet.data.sources import load_training_set
    from imagemasknet.evaluation.evaluate import evaluate_model
    from imagemasknet.evaluation.metrics import mean_sd
    from imagemasknet.inference.predictor import Predictor

    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    data = load_training_set("busi+busbra-train")
    ids = [c.id for c in data.cases if c.source == "busi"][::100] + [c.id for c in data.cases if c.source != "busi"][::120]
    predictor = Predictor.shipped("lesion-resunet", device="cpu")
    arrays = load_arrays(data.subset(ids), predictor.image_size)
    report = {"modes": evaluate_model(predictor.model, predictor.spec, arrays, ["image"], predictor.temperatures,
                                      predictor.device, resamples=20)}
    rows = tables.report_source_rows(report)
    assert [r["source"] for r in rows] == ["BUSI", "BUS-BRA (training half)"]
    busi = report["modes"]["image"]["by_source"]["busi"]
    assert busi["n"] == len([i for i in ids if ":" not in i])
    assert rows[0]["accuracy"] == round(busi["metrics"]["accuracy"]["value"], 3)

    card = dataclasses.replace(predictor.card, config={**predictor.card.config, "sources": "busi+busbra-train"},
                               cross_validation={"image": {"by_source": {"busbra-train": {"accuracy": mean_sd([0.8, 0.9])}}}})
    assert tables.card_sources(card) == "BUSI and BUS-BRA (training half)"
    assert tables.card_source_rows(card) == [{"source": "BUS-BRA (training half)", "mode": "image",
                                              "accuracy": "0.850 ± 0.071"}]
    assert tables.card_sources(predictor.card) == "BUSI"  # a card from before sources existed
