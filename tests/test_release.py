"""`imagemasknet release` on real runs made here (two one-epoch folds and an all-data run on a BUSI subset):
a complete bundle whose every threshold comes from the folds' out-of-fold predictions, which a Predictor loads
alone, and which a second release from the same runs reproduces."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from imagemasknet import cli
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.scans import read_scan
from imagemasknet.data.splits import load_folds
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models.bundle import Bundle

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


def release(runs, out) -> Bundle:
    assert cli.main(["release", "--folds", str(runs / "quick-fold0"), str(runs / "quick-fold1"), "--all-data",
                     str(runs / "quick-all"), "--out", str(out), "--name", "quick", "--version", "test"]) == 0
    return Bundle.read(out)


def test_a_release_is_a_complete_bundle_set_on_out_of_fold_predictions(runs, tmp_path, isolated_env, shared_cache_dir,
                                                                        monkeypatch):
    monkeypatch.setenv("IMAGEMASKNET_CACHE", str(shared_cache_dir))
    bundle = release(runs, tmp_path / "quick")
    assert not bundle.missing and bundle.familiarity and bundle.out_of_fold and bundle.history
    card = bundle.card
    rows = json.loads(bundle.out_of_fold.read_text())["predictions"]
    tested = [i for f in ("quick-fold0", "quick-fold1") for i in RunFolder(runs / f).split["test"]]
    assert sorted(r["id"] for r in rows) == sorted(tested)  # each scan once, judged by the model that never saw it
    assert set(card.flag_thresholds) == {"image", "mask"} and card.exclusion_threshold is not None
    assert card.malignancy_flag["modes"]["mask"]["footing"] == "P(malignant | a lesion)"
    assert card.schema_version == 2 and card.preprocessing["image_size"] == 64
    assert [s["name"] for s in card.extra["training_data"]["sources"]] == ["own"]
    assert len(card.cross_validation["image"]["folds"]) == 2
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
    a, b = load_file(first.weights), load_file(second.weights)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    a, b = load_file(first.familiarity), load_file(second.familiarity)
    assert all((a[k] == b[k]).all() for k in a)
    one, two = json.loads(first.folder.joinpath("model.json").read_text()), json.loads(second.folder.joinpath("model.json").read_text())
    one.pop("date"), two.pop("date")
    assert one == two


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
