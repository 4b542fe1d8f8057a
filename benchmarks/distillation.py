"""Candidate F of the two-hospital screening (docs/training.md, "Choosing a recipe"): the student of a pooled fold
learns from hard labels and from teachers that never saw the scan they teach on, its validation scans or its test
fold. Per screening fold K, two teachers (the baseline recipe) are trained on the two halves of fold K's training
scans, each predicting the other half; their calibrated probabilities are the student's soft targets.

    python benchmarks/distillation.py halves --out results/teachers-F --folds 0 1
    for K in 0 1; do for H in 0 1; do
      imagemasknet train --preset lesion-effnet-lite0 --precision bf16 --no-progress \\
          --split-file results/teachers-F/fold$K-half$H.json --out-dir results/teachers-F/fold$K-half$H
    done; done
    python benchmarks/distillation.py targets --out results/teachers-F --folds 0 1
    for K in 0 1; do
      imagemasknet train --preset lesion-effnet-lite0 --precision bf16 --no-progress --fold $K \\
          --soft-targets results/teachers-F/fold$K-targets.json --out-dir results/screen-F/lesion-effnet-lite0-fold$K
    done

``--folds none`` does the same for a run on all data (``all-half0``, ``all-half1``, ``all-targets.json``; the
student with ``--fold none``). The released fold models cannot teach it: each trained on four fifths of the scans,
the all-data run's validation scans among them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from imagemasknet.core.files import read_json, write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.sources import load_training_set
from imagemasknet.data.splits import cross_fitting_halves
from imagemasknet.models.bundle import write_out_of_fold
from imagemasknet.ops.release import out_of_fold
from imagemasknet.training.config import preset
from imagemasknet.training.trainer import new_split

PRESET = "lesion-effnet-lite0"


def name(fold: int | None) -> str:
    return "all" if fold is None else f"fold{fold}"


def write_halves(out: Path, folds: list[int | None]) -> None:
    """``foldK-halfH.json``: teacher H trains on half H of fold K's training scans and is tested on the other."""
    out.mkdir(parents=True, exist_ok=True)
    for k in folds:
        config = preset(PRESET, fold=k)  # the student's: its training scans are what the teachers share out
        data = load_training_set(config.sources, config.data, config.data_mode)
        halves = cross_fitting_halves(new_split(config, data).train, data, config.seed)
        for h, half in enumerate(halves):
            write_json(out / f"{name(k)}-half{h}.json", {
                "description": f"teacher {h} of the {name(k)} student: trains on half {h} of its training scans, "
                               "predicts the other half",
                "train": half, "test": halves[1 - h]})
            print(f"{name(k)} half {h}: {len(half)} train, {len(halves[1 - h])} test")


def write_targets(out: Path, folds: list[int | None]) -> None:
    """``foldK-targets.json``: each of fold K's training scans as predicted by the teacher that did not train on it."""
    for k in folds:
        runs = [out / f"{name(k)}-half{h}" for h in (0, 1)]
        for h, run in enumerate(runs):
            folder, half = RunFolder(run), read_json(out / f"{name(k)}-half{h}.json", {"train": [], "test": []})
            if folder.state != "finished":
                raise SystemExit(f"teacher {run} has not finished; train it first (see --help)")
            split = folder.split
            if set(split["train"] + split["validation"]) != set(half["train"]) or split["test"] != half["test"]:
                raise SystemExit(f"teacher {run} did not train on {name(k)}-half{h}.json's scans; train it again with "
                                 "--split-file that file")
        rows = out_of_fold(runs, familiarity=False)
        write_out_of_fold(out / f"{name(k)}-targets.json", PRESET, rows,
                          note=f"the {name(k)} student's soft targets: each training scan's prediction by the teacher "
                               "that trained on the other half of its training scans, calibrated by that teacher's "
                               "temperature")
        print(f"{name(k)}: {len(rows)} scans' soft targets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("halves", "targets"))
    parser.add_argument("--out", type=Path, required=True, help="the teachers' folder")
    parser.add_argument("--folds", nargs="+", type=lambda text: None if text == "none" else int(text), default=[0, 1],
                        help="pooled folds (0-4), or none for an all-data run")
    args = parser.parse_args()
    if args.step == "halves":
        write_halves(args.out, args.folds)
    else:
        write_targets(args.out, args.folds)


if __name__ == "__main__":
    main()
