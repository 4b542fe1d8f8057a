"""Turn a cross-validation results folder (``cross_validation.py --out``) into the README tables,
a compact summary JSON (committed under benchmarks/results/), and, with ``--ship``, the shipped
model's bundle (through ``imagemasknet release``).

    python benchmarks/summarise.py results/cv-wd --json benchmarks/results/cv-summary-weight-decay.json --ship lesion-resunet
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from imagemasknet.core.files import read_json, write_json
from imagemasknet.core.paths import WEIGHTS_DIR
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.evaluation.metrics import mean_sd
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import get_spec
from imagemasknet.ops.release import release

PRESETS = {"lesion-effnet-lite0": "lesion-effnet-lite0 (pretrained encoder)", "lesion-resunet": "lesion-resunet",
           "study-m1": "study Model 1", "study-m2": "study Model 2"}
COLUMNS = [("accuracy", "accuracy"), ("macro_auc", "macro AUC"), ("recall_malignant", "malignant sensitivity"),
           ("macro_f1", "macro F1"), ("ece", "ECE")]


SOURCE_FIGURES = ("accuracy", "macro_auc", "recall_malignant", "benign_vs_malignant_auc", "lesions_called_normal")


def source_figures(part: dict) -> dict[str, float | None]:
    """One source's figures in a fold's test report (its ``by_source`` entry)."""
    return {**{key: part["metrics"][key]["value"] for key in ("accuracy", "macro_auc", "recall_malignant")},
            **{key: part["lesions"].get(key) for key in ("benign_vs_malignant_auc", "lesions_called_normal")}}


def _finite(value) -> bool:
    return value is not None and bool(np.isfinite(value))


def _mode_metrics(path: Path, mode: str) -> dict | None:
    report = read_json(path)
    return report and report["modes"].get(mode)


def inner_validation_loss(run: Path, mode: str) -> float | None:
    """The validation loss in ``mode`` of the checkpoint the run kept (its config's checkpoint rule; for
    the lowest-loss rule, the epoch with the lowest validation loss in the model's first mode): the
    figure that chooses between recipes."""
    history = [e for e in read_json(run / "history.json", []) if e.get("validation")]
    if not history:
        return None
    if RunFolder(run).config.get("checkpoint", "lowest-loss") == "last":
        return history[-1]["validation"][mode]["loss"]
    primary = next(iter(history[0]["validation"]))
    best = min(history, key=lambda e: e["validation"][primary]["loss"])
    return best["validation"][mode]["loss"]


def checkpoint_rules(run: Path, mode: str) -> dict[str, float]:
    """Each checkpoint rule's validation loss in ``mode``, none of them scored on the scans that chose it:
    ``lowest-loss`` picks its epoch on one half of the validation scans and is scored on the other half
    (both ways, averaged); ``last`` is the final epoch; ``average`` the kept average of the last epochs,
    evaluated here."""
    history = [e for e in read_json(run / "history.json", []) if e.get("validation")]
    if not history or "loss_halves" not in history[0]["validation"][mode]:
        return {}
    halves = np.array([e["validation"][mode]["loss_halves"] for e in history])
    rules = {"lowest-loss": float(np.mean([halves[int(np.argmin(halves[:, h])), 1 - h] for h in (0, 1)])),
             "last": float(halves[-1].mean())}
    if (run / "average.safetensors").is_file():
        rules["average"] = float(np.mean(validation_halves(run, "average", mode)))
    return rules


def validation_halves(run: Path, checkpoint: str, mode: str) -> list[float]:
    """A checkpoint's loss on each half of the run's validation scans (the halves history.json records)."""
    from imagemasknet.data.dataset import load_arrays
    from imagemasknet.data.sources import training_set_of
    from imagemasknet.evaluation.evaluate import predict_arrays
    from imagemasknet.training.step import heldout_metrics

    predictor = Predictor.from_run(run, checkpoint, device="cpu")
    config = predictor.card.config
    arrays = load_arrays(training_set_of(config), predictor.image_size)
    ids = RunFolder(run).split["validation"]
    predictions = predict_arrays(predictor.model, predictor.spec, arrays.take(ids), mode, predictor.device)
    return heldout_metrics(predictions, halves=True)["loss_halves"]


def summarise(results: Path, folds: list[int]) -> dict:
    summary: dict = {}
    for preset in PRESETS:
        if not any((results / f"{preset}-{job}").is_dir() for job in [*(f"fold{k}" for k in folds), "all"]):
            continue  # a results folder of some presets only
        configs = [RunFolder(results / f"{preset}-{job}").config for job in ["all", *(f"fold{k}" for k in folds)]]
        spec = get_spec(next(c["arch"] for c in configs if c))
        for mode in spec.modes:
            per_fold = []
            for k in folds:
                test = _mode_metrics(results / f"{preset}-fold{k}" / "metrics-test.json", mode)
                external = _mode_metrics(results / f"{preset}-fold{k}" / "metrics-busbra.json", mode)
                if not test:
                    continue
                row = {"fold": k, **{key: test["metrics"][key] for key, _ in COLUMNS},
                       "uncalibrated_ece": test.get("uncalibrated_ece"),
                       "lesion_dice": test.get("lesion_dice", {}).get("mean"),
                       "inner_validation_loss": inner_validation_loss(results / f"{preset}-fold{k}", mode),
                       "checkpoint_rules": checkpoint_rules(results / f"{preset}-fold{k}", mode)}
                average = _mode_metrics(results / f"{preset}-fold{k}" / "metrics-test-average.json", mode)
                average_external = _mode_metrics(results / f"{preset}-fold{k}" / "metrics-busbra-average.json", mode)
                if average:
                    row["average_checkpoint"] = {key: average["metrics"][key]["value"] for key, _ in COLUMNS} | {
                        "lesion_dice": average.get("lesion_dice", {}).get("mean")}
                    if average_external:
                        row["average_checkpoint"] |= {"busbra_auc": average_external["lesions"]["benign_vs_malignant_auc"],
                                                      "busbra_called_normal": average_external["lesions"]["lesions_called_normal"]}
                if external:
                    row["busbra_auc"] = external["lesions"]["benign_vs_malignant_auc"]
                    row["busbra_called_normal"] = external["lesions"]["lesions_called_normal"]
                if test.get("by_source"):
                    row["by_source"] = {source: source_figures(part) for source, part in test["by_source"].items()}
                per_fold.append(row)
            entry: dict = {"folds": per_fold}
            if per_fold:
                for key in [k for k, _ in COLUMNS]:
                    entry[key] = mean_sd([r[key]["value"] for r in per_fold])
                for key in ("lesion_dice", "busbra_auc", "busbra_called_normal", "uncalibrated_ece", "inner_validation_loss"):
                    values = [r[key] for r in per_fold if r.get(key) is not None]
                    if values:
                        entry[key] = mean_sd(values)
                sources = [r["by_source"] for r in per_fold if "by_source" in r]
                if len(sources) == len(per_fold):
                    entry["by_source"] = {source: {key: mean_sd([f[source][key] for f in sources])
                                                   for key in SOURCE_FIGURES if all(_finite(f[source][key]) for f in sources)}
                                          for source in sources[0]}
                rules = sorted(set.intersection(*(set(r["checkpoint_rules"]) for r in per_fold)))
                if rules:
                    entry["checkpoint_rules"] = {rule: mean_sd([r["checkpoint_rules"][rule] for r in per_fold]) for rule in rules}
                if all("average_checkpoint" in r for r in per_fold):
                    keys = set.intersection(*(set(r["average_checkpoint"]) for r in per_fold))
                    entry["average_checkpoint"] = {key: mean_sd([r["average_checkpoint"][key] for r in per_fold])
                                                   for key in sorted(keys) if all(r["average_checkpoint"][key] is not None for r in per_fold)}
            own = _mode_metrics(results / f"{preset}-all" / "metrics-study-protocol.json", mode)
            external = _mode_metrics(results / f"{preset}-all" / "metrics-busbra.json", mode)
            if own:
                entry["study_protocol"] = {key: own["metrics"][key] for key, _ in COLUMNS}
            if external:
                entry["all_data_busbra"] = external["lesions"] | {"metrics": {k: external["metrics"][k] for k in ("accuracy",)}}
            summary.setdefault(preset, {})[mode] = entry
    return summary


def _pm(entry: dict, key: str, percent: bool = False) -> str:
    if key not in entry:
        return "–"
    scale = 100 if percent else 1
    return f"{entry[key]['mean'] * scale:.3f} ± {entry[key]['std'] * scale:.3f}" if not percent else \
        f"{entry[key]['mean'] * scale:.1f} % ± {entry[key]['std'] * scale:.1f}"


def tables(summary: dict) -> str:
    lines = ["### Duplicate-aware 5-fold cross-validation (mean ± SD over folds) and BUS-BRA (each fold's model)", "",
             "| model | mode | accuracy | macro AUC | malignant sensitivity | macro F1 | ECE | lesion Dice | BUS-BRA AUC (B vs M) | BUS-BRA lesions called normal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for preset, modes in summary.items():
        for mode, e in modes.items():
            lines.append(f"| {PRESETS[preset]} | {mode} | {_pm(e, 'accuracy')} | {_pm(e, 'macro_auc')} | "
                         f"{_pm(e, 'recall_malignant')} | {_pm(e, 'macro_f1')} | {_pm(e, 'ece')} | {_pm(e, 'lesion_dice')} | "
                         f"{_pm(e, 'busbra_auc')} | {_pm(e, 'busbra_called_normal', percent=True)} |")
    lines += ["", "### The study's protocol (each all-data model scored on its own training images) and on BUS-BRA", "",
              "| model | mode | accuracy on its own training images | BUS-BRA AUC (B vs M) | BUS-BRA lesions called normal |",
              "|---|---|---|---|---|"]

    def figure(value, scale: float = 1.0, suffix: str = "") -> str:
        return "–" if value is None else f"{scale * value:.{1 if suffix else 3}f}{suffix}"

    for preset, modes in summary.items():
        for mode, e in modes.items():
            own = e.get("study_protocol", {}).get("accuracy", {}).get("value")
            ext = e.get("all_data_busbra", {})
            lines.append(f"| {PRESETS[preset]} | {mode} | {figure(own)} | {figure(ext.get('benign_vs_malignant_auc'))} | "
                         f"{figure(ext.get('lesions_called_normal'), 100, ' %')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--ship", help="preset whose all-data run becomes the shipped model (`imagemasknet release`)")
    parser.add_argument("--busbra", help="BUS-BRA labels.csv: with --ship, report the flag and familiarity figures there")
    parser.add_argument("--unseen-hospital", action="store_true",
                        help="with --busbra: BUS-BRA is a hospital the shipped model never trained on (BUSI-only models)")
    args = parser.parse_args()
    summary = summarise(args.results, args.folds)
    print(tables(summary))
    if args.json:
        write_json(args.json, summary)
    if args.ship:
        bundle = release([args.results / f"{args.ship}-fold{k}" for k in args.folds], args.results / f"{args.ship}-all",
                         WEIGHTS_DIR / get_spec(args.ship).name, external={"busbra": args.busbra} if args.busbra else None,
                         unseen_hospital="busbra" if args.busbra and args.unseen_hospital else None)
        print(f"shipped {bundle.folder} (imagemasknet release)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
