"""Duplicate-aware 5-fold cross-validation of every model, the study's own protocol, and BUS-BRA.

For each preset it trains one run per fold (test fold never seen, checkpoint and temperature chosen
on an inner validation split of the training folds) and one run on all data, then evaluates:
fold runs on their test fold and on BUS-BRA, all-data runs on their own training images (the
study's protocol) and on BUS-BRA. Jobs run as separate processes, several at once when the machine
allows it; past the deadline, running jobs are cancelled (their run folders stay consistent) and
only finished runs are evaluated. ``summarise.py`` turns the results folder into the README tables.

    python benchmarks/cross_validation.py --out results/cv --busbra ../shared/datasets/busbra/labels.csv \
        --parallel 1 --workers 0            # this 2-core machine: many hours
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("lesion-resunet", "study-m1", "study-m2")


def jobs(presets: list[str], folds: list[int], extra: list[str], all_data: bool = True) -> list[tuple[str, str, list[str]]]:
    """(name, preset, train flags), the shipped model's runs first."""
    out = []
    for preset in presets:
        for fold in folds:
            out.append((f"{preset}-fold{fold}", preset, ["--fold", str(fold), *extra]))
        if all_data:
            out.append((f"{preset}-all", preset, ["--fold", "none", *extra]))
    return out


def job_commands(run: Path, preset: str, flags: list[str], args: argparse.Namespace) -> list[list[str]]:
    """Train, then evaluate: fold runs on their test fold, all-data runs on their own training
    images (the study's protocol); both on BUS-BRA when given."""
    python = [sys.executable, "-m", "imagemasknet"]
    commands = [[*python, "train", "--preset", preset, "--no-progress", "--out-dir", str(run), *flags]]
    own = ("study-protocol", ["--on", "train"]) if run.name.endswith("-all") else ("test", ["--on", "test"])
    evaluations = [own] + ([("busbra", ["--data", args.busbra])] if args.busbra else [])
    for checkpoint in ["best", *getattr(args, "checkpoints", [])]:
        suffix = "" if checkpoint == "best" else f"-{checkpoint}"
        for label, target in evaluations:
            commands.append([*python, "evaluate", "--run", str(run), *target, "--checkpoint", checkpoint,
                             "--resamples", str(args.resamples), "--json", str(run / f"metrics-{label}{suffix}.json")])
    return commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results folder (one run folder per job)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--busbra", help="BUS-BRA labels.csv for the external figures")
    parser.add_argument("--parallel", type=int, default=1, help="training processes at once")
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers per process")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds before running jobs are cancelled")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--checkpoints", nargs="*", default=[], choices=("last", "average"),
                        help="also evaluate these checkpoints of each run (metrics-test-last.json, …), to compare "
                             "checkpoint rules on one set of runs")
    parser.add_argument("--no-all-data", action="store_true", help="train the folds only, not the all-data model")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every train call")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pending = jobs(args.presets, args.folds, ["--num-workers", str(args.workers), *args.extra], not args.no_all_data)
    running: dict[str, subprocess.Popen] = {}
    finished: list[str] = []
    while pending or running:
        late = time.monotonic() - started > args.deadline
        while pending and len(running) < args.parallel and not late:
            name, preset, flags = pending.pop(0)
            running[name] = subprocess.Popen(
                ["bash", "-c", " && ".join(shlex.join(c) for c in job_commands(out / name, preset, flags, args))],
                stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
            )
            print(f"[{time.monotonic() - started:6.0f}s] started {name}", flush=True)
        if late and pending:
            print(f"deadline reached: not starting {[p[0] for p in pending]}", flush=True)
            pending.clear()
        for name, process in list(running.items()):
            if late and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            if process.poll() is not None:
                del running[name]
                state = "finished" if process.returncode == 0 else f"exit {process.returncode}"
                print(f"[{time.monotonic() - started:6.0f}s] {name}: {state}", flush=True)
                if process.returncode == 0:
                    finished.append(name)
        time.sleep(1)
    print(f"done in {time.monotonic() - started:.0f}s; {len(finished)} runs finished")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
