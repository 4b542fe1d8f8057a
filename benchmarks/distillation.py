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

The shipped model's own teachers are the released cross-validation's fold models: its out-of-fold table
(``weights/lesion-effnet-lite0/oof.json``) already gives every training scan a prediction by a model that never
trained on it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.sources import load_training_set
from imagemasknet.data.splits import cross_fitting_halves, inner_validation, resolve_split
from imagemasknet.models.bundle import write_out_of_fold
from imagemasknet.ops.release import out_of_fold
from imagemasknet.training.config import preset

PRESET = "lesion-effnet-lite0"


def write_halves(out: Path, folds: list[int]) -> None:
    """``foldK-halfH.json``: teacher H trains on half H of fold K's training scans and is tested on the other."""
    config = preset(PRESET)
    data = load_training_set(config.sources, None, "replace")
    out.mkdir(parents=True, exist_ok=True)
    for k in folds:
        train, _ = resolve_split(data, k, None)
        train, _ = inner_validation(train, data, config.val_fraction, config.seed)
        halves = cross_fitting_halves(train, data, config.seed)
        for h, half in enumerate(halves):
            write_json(out / f"fold{k}-half{h}.json", {
                "description": f"teacher {h} of pooled fold {k}'s student: trains on half {h} of its training scans, "
                               "predicts the other half",
                "train": half, "test": halves[1 - h]})
            print(f"fold {k} half {h}: {len(half)} train, {len(halves[1 - h])} test")


def write_targets(out: Path, folds: list[int]) -> None:
    """``foldK-targets.json``: each of fold K's training scans as predicted by the teacher that did not train on it."""
    for k in folds:
        runs = [out / f"fold{k}-half{h}" for h in (0, 1)]
        unfinished = [run.name for run in runs if RunFolder(run).state != "finished"]
        if unfinished:
            raise SystemExit(f"teachers not finished: {', '.join(unfinished)}; train them first (see --help)")
        rows = out_of_fold(runs, familiarity=False)
        write_out_of_fold(out / f"fold{k}-targets.json", PRESET, rows,
                          note=f"pooled fold {k}'s soft targets: each training scan's prediction by the teacher that "
                               "trained on the other half of the fold's training scans, calibrated by that teacher's "
                               "temperature")
        print(f"fold {k}: {len(rows)} scans' soft targets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("halves", "targets"))
    parser.add_argument("--out", type=Path, required=True, help="the teachers' folder")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args()
    if args.step == "halves":
        write_halves(args.out, args.folds)
    else:
        write_targets(args.out, args.folds)


if __name__ == "__main__":
    main()
