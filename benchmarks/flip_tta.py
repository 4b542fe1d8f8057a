"""Does averaging each scan with its left-right mirror (flip test-time augmentation) help?

For every fold run of a cross-validation results folder: the inner-validation loss with and without
the mirror (the figure that decides, as for every recipe choice), then, for the record, the test-fold
metrics and the BUS-BRA external figures both ways. The temperature is refitted on the inner
validation split for the mirrored logits, as training fits it for the plain ones.

    python benchmarks/flip_tta.py results/cv-ema --busbra ../shared/datasets/busbra/labels.csv \\
        --json benchmarks/results/flip-tta-ema.json
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import load_arrays
from imagemasknet.data.owndata import load_dataset
from imagemasknet.evaluation.evaluate import lesion_summary, predict_arrays
from imagemasknet.evaluation.metrics import expected_calibration_error, fit_temperature, point_metrics, softmax
from imagemasknet.inference.predictor import Predictor
from imagemasknet.training.step import heldout_metrics

SETTINGS = {"plain": False, "mirror-averaged": True}


def fold_figures(run: Path, busi_at, busbra_at, device: torch.device) -> dict:
    """``busi_at(size)`` / ``busbra_at(size)``: the decoded scans at that size (``busbra_at`` may be None)."""
    fold_model = Predictor.from_run(run, device=str(device))
    model, spec = fold_model.model, fold_model.spec
    split = RunFolder(run).split
    arrays = busi_at(fold_model.image_size)
    external = busbra_at(fold_model.image_size) if busbra_at is not None else None
    figures: dict = {}
    for mode in spec.modes:
        for setting, flip in SETTINGS.items():
            def predict(target):
                return predict_arrays(model, spec, target, mode, device, flip_average=flip)

            validation, test = predict(arrays.take(split["validation"])), predict(arrays.take(split["test"]))
            temperature = fit_temperature(validation.logits, validation.labels)
            metrics = point_metrics(softmax(test.logits, temperature), test.labels)
            row = {"inner_validation_loss": heldout_metrics(validation)["loss"],  # as training records it
                   "temperature": temperature,
                   "test": {"accuracy": metrics["accuracy"], "macro_auc": metrics["macro_auc"],
                            "recall_malignant": metrics["recall_malignant"],
                            "ece": expected_calibration_error(softmax(test.logits, temperature), test.labels),
                            "lesion_dice": heldout_metrics(test).get("lesion_dice")}}
            if external is not None:
                row["busbra"] = lesion_summary(predict(external), temperature)
            figures.setdefault(mode, {})[setting] = row
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="cross_validation.py --out folder")
    parser.add_argument("--preset", default="lesion-resunet")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--busbra", help="BUS-BRA labels.csv: external figures, reported only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    busi = load_busi()
    busbra = load_dataset(args.busbra) if args.busbra else None
    busi_at = functools.cache(functools.partial(load_arrays, busi))  # decoded once, not once per fold
    busbra_at = functools.cache(functools.partial(load_arrays, busbra)) if busbra is not None else None
    folds = {}
    for k in args.folds:
        run = args.results / f"{args.preset}-fold{k}"
        if not (run / "best.safetensors").is_file():
            print(f"fold {k}: no finished run in {run}; skipped", file=sys.stderr)
            continue
        print(f"fold {k} ...", file=sys.stderr, flush=True)
        folds[k] = fold_figures(run, busi_at, busbra_at, torch.device("cpu"))
    if not folds:
        print(f"no finished fold runs under {args.results}", file=sys.stderr)
        return 1
    means: dict = {}
    for mode in next(iter(folds.values())):
        for setting in SETTINGS:
            rows = [f[mode][setting] for f in folds.values()]
            flat = {"inner_validation_loss": [r["inner_validation_loss"] for r in rows],
                    **{k: [r["test"][k] for r in rows] for k in rows[0]["test"]},
                    **{f"busbra_{k}": [r["busbra"][k] for r in rows] for k in rows[0].get("busbra", {})
                       if k != "n_lesion_scans"}}
            means.setdefault(mode, {})[setting] = {k: float(np.mean([v for v in values if v is not None]))
                                                   for k, values in flat.items()}
    for mode, settings in means.items():
        print(f"\n{mode} mode, mean over folds {sorted(folds)}")
        keys = list(next(iter(settings.values())))
        print(f"{'':<22}" + "".join(f"{s:>18}" for s in settings))
        for key in keys:
            print(f"{key:<22}" + "".join(f"{settings[s][key]:>18.4f}" for s in settings))
    if args.json:
        write_json(args.json, {"results": str(args.results), "folds": folds, "mean": means})
    return 0


if __name__ == "__main__":
    sys.exit(main())
