"""`imagemasknet release` on real runs made here (two one-epoch folds and an all-data run on a BUSI subset):
a complete bundle whose every threshold comes from the folds' out-of-fold predictions, which a Predictor loads
alone, and which a second release from the same runs reproduces."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagemasknet import cli
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.scans import read_scan
from imagemasknet.data.splits import load_folds
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models.bundle import Bundle, read_out_of_fold
from imagemasknet.ops import release as release_module

pytestmark = pytest.mark.slow
QUICK = ["--arch", "lesion-resunet", "--epochs", "1", "--image-size", "64", "--batch-size", "8", "--device", "cpu",
         "--no-progress", "--val-fraction", "0.2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, busi_root, shared_cache_dir):
    folds = load_folds()
    subset = folds[0][::12] + folds[1][::12] + folds[2][::24]
    root = tmp_path_factory.mktemp("release-runs")
    data = root / "data.csv"
    data.write_text("image,label,mask\n" + "".join(
        f"{busi_root / i.split(' (')[0] / 'images' / (i + '.png')},{i.split(' (')[0]},"
        f"{busi_root / i.split(' (')[0] / 'masks' / (i + '_mask.png')}\n" for i in subset))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
        for fold in ("0", "1"):
            run = root / f"quick-fold{fold}"
            assert cli.main(["train", *QUICK, "--data", str(data), "--fold", fold, "--out-dir", str(run)]) == 0
            assert cli.main(["evaluate", "--run", str(run), "--on", "test", "--resamples", "20", "--json",
                             str(run / "metrics-test.json"), "--device", "cpu"]) == 0
        assert cli.main(["train", *QUICK, "--data", str(data), "--fold", "none", "--out-dir", str(root / "quick-all")]) == 0
        yield root


def release(runs, out=None) -> Bundle:
    """A release of the quick runs into ``out`` named "quick"; with no ``out``, where the command puts it unasked."""
    where = ["--out", str(out), "--name", "quick"] if out else []
    assert cli.main(["release", "--folds", str(runs / "quick-fold0"), str(runs / "quick-fold1"), "--all-data",
                     str(runs / "quick-all"), *where, "--version", "test"]) == 0
    return Bundle.read(out or release_module.WEIGHTS_DIR / "lesion-resunet")


def test_a_release_is_a_complete_bundle_set_on_out_of_fold_predictions(runs, tmp_path, isolated_env, shared_cache_dir,
                                                                        monkeypatch):
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    bundle = release(runs, tmp_path / "quick")
    assert not bundle.missing and bundle.familiarity and bundle.out_of_fold and bundle.history
    card = bundle.card
    rows = read_out_of_fold(bundle.out_of_fold)
    tested = [i for f in ("quick-fold0", "quick-fold1") for i in RunFolder(runs / f).split["test"]]
    assert sorted(r["id"] for r in rows) == sorted(tested)  # each scan once, judged by the model that never saw it
    assert set(card.flag_thresholds) == {"image", "mask"} and card.exclusion_threshold is not None
    assert card.malignancy_flag["modes"]["mask"]["footing"] == "P(malignant | a lesion)"
    assert card.schema_version == 2 and card.preprocessing["image_size"] == 64
    assert [s["name"] for s in card.extra["training_data"]["sources"]] == ["own"]
    assert len(card.cross_validation["image"]["folds"]) == 2
    assert card.config["out_dir"] == "quick-all"  # the run's name, not a path on the machine that trained it
    predictor = Predictor(bundle, device="cpu", check_training_data=False)  # the bundle is all it needs
    scan = read_scan(_first_scan(runs))
    prediction = predictor.predict(scan)
    assert prediction.malignancy_threshold == card.flag_thresholds["image"] and prediction.familiarity is not None


def _first_scan(runs) -> str:
    return (runs / "data.csv").read_text().splitlines()[1].split(",")[0]


def test_a_second_release_from_the_same_runs_reproduces_the_first(runs, tmp_path, isolated_env, shared_cache_dir,
                                                                    monkeypatch):
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    first, second = release(runs, tmp_path / "a"), release(runs, tmp_path / "b")
    assert first.out_of_fold.read_bytes() == second.out_of_fold.read_bytes()
    assert first.history.read_bytes() == second.history.read_bytes()
    # byte for byte: the safetensors header's order no longer changes from process to process
    assert first.weights.read_bytes() == second.weights.read_bytes()
    assert first.familiarity.read_bytes() == second.familiarity.read_bytes()
    one, two = json.loads(first.folder.joinpath("model.json").read_text()), json.loads(second.folder.joinpath("model.json").read_text())
    one.pop("date"), two.pop("date")
    assert one == two


def test_unasked_a_release_goes_where_the_app_looks_for_its_model(runs, tmp_path, isolated_env, shared_cache_dir,
                                                                  monkeypatch):
    """Review of issue 26: without --out and --name the bundle went to weights/<all-data run folder>, which no
    model name points to; it goes to weights/<the architecture's registered name>."""
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    monkeypatch.setattr(release_module, "WEIGHTS_DIR", tmp_path / "weights")
    bundle = release(runs)
    assert bundle.folder == tmp_path / "weights" / "lesion-resunet" and bundle.card.name == "lesion-resunet"
    assert not bundle.missing


