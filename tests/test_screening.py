"""benchmarks/screening.py applies the rule written before the first run: a candidate beats the baseline only
with a mean inner-validation loss lower by at least 0.01 and lower on both folds, and a planned candidate that has
not run is said to be missing rather than lost."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import screening  # noqa: E402

BASELINE = {"arch": "lesion-effnet-lite0", "epochs": 15, "checkpoint": "last", "seed": 0}


def _runs(results: Path, name: str, losses: list[float], finished: bool = True, first_fold: int = 0,
          **changes) -> None:
    for fold, loss in enumerate(losses, start=first_fold):
        run = results / f"screen-{name}" / f"{screening.PRESET}-fold{fold}"
        run.mkdir(parents=True)
        write_json(run / "config.json", {**BASELINE, **changes, "fold": fold, "out_dir": str(run)})
        write_json(run / "history.json", [{"epoch": 1, "validation": {"image": {"loss": loss + 0.2}}},
                                          {"epoch": 2, "validation": {"image": {"loss": loss}}}])
        RunFolder(run).write_status("finished" if finished else "cancelled")


def test_a_candidate_must_be_lower_on_both_folds_by_the_margin(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37])
    _runs(tmp_path, "B", [0.40, 0.38], epochs=25)  # mean 0.02 lower, but higher on fold 1
    _runs(tmp_path, "D", [0.435, 0.355], normal_crops=0.15)  # lower on both, by 0.015
    _runs(tmp_path, "E", [0.445, 0.365], paint_out_annotations=True)  # lower on both, by less than the margin
    _runs(tmp_path, "F", [0.44, 0.38], soft_targets="targets.json")  # higher on fold 1
    result = screening.screen(tmp_path)
    verdicts = {name: c["verdict"] for name, c in result["candidates"].items()}
    assert verdicts == {"A": "the baseline", "B": "does not beat A", "D": "beats A", "E": "does not beat A",
                        "F": "does not beat A"}
    assert result["winner"] == "D" and result["not_run"] == {}
    assert result["candidates"]["B"]["recipe"] == "25 epochs"
    assert result["candidates"]["E"]["recipe"] == "burnt-in marks painted out"


def test_candidates_not_run_are_named_and_the_baseline_is_needed(tmp_path):
    with pytest.raises(SystemExit, match="screen-A"):
        screening.screen(tmp_path)
    _runs(tmp_path, "A", [0.45, 0.37])
    (tmp_path / "screen-B").mkdir()  # made ready, nothing trained in it yet
    result = screening.screen(tmp_path)
    assert result["leading"] == "A" and result["winner"] is None  # no winner while candidates wait
    assert set(result["not_run"]) == {"B", "D", "E", "F"} and not result["not_finished"]


def test_a_run_cut_short_is_not_screened(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37])
    _runs(tmp_path, "B", [0.30, 0.30], finished=False, epochs=25)  # its last epoch so far looks better, but it stopped
    result = screening.screen(tmp_path)
    assert result["leading"] == "A" and list(result["not_finished"]) == ["B"] and "B" not in result["candidates"]


@pytest.mark.parametrize(("later", "verdict"), [([0.40, 0.42, 0.38], "not confirmed"),  # 0.008 lower: under
                                                 ([0.38, 0.40, 0.37], "confirmed")])  # 0.018 lower
def test_the_winner_is_confirmed_only_by_its_five_fold_mean(tmp_path, later, verdict):
    _runs(tmp_path, "A", [0.45, 0.37])
    _runs(tmp_path, "D", [0.43, 0.35], normal_crops=0.15)
    assert screening.screen(tmp_path)["confirmation"]["verdict"] == "not finished"
    _runs(tmp_path, "A", [0.40, 0.42, 0.38], first_fold=2)
    _runs(tmp_path, "D", later, first_fold=2, normal_crops=0.15)
    assert screening.screen(tmp_path)["confirmation"]["verdict"] == verdict


def test_one_fold_higher_than_the_baseline_decides_before_the_other_finishes(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37])
    _runs(tmp_path, "E", [0.50], paint_out_annotations=True, normal_crops=0.0)  # fold 1 not trained: fold 0 decides
    _runs(tmp_path, "D", [0.40], normal_crops=0.15)  # lower on fold 0: fold 1 still decides
    result = screening.screen(tmp_path)
    assert result["candidates"]["E"]["verdict"].startswith("does not beat A (higher on fold 0")
    assert result["candidates"]["E"]["inner_validation_loss"] == [0.50, None]
    assert result["candidates"]["E"]["recipe"] == "burnt-in marks painted out"
    assert list(result["not_finished"]) == ["D"] and result["leading"] == "A" and result["winner"] is None


def test_a_confirmation_fold_trained_with_other_flags_is_refused(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37, 0.40])
    _runs(tmp_path, "D", [0.43, 0.35], normal_crops=0.15)
    _runs(tmp_path, "D", [0.39], first_fold=2, normal_crops=0.3)
    with pytest.raises(SystemExit, match="fold2 trained with a recipe other than its fold 0's"):
        screening.screen(tmp_path)


def test_a_distilled_candidate_reads_each_folds_own_table_and_stays_one_recipe(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37, 0.40, 0.41, 0.42])
    for fold, loss in enumerate([0.43, 0.35, 0.38, 0.40, 0.41]):
        _runs(tmp_path, "F", [loss], first_fold=fold, soft_targets=f"results/teachers-F/fold{fold}-targets.json")
    result = screening.screen(tmp_path)
    assert result["candidates"]["F"]["recipe"] == "distilled from cross-fitted teachers"
    assert result["confirmation"]["verdict"] == "confirmed"
    # The check can fail: a fold trained without its table is another recipe.
    write_json(tmp_path / "screen-F" / f"{screening.PRESET}-fold3" / "config.json",
               {**BASELINE, "fold": 3, "out_dir": "x"})
    with pytest.raises(SystemExit, match="fold3 trained with a recipe other than its fold 0's"):
        screening.screen(tmp_path)


def test_when_the_best_candidate_is_not_confirmed_the_next_that_beats_a_is_confirmed_in_turn(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37, 0.40, 0.42, 0.38])
    _runs(tmp_path, "D", [0.42, 0.34, 0.45, 0.45, 0.40], normal_crops=0.15)  # beats A most on two folds; fails on five
    _runs(tmp_path, "F", [0.43, 0.35], soft_targets="targets.json")  # beats A by less
    result = screening.screen(tmp_path)
    assert list(result["confirmations"]) == ["D", "F"] and result["confirmations"]["D"]["verdict"] == "not confirmed"
    assert result["leading"] == "F" and result["confirmation"]["verdict"] == "not finished"
    _runs(tmp_path, "F", [0.38, 0.40, 0.36], first_fold=2, soft_targets="targets.json")
    assert screening.screen(tmp_path)["confirmation"]["verdict"] == "confirmed"


def test_when_every_confirmation_fails_the_best_on_folds_0_and_1_is_named_and_a_ships(tmp_path):
    _runs(tmp_path, "A", [0.45, 0.37, 0.40, 0.42, 0.38])
    _runs(tmp_path, "D", [0.42, 0.34, 0.45, 0.45, 0.40], normal_crops=0.15)
    _runs(tmp_path, "F", [0.43, 0.35, 0.45, 0.45, 0.40], soft_targets="targets.json")
    result = screening.screen(tmp_path)
    assert [c["verdict"] for c in result["confirmations"].values()] == ["not confirmed", "not confirmed"]
    assert result["leading"] == "D" and result["confirmation"]["verdict"] == "not confirmed"
