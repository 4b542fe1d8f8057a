"""The committed duplicate-aware 5-fold split, user split files, and the fold builder."""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import CLASSES
from imagemasknet.data.sources import load_training_set
from imagemasknet.data.splits import (DEFAULT_SPLIT, SplitError, case_groups, committed_groups, cross_fitting_halves,
                                      inner_validation, load_folds, make_folds, merge_groups, resolve_split, split_file_for)


@pytest.fixture(scope="module")
def busi(busi_root):
    return load_busi(busi_root)


@pytest.fixture(scope="module")
def split_spec() -> dict:
    return json.loads(Path(DEFAULT_SPLIT).read_text())


@pytest.fixture(scope="module")
def fold_of(split_spec) -> dict[str, int]:
    return {i: k for k, fold in enumerate(split_spec["folds"]) for i in fold}


def manifest_groups_from_csv(manifest: Path) -> dict[str, list[str]]:
    """near_dup_group → image ids, read straight from the CSV (independent of the package)."""
    groups: dict[str, list[str]] = defaultdict(list)
    with open(manifest, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["near_dup_group"]:
                groups[row["near_dup_group"]].append(Path(row["image"]).stem)
    return dict(groups)


# --------------------------------------------------------------------------- committed split

def test_committed_split_has_five_disjoint_folds_covering_busi(busi, split_spec):
    folds = load_folds()
    assert folds == split_spec["folds"]
    assert len(folds) == 5
    sets = [set(f) for f in folds]
    assert sum(len(f) for f in folds) == sum(len(s) for s in sets) == 780  # no id twice within a fold
    for a in range(5):
        for b in range(a + 1, 5):
            assert not sets[a] & sets[b], f"folds {a} and {b} share {sorted(sets[a] & sets[b])[:3]}"
    assert set().union(*sets) == set(busi.ids)
    assert all(150 <= len(f) <= 162 for f in folds)
    assert split_spec["classes"] == {"normal": 133, "benign": 437, "malignant": 210}


def test_split_file_groups_never_cross_folds(split_spec, fold_of):
    groups = split_spec["groups"]
    assert len(groups) >= 152 and all(len(g) > 1 for g in groups)
    for group in groups:
        assert len({fold_of[i] for i in group}) == 1, f"group {group} spans folds {[fold_of[i] for i in group]}"
    # committed_groups() maps every member to one label per group.
    mapping = {i: g for i, g in committed_groups().items() if g.startswith("busi-5fold:")}
    assert set(mapping) == {i for g in groups for i in g}
    assert len(set(mapping.values())) == len(groups)


def test_manifest_near_duplicate_groups_never_cross_folds(busi, busi_manifest, fold_of):
    groups = manifest_groups_from_csv(busi_manifest)
    # The dataset README: 152 groups with 336 images, 8 of them cross-class.
    assert len(groups) == 152
    assert sum(len(g) for g in groups.values()) == 336
    labels = {c.id: c.label for c in busi.cases}
    assert sum(len({labels[i] for i in g}) > 1 for g in groups.values()) == 8
    spanning = {name: sorted({fold_of[i] for i in g}) for name, g in groups.items() if len({fold_of[i] for i in g}) > 1}
    assert not spanning, f"near-duplicate groups split across folds: {spanning}"
    # The package reads the same column.
    assert case_groups(busi) == {i: f"group:busi:{name}" for name, g in groups.items() for i in g}


def test_every_fold_keeps_the_class_mix(busi, split_spec):
    labels = {c.id: c.label for c in busi.cases}
    overall = Counter(labels.values())
    for k, fold in enumerate(split_spec["folds"]):
        counts = Counter(labels[i] for i in fold)
        for c in CLASSES:
            fold_share, whole_share = counts[c] / len(fold), overall[c] / len(labels)
            assert abs(fold_share - whole_share) <= 0.03, (
                f"fold {k}: {c} {fold_share:.1%} vs {whole_share:.1%} overall")


def test_resolve_split_by_fold_and_all_data(busi, split_spec):
    train, test = resolve_split(busi, 2, None)
    assert test == split_spec["folds"][2]
    assert set(train) == set(busi.ids) - set(test) and not set(train) & set(test)
    train, test = resolve_split(busi, None, None)
    assert train == busi.ids and test == []


def test_inner_validation_holds_out_whole_groups(busi, busi_manifest):
    labels = {c.id: c.label for c in busi.cases}
    train, _ = resolve_split(busi, 0, None)
    fit, val = inner_validation(train, busi, 0.1, seed=0)
    assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    assert 0.05 * len(train) <= len(val) <= 0.15 * len(train)
    assert {labels[i] for i in val} == set(CLASSES)
    val_set = set(val)
    for name, group in manifest_groups_from_csv(busi_manifest).items():
        inside = [i for i in group if i in set(train)]
        assert len({i in val_set for i in inside}) <= 1, f"{name} split between fit and validation: {inside}"
    assert inner_validation(train, busi, 0.0, seed=0) == (train, [])


# --------------------------------------------------------------------------- two sources

@pytest.fixture(scope="module")
def pooled():
    return load_training_set("busi+busbra-train")


def test_busbra_split_keeps_each_patient_in_one_fold_and_the_class_mix(pooled):
    busbra = pooled.of_source("busbra-train")
    folds = load_folds(split_file_for("busbra-train"))
    assert sorted(i for f in folds for i in f) == sorted(busbra.ids)  # 931 scans, each once
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    patients = defaultdict(set)
    for c in busbra.cases:
        patients[c.patient].add(fold_of[c.id])
    assert len(patients) == 532 and all(len(f) == 1 for f in patients.values())
    labels = {c.id: c.label for c in busbra.cases}
    for fold in folds:
        assert abs(sum(labels[i] == "malignant" for i in fold) / len(fold) - 306 / 931) <= 0.03


def test_pooled_fold_is_each_sources_fold(pooled, split_spec):
    busbra_folds = load_folds(split_file_for("busbra-train"))
    for k in range(5):
        train, test = resolve_split(pooled, k, None)
        assert sorted(test) == sorted(split_spec["folds"][k] + busbra_folds[k])
        assert sorted(train + test) == sorted(pooled.ids)


def test_scans_a_committed_split_leaves_out_are_refused_not_trained_on_in_every_fold(busi):
    """Review of issue 24: a scan the committed split did not name was in no test fold, so every fold trained on
    it and none tested it."""
    import dataclasses


    extra = dataclasses.replace(busi.cases[0], id="benign (9999)")
    grown = dataclasses.replace(busi, cases=[*busi.cases, extra])
    with pytest.raises(SplitError, match=r"1 busi scans are in no fold .*benign \(9999\).*data split --source busi"):
        resolve_split(grown, 0, None)


def test_inner_validation_is_stratified_by_source_and_class_and_keeps_patients(pooled):
    train, _ = resolve_split(pooled, 1, None)
    fit, val = inner_validation(train, pooled, 0.1, seed=0)
    by_id = pooled.by_id()
    strata = Counter(f"{by_id[i].source}/{by_id[i].label}" for i in train)
    held = Counter(f"{by_id[i].source}/{by_id[i].label}" for i in val)
    assert set(held) == set(strata)  # every source-class pair is validated
    for stratum, n in strata.items():
        assert abs(held[stratum] / n - 0.1) < 0.03, stratum
    patients_fit = {by_id[i].patient for i in fit if by_id[i].patient}
    assert not patients_fit & {by_id[i].patient for i in val if by_id[i].patient}


def test_teacher_halves_split_a_runs_training_scans_by_patient_and_keep_its_validation_out(pooled):
    train, test = resolve_split(pooled, 1, None)
    fit, val = inner_validation(train, pooled, 0.1, seed=0)
    halves = cross_fitting_halves(fit, pooled, seed=0)
    assert sorted(halves[0] + halves[1]) == sorted(fit) and not set(halves[0]) & set(halves[1])
    by_id = pooled.by_id()
    for half in halves:
        assert abs(len(half) / len(fit) - 0.5) < 0.02
        for label in CLASSES:
            share = sum(by_id[i].label == label for i in half) / max(1, sum(by_id[i].label == label for i in fit))
            assert share == pytest.approx(0.5, abs=0.05), label
    patients = [{by_id[i].patient for i in half if by_id[i].patient} for half in halves]
    assert not patients[0] & patients[1]
    fold_of_group = {}
    for k, half in enumerate(halves):
        for i in half:
            group = committed_groups().get(i)
            if group:
                assert fold_of_group.setdefault(group, k) == k, f"near-duplicate group {group} split between teachers"


# --------------------------------------------------------------------------- user split files

def write(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_resolve_split_with_user_file(busi, tmp_path):
    train_ids = ["benign (1)", "malignant (7)", "normal (9)"]
    test_ids = ["benign (2)", "normal (10)"]
    path = write(tmp_path / "mine.json", {"train": train_ids, "test": test_ids, "note": "extra keys are fine"})
    # A split file wins over --fold.
    assert resolve_split(busi, 3, str(path)) == (train_ids, test_ids)


@pytest.mark.parametrize("payload, match", [
    ({"train": ["benign (1)", "benign (9999)"], "test": ["normal (1)"]}, "unknown ids"),
    ({"train": ["benign (1)", "normal (1)"], "test": ["normal (1)"]}, "both train and test"),
    ("{not json", "must be JSON"),
    ({"train": ["benign (1)"]}, "must be JSON"),
    (["benign (1)"], "must be JSON"),
], ids=["unknown-id", "overlap", "not-json", "no-test-key", "a-list"])
def test_bad_user_split_files_raise(busi, tmp_path, payload, match):
    path = write(tmp_path / "bad.json", payload)
    with pytest.raises(SplitError, match=match):
        resolve_split(busi, 0, str(path))


def test_missing_user_split_file_raises(busi, tmp_path):
    with pytest.raises(SplitError):
        resolve_split(busi, 0, str(tmp_path / "absent.json"))


# --------------------------------------------------------------------------- fold builder

def test_merge_groups_is_transitive_across_groupings():
    ids = ["a", "b", "c", "d", "e"]
    components = merge_groups(ids, {"a": "G1", "b": "G1", "zz": "G1"}, {"b": "S1", "c": "S1"}, {"e": "X"})
    assert sorted(sorted(g) for g in components) == [["a", "b", "c"], ["d"], ["e"]]


def test_make_folds_keeps_groups_together_and_balances_classes():
    labels, groups = {}, []
    n = 0
    # 60 benign, 30 malignant, 18 normal; groups of 1 to 4, a few mixing classes.
    for c, count in (("benign", 60), ("malignant", 30), ("normal", 18)):
        for _ in range(count):
            labels[f"{c}-{n}"] = c
            n += 1
    ids = list(labels)
    position = 0
    sizes = [4, 3, 3, 2, 2, 2, 1]
    while position < len(ids):
        size = sizes[len(groups) % len(sizes)]
        groups.append(ids[position:position + size])
        position += size
    assert any(len({labels[i] for i in g}) > 1 for g in groups)  # some cross-class groups

    folds = make_folds(labels, groups, k=4, seed=1)
    assert len(folds) == 4
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    assert len(fold_of) == sum(len(f) for f in folds) == len(ids)
    for group in groups:
        assert len({fold_of[i] for i in group}) == 1, group
    for c, total in Counter(labels.values()).items():
        for k, fold in enumerate(folds):
            count = sum(labels[i] == c for i in fold)
            assert abs(count - total / 4) <= 4, f"fold {k} has {count} {c} of {total}"
    # Deterministic for a seed.
    assert make_folds(labels, groups, k=4, seed=1) == folds