def test_a_released_card_and_the_runs_it_came_from_hold_what_docs_architecture_md_says(runs, tmp_path, isolated_env,
                                                                                       shared_cache_dir, monkeypatch):
    from test_contracts import documented

    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    card = json.loads(release(runs, tmp_path / "quick").folder.joinpath("model.json").read_text())
    keys = [row for row in documented("The model bundle") if not row.endswith((".safetensors", ".json"))]
    promoted_only = {"promoted_at", "source_run", "heldout"}
    promoted_only |= {"external"}  # only when the release names external sets (this one does not)
    assert set(keys) - promoted_only - {"image_size", "channels", "normalisation", "decoding",
                                        "paint_out_annotations"} <= set(card)
    assert set(card["preprocessing"]) == {"image_size", "channels", "normalisation", "decoding", "paint_out_annotations"}
    written = {p.name for p in (runs / "quick-fold0").iterdir()}
    assert written <= set(documented("The run folder")) | {"metrics-test.json"}


def test_releasing_over_a_bundle_swaps_it_whole_or_leaves_the_old_one(runs, tmp_path, isolated_env, shared_cache_dir,
                                                                       monkeypatch):
    """Review of issue 26: between its two renames a release left no bundle at all, and a failed second rename
    left the old one hidden. The swap is one step; where the system cannot swap, a failure puts the old one back."""
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    out = tmp_path / "quick"
    before = release(runs, out).weights.read_bytes()
    assert release(runs, out).weights.read_bytes() == before  # swapped in one step, nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick"]

    real_replace = os.replace

    def fails_into_place(source, target):
        if Path(target) == out and Path(source).name.endswith(".tmp"):  # the new bundle, not the old one put back
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(release_module, "_exchange", lambda a, b: False)
    monkeypatch.setattr(release_module.os, "replace", fails_into_place)
    with pytest.raises(OSError):
        release(runs, out)
    monkeypatch.setattr(release_module.os, "replace", real_replace)
    assert Bundle.read(out).weights.read_bytes() == before and not Bundle.read(out).missing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick"]


def test_runs_a_release_cannot_be_honest_from_are_refused_in_one_sentence(runs, tmp_path, capsys):
    """Review of issue 26: fold runs without their test evaluation gave a card with empty cross-validation
    figures and no word; a fold run as the all-data run would ship a model that never saw its test fold."""
    import shutil

    untested = tmp_path / "untested-fold0"
    shutil.copytree(runs / "quick-fold0", untested)
    (untested / "metrics-test.json").unlink()
    common = ["release", "--all-data", str(runs / "quick-all"), "--out", str(tmp_path / "out")]
    assert cli.main([*common, "--folds", str(untested), str(runs / "quick-fold1")]) == 2
    assert f"the fold run {untested} has no metrics-test.json; evaluate it first" in capsys.readouterr().err
    assert cli.main(["release", "--folds", str(runs / "quick-fold0"), "--all-data", str(runs / "quick-fold1"),
                     "--out", str(tmp_path / "out")]) == 2
    assert "held out a test fold" in capsys.readouterr().err
    assert cli.main([*common, "--folds", str(tmp_path / "nowhere")]) == 2
    assert "is not a finished run folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
