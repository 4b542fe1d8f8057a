"""The Retrain page's form: built from TrainConfig's fields and their metadata, and every value a browser sends
back checked again on the server. Unit tests (no training)."""
from __future__ import annotations

import dataclasses

import pytest

from imagemasknet.core.paths import runs_root
from imagemasknet.data.sources import TRAINING_SETS
from imagemasknet.ops import retrain_form, train_lock
from imagemasknet.training.config import TrainConfig

QUICK = {"epochs": 1, "limit": 20, "image_size": 64, "fold": 0, "seed": 0}


def test_form_is_built_from_the_dataclass():
    form = {f.name: f for f in retrain_form.form_fields()}
    expected = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in retrain_form.SERVER_ONLY]
    assert list(form) == expected
    for f in dataclasses.fields(TrainConfig):
        if f.name not in form:
            continue
        entry = form[f.name]
        assert entry.default == f.default and entry.help == f.metadata.get("help", "")
        if "max" in f.metadata:
            assert (entry.min, entry.max) == (f.metadata["min"], f.metadata["max"])
        if "choices" in f.metadata:
            assert entry.choices == tuple(f.metadata["choices"])
    assert {"epochs", "lr", "weight_decay", "batch_size", "seed", "fold", "mask_schedule", "arch", "limit",
            "image_size"} <= set(form)
    assert not {"out_dir", "data", "split_file"} & set(form)
    assert retrain_form.form_defaults("study-m2")["arch"] == "imagemasknet2" and retrain_form.form_defaults()["epochs"] == 60


@pytest.mark.parametrize("values, field", [
    ({"epochs": 0}, "epochs"), ({"epochs": 501}, "epochs"), ({"epochs": 2.5}, "epochs"), ({"epochs": "ten"}, "epochs"),
    ({"lr": 2.0}, "lr"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"weight_decay": -0.1}, "weight_decay"),
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 10_000}, "batch_size"), ({"image_size": 100}, "image_size"),
    ({"image_size": 32}, "image_size"), ({"seed": -1}, "seed"), ({"fold": 7}, "fold"), ({"limit": 0}, "limit"),
    ({"limit": -5}, "limit"), ({"mask_schedule": "sometimes"}, "mask_schedule"), ({"arch": "resnet-9000"}, "arch"),
    ({"class_balanced": "yes"}, "class_balanced"), ({"val_fraction": 0.9}, "val_fraction"),
    ({"out_dir": "/etc"}, "out_dir"), ({"data": "/"}, "data"), ({"device": "cuda"}, "device"),
])
def test_out_of_bounds_form_values_are_refused(isolated_env, values, field):
    with pytest.raises(ValueError, match=field):
        retrain_form.config_from_form({**QUICK, **values})
    assert not train_lock.lock_path().exists() and not list(runs_root().iterdir())




def test_the_form_trains_on_both_hospitals_by_default_and_on_one_on_request():
    field = next(f for f in retrain_form.form_fields() if f.name == "sources")
    assert field.kind == "choice" and field.choices == TRAINING_SETS
    assert retrain_form.form_defaults("lesion-effnet-lite0")["sources"] == "busi+busbra-train"
    assert retrain_form.config_from_form({**QUICK, "sources": "busi"}, "lesion-effnet-lite0").sources == "busi"
    with pytest.raises(ValueError, match="sources"):
        retrain_form.config_from_form({**QUICK, "sources": "busi+/etc/passwd"}, "lesion-effnet-lite0")
