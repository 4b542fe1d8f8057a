"""What would an ensemble of a cross-validation's five fold models give on BUS-BRA? Reported only.

The shipped model is one network: five would break the 10 MB weights budget and cost five times the
latency. This measures what that choice gives up on the external scans. The ensemble averages the
fold models' temperature-scaled logits. On BUSI the ensemble cannot be scored honestly (every fold
model trained on the other folds' test scans), so the figures are BUS-BRA's alone, and they choose
nothing.

    python benchmarks/fold_ensemble.py results/cv-wd --busbra ../shared/datasets/busbra/labels.csv \\
        --json benchmarks/results/fold-ensemble-busbra.json
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import torch

from imagemasknet.core.files import write_json
from imagemasknet.data.dataset import load_arrays
from imagemasknet.data.owndata import load_dataset
from imagemasknet.evaluation.evaluate import Predictions, lesion_summary, predict_arrays
from imagemasknet.inference.predictor import Predictor

FIGURES = ("benign_vs_malignant_auc", "lesions_called_normal")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="cross_validation.py --out folder")
    parser.add_argument("--busbra", required=True, help="BUS-BRA labels.csv")
    parser.add_argument("--preset", default="lesion-resunet")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    external_at = functools.cache(functools.partial(load_arrays, load_dataset(args.busbra)))
    per_fold: dict[str, list[dict]] = {}
    scaled_logits: dict[str, list[np.ndarray]] = {}
    reference: Predictions | None = None
    for k in args.folds:
        run = args.results / f"{args.preset}-fold{k}"
        if not (run / "best.safetensors").is_file():
            print(f"fold {k}: no finished run in {run}", file=sys.stderr)
            return 1
        print(f"fold {k} ...", file=sys.stderr, flush=True)
        fold_model = Predictor.from_run(run, device="cpu")
        for mode in fold_model.spec.modes:
            predictions = predict_arrays(fold_model.model, fold_model.spec, external_at(fold_model.image_size), mode,
                                         fold_model.device)
            temperature = fold_model.temperatures.get(mode, 1.0)
            per_fold.setdefault(mode, []).append({"fold": k, **lesion_summary(predictions, temperature)})
            scaled_logits.setdefault(mode, []).append(predictions.logits / temperature)
            reference = predictions
    report = {}
    for mode, logits in scaled_logits.items():
        averaged = dataclasses.replace(reference, logits=np.mean(logits, axis=0))
        report[mode] = {
            "folds": per_fold[mode],
            "fold_mean": {key: float(np.mean([row[key] for row in per_fold[mode]])) for key in FIGURES},
            "ensemble": lesion_summary(averaged),
        }
        print(f"{mode}: BUS-BRA AUC (B vs M) {report[mode]['fold_mean']['benign_vs_malignant_auc']:.3f} per fold model "
              f"(mean), {report[mode]['ensemble']['benign_vs_malignant_auc']:.3f} ensembled; lesions called normal "
              f"{report[mode]['fold_mean']['lesions_called_normal']:.1%} and {report[mode]['ensemble']['lesions_called_normal']:.1%}")
    if args.json:
        write_json(args.json, {"results": str(args.results), "busbra": args.busbra, "modes": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
