"""imagemasknet.data.duplicates on a subset of the real BUSI scans: the cross-class look-alikes come out as label
conflicts, re-cropped and re-scaled copies are grouped, and unrelated scans stay apart.

Expected groups come from the data set's README ("Known problems"), which was worked out with a
different implementation; the audit never reads it.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from imagemasknet.data.busi import load_busi
from imagemasknet.data.duplicates import AuditResult, audit, duplicate_groups, format_table

CROSS_CLASS = {
    "G105": {"benign (433)", "malignant (145)"},
    "G027": {"benign (42)", "benign (131)", "malignant (51)"},
    "G039": {"benign (85)", "benign (164)", "malignant (52)"},
    "G098": {"benign (333)", "malignant (77)", "malignant (78)"},
    "G101": {"benign (399)", "malignant (93)"},
    "G104": {"benign (406)", "malignant (94)"},
    "G090": {"benign (269)", "normal (1)"},
    "G106": {"benign (437)", "normal (34)"},
}
SAME_CLASS = {
    "G037": {"benign (65)", "benign (99)", "benign (139)", "benign (157)"},  # re-exports of one frame
    "G143": {"normal (38)", "normal (43)", "normal (50)", "normal (53)"},  # normal (50) is half the size
    "G107": {"malignant (4)", "malignant (5)"},
    "G108": {"malignant (7)", "malignant (8)", "malignant (9)"},
}
# Frames of the same lesion next to G107 / G108, but not copies of either: they must stay out.
NEIGHBOUR_FRAMES = ["malignant (3)", "malignant (6)"]
# Scans in no near-duplicate group of the README.
UNRELATED = ([f"benign ({n})" for n in range(340, 355)] + [f"malignant ({n})" for n in range(150, 165)]
             + [f"normal ({n})" for n in range(82, 92)])
EXPECTED = {**CROSS_CLASS, **SAME_CLASS}


@pytest.fixture(scope="module")
def busi(busi_root):
    full = load_busi(busi_root)
    ids = [i for group in EXPECTED.values() for i in sorted(group)] + NEIGHBOUR_FRAMES + UNRELATED
    return full.subset(sorted(ids, key=full.ids.index))


@pytest.fixture(scope="module")
def result(busi, tmp_path_factory) -> AuditResult:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEMASKNET_CACHE", str(tmp_path_factory.mktemp("audit-cache")))
        return audit(busi)


def test_every_cross_class_lookalike_is_a_label_conflict(result):
    conflicts = [set(g.ids) for g in result.conflicts]
    for name, members in CROSS_CLASS.items():
        assert members in conflicts, f"{name} {sorted(members)} not found as one conflict group"
    assert len(conflicts) == len(CROSS_CLASS)


def test_recropped_and_rescaled_copies_group_exactly(result):
    found = sorted(sorted(g.ids) for g in result.groups)
    assert found == sorted(sorted(members) for members in EXPECTED.values())
    for group in result.groups:
        assert group.label_conflict == (len(set(group.labels)) > 1)
        assert group.labels == tuple(i.split(" (")[0] for i in group.ids)


def test_unrelated_scans_and_neighbouring_frames_stay_apart(result):
    grouped = duplicate_groups(result)
    assert not [i for i in UNRELATED + NEIGHBOUR_FRAMES if i in grouped]
    assert grouped["malignant (4)"] != grouped["malignant (7)"]


def test_pairs_carry_scores_and_scale(result):
    assert all(p.speckle_ncc >= 0.5 and 0 < p.coarse_ncc <= 1 for p in result.pairs)
    exact = next(p for p in result.pairs if {p.a, p.b} == CROSS_CLASS["G105"])
    assert exact.speckle_ncc > 0.99 and exact.scale_b_vs_a == pytest.approx(1, abs=0.02)
    # normal (50) is a half-size copy of the other three.
    for pair in result.pairs:
        if "normal (50)" in (pair.a, pair.b):
            scale_of_50 = pair.scale_b_vs_a if pair.b == "normal (50)" else 1 / pair.scale_b_vs_a
            assert scale_of_50 == pytest.approx(0.5, abs=0.03)


def test_duplicate_groups_maps_members_to_their_group(result):
    grouped = duplicate_groups(result)
    assert set(grouped) == {i for members in EXPECTED.values() for i in members}
    for group in result.groups:
        assert {grouped[i] for i in group.ids} == {group.name}
    assert len({g.name for g in result.groups}) == len(result.groups)


def test_counts_and_sizes_match_the_manifest(result, busi, busi_manifest):
    with open(busi_manifest, newline="", encoding="utf-8") as rows:
        manifest = {Path(r["image"]).stem: r for r in csv.DictReader(rows)}
    for name in ("normal", "benign", "malignant", "all"):
        ids = [c.id for c in busi.cases if name in ("all", c.label)]
        counts, sizes = result.counts[name], result.sizes[name]
        assert counts.images == sizes.images == len(ids)
        assert counts.mask_files == sum(int(manifest[i]["n_masks"]) for i in ids)
        widths = [int(manifest[i]["width"]) for i in ids]
        heights = [int(manifest[i]["height"]) for i in ids]
        assert (sizes.width_min, sizes.width_median, sizes.width_max) == (min(widths), statistics.median(widths), max(widths))
        assert (sizes.height_min, sizes.height_median, sizes.height_max) == (min(heights), statistics.median(heights), max(heights))
        assert sizes.width_mean == pytest.approx(statistics.fmean(widths), abs=0.05)
    # Every normal mask is empty; every lesion mask has pixels.
    assert result.counts["normal"].empty_masks == result.counts["normal"].images
    assert result.counts["benign"].empty_masks == result.counts["malignant"].empty_masks == 0


def test_json_and_table(result):
    report = json.loads(json.dumps(result.to_json()))
    assert {g["name"] for g in report["groups"]} == {g.name for g in result.groups}
    assert report["counts"]["all"]["images"] == result.counts["all"].images
    assert len(report["pairs"]) == len(result.pairs)
    table = format_table(result)
    assert "Label conflicts (one scan under several classes): 8" in table
    for group in result.conflicts:
        assert f"{group.name}  " + ", ".join(group.ids) in table
