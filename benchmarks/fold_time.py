"""Training time of one cross-validation fold of the shipped recipe on this machine, per precision, with
the fold's test metrics beside it (so a faster precision shows what, if anything, it costs).

For each precision it trains ``imagemasknet train --preset lesion-resunet --fold F --precision P`` into
OUT/lesion-resunet-foldF-P (a finished run folder there is reused, not trained again) and evaluates it on
its test fold. The time is the run's own clock: all 60 epochs with their per-epoch held-out evaluation,
from the first epoch to the last (start-up and decoding the scans into the cache not included).

    python benchmarks/fold_time.py --fold 0 --precision fp32 bf16 --out results/fold-time \\
        --json benchmarks/results/fold-time-cpu.json
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

from cross_validation import job_commands

from imagemasknet.core.files import read_json, write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.training.config import PRECISIONS

PRESET = "lesion-resunet"


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def run_fold(out: Path, fold: int, precision: str) -> Path:
    """Train (unless a finished run is there) and evaluate on the test fold, as the cross-validation does."""
    run = out / f"{PRESET}-fold{fold}-{precision}"
    train, evaluate = job_commands(run, PRESET, ["--fold", str(fold), "--precision", precision],
                                   argparse.Namespace(busbra=None, resamples=1000))
    if RunFolder(run).state != "finished":
        print(f"training fold {fold} with {precision} into {run} …", flush=True)
        subprocess.run(train, check=True)
    if not (run / "metrics-test.json").exists():
        subprocess.run(evaluate, check=True, stdout=subprocess.DEVNULL)
    return run


def summary(run: Path) -> dict:
    history = read_json(run / "history.json")
    modes = read_json(run / "metrics-test.json")["modes"]
    result = {"run": run.name, "epochs": len(history), "minutes": round(history[-1]["seconds"] / 60, 1)}
    for mode, report in modes.items():
        metrics = report["metrics"]
        result[mode] = {name: round(metrics[name]["value"], 3) for name in ("accuracy", "macro_auc", "recall_malignant")}
        dice = report.get("lesion_dice") or {}
        result[mode]["lesion_dice"] = round(dice["mean"], 3) if dice.get("mean") is not None else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--out", type=Path, default=Path("results/fold-time"))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rows = {precision: summary(run_fold(args.out, args.fold, precision)) for precision in args.precision}
    print("| precision | minutes per fold | image acc | image macro AUC | image malignant sens | mask acc | lesion Dice |")
    print("|---|---|---|---|---|---|---|")
    for precision, row in rows.items():
        image, mask = row["image"], row["mask"]
        print(f"| {precision} | {row['minutes']} | {image['accuracy']} | {image['macro_auc']} | "
              f"{image['recall_malignant']} | {mask['accuracy']} | {image['lesion_dice']} |")
    if args.json:
        write_json(args.json, {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
                               "fold": args.fold, "preset": PRESET, "runs": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
