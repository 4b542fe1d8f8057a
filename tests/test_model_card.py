"""One model card type in one bundle layout: the shipped cards read and write back unchanged, a card is read
without being trusted, a run folder's checkpoints and a promoted bundle get the same type, and the store says
which bundle is active."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.models.bundle import Bundle, BundleError, ModelStore, read_out_of_fold, write_out_of_fold
from imagemasknet.models.card import ModelCard, ModelCardError
from imagemasknet.training.config import TrainConfig, preset

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


@pytest.mark.parametrize("name", ["lesion-effnet-lite0", "lesion-resunet"])
def test_a_shipped_card_reads_and_writes_back_unchanged(name, tmp_path):
    raw = json.loads((WEIGHTS / name / "model.json").read_text())
    card = ModelStore().shipped(name).card
    assert card.name == card.arch == name and card.image_size == raw["config"]["image_size"]
    assert card.temperature == raw["temperature"] and card.cross_validation == raw["cross_validation"]
    written = tmp_path / "card.json"
    card.write(written)
    again = json.loads(written.read_text())
    assert again["arch"] == name  # a card written before schema 2 gains the architecture's name
    assert {k: v for k, v in again.items() if k != "arch"} == {k: v for k, v in raw.items() if k != "arch"}
    assert ModelCard.read(written) == card


def test_the_flag_thresholds_and_the_cross_validation_means_come_from_the_card():
    card = ModelStore().shipped("lesion-effnet-lite0").card
    raw = json.loads((WEIGHTS / "lesion-effnet-lite0" / "model.json").read_text())
    assert card.flag_thresholds == {m: v["threshold"] for m, v in raw["malignancy_flag"]["modes"].items()}
    assert card.flag_target == raw["malignancy_flag"]["target_sensitivity"] == 0.9
    assert card.cross_validation_means()["image"]["accuracy"] == raw["cross_validation"]["image"]["accuracy"]["mean"]


def test_the_shipped_default_was_trained_by_its_preset_so_train_and_retrain_reproduce_its_recipe():
    card = ModelStore().shipped("lesion-effnet-lite0").card
    run_settings = ("fold", "out_dir", "num_workers", "device", "precision")  # where and how fast, not what
    trained, recipe = TrainConfig.from_dict(card.config).to_dict(), preset("lesion-effnet-lite0").to_dict()
    assert {k: v for k, v in trained.items() if k not in run_settings} == \
        {k: v for k, v in recipe.items() if k not in run_settings}


def test_a_card_is_read_without_trusting_it():
    card = ModelCard.from_json({"name": "lesion-resunet", "temperature": {"image": 1.5, "mask": "hot"},
                                "malignancy_flag": ["not", "a", "block"], "config": 7, "limitations": "one",
                                "something_new": {"kept": True}})
    assert card.arch == "lesion-resunet" and card.config == {} and card.image_size == 256
    assert card.temperature == {"image": 1.5} and card.flag_thresholds == {} and card.limitations == []
    assert card.to_json()["something_new"] == {"kept": True}
    assert ModelCard.from_json({"pretrained": None, "name": "x"}).pretrained == {}  # null: trained from scratch
    assert ModelCard.from_json({"name": "x"}).pretrained is None  # not said


@pytest.mark.parametrize("payload, message", [([1, 2], "is not a JSON object"), ({"version": "1"}, "names no architecture")])
def test_a_card_that_cannot_describe_weights_is_refused_in_one_sentence(payload, message):
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_json(payload, source="model.json")


def test_a_missing_or_cut_off_card_names_its_file(tmp_path):
    with pytest.raises(ModelCardError, match=r"missing\.json is missing or not valid JSON"):
        ModelCard.read(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text('{"name": "lesion-res')
    with pytest.raises(ModelCardError, match="cut.json"):
        ModelCard.read(tmp_path / "cut.json")


def test_a_run_folder_card_carries_its_config_and_calibration(tmp_path):
    run = tmp_path / "lesion-resunet-fold2"
    write_json(run / "config.json", {"arch": "lesion-resunet", "image_size": 64, "fold": 2})
    write_json(run / "calibration.json", {"temperature": {"image": 1.2, "mask": 0.9}})
    card = ModelCard.for_run(RunFolder(run))
    assert (card.arch, card.version, card.image_size, card.temperature) == (
        "lesion-resunet", "lesion-resunet-fold2", 64, {"image": 1.2, "mask": 0.9})
    with pytest.raises(ModelCardError, match="not a run folder"):
        ModelCard.for_run(RunFolder(tmp_path / "empty"))


def test_a_bundle_needs_its_weights_and_card_and_says_what_else_it_lacks(tmp_path):
    folder = tmp_path / "model"
    write_json(folder / "model.json", {"arch": "lesion-resunet", "version": "run-1", "promoted_at": "today"})
    with pytest.raises(BundleError, match="holds no model.safetensors"):
        Bundle.read(folder)
    (folder / "model.safetensors").write_bytes(b"")
    bundle = Bundle.read(folder)
    assert bundle.card.promoted and bundle.card.version == "run-1"
    assert any("no familiarity reference" in gap for gap in bundle.missing)
    assert any("no malignancy flag" in gap for gap in bundle.missing)
    (folder / "model.json").write_text("[]")
    with pytest.raises(BundleError, match="model.json is not a JSON object"):
        Bundle.read(folder)


def test_the_shipped_bundles_are_complete_and_the_store_resolves_the_active_one(tmp_path):
    store = ModelStore(runs=tmp_path)
    shipped = store.shipped()
    assert shipped.familiarity and shipped.out_of_fold and shipped.history and not shipped.missing
    assert shipped.card.schema_version == 2 and shipped.card.preprocessing["image_size"] == shipped.card.image_size
    assert store.active() == shipped and store.promoted() is None and store.active_key().startswith("shipped:")
    promoted = tmp_path / ".models" / "run-1"
    promoted.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        (promoted / name).write_bytes((shipped.folder / name).read_bytes())
    (tmp_path / "active").symlink_to(promoted)
    assert store.active().folder == promoted and store.active_key() == "active:run-1" and store.previous() is None
    (promoted / "model.json").write_text("{")  # a damaged promotion: the shipped model serves
    assert store.active() == shipped


def test_out_of_fold_rows_survive_the_table_layout_and_a_damaged_table_is_refused(tmp_path):
    rows = [{"id": f"scan {n}", "source": "busi", "sha256": "0" * 16, "label": "benign", "fold": n % 5,
             "familiarity": 1.25, "refusal_score": 0.5,
             "probabilities": {"image": {"normal": 0.1, "benign": 0.7, "malignant": 0.2},
                               "mask": {"normal": 0.0, "benign": 0.9, "malignant": 0.1}}} for n in range(3)]
    path = tmp_path / "oof.json"
    write_out_of_fold(path, "m", rows)
    assert read_out_of_fold(path) == rows
    records_size = len(json.dumps({"predictions": rows}, separators=(",", ":")))
    assert path.stat().st_size < records_size  # the point of the table: the weights' 10 MB budget
    stored = json.loads(path.read_text())
    stored["rows"][1] = stored["rows"][1][:-1]  # one value short
    path.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="no out-of-fold table"):
        read_out_of_fold(path)
