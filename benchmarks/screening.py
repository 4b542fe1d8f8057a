"""The two-hospital screening (docs/training.md, "Choosing a recipe"): each candidate's image-mode
inner-validation loss on pooled folds 0 and 1, judged against the baseline by the rule written before the first
run. It reads run histories only: no test fold, no BUS-BRA evaluation scan.

    python benchmarks/screening.py results --json benchmarks/results/screening.json

``results/screen-A`` is the baseline; every other ``results/screen-X`` is a candidate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import fmean

from summarise import inner_validation_loss

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.training.config import TrainConfig

PRESET = "lesion-effnet-lite0"
FOLDS = (0, 1)
CONFIRMATION_FOLDS = (0, 1, 2, 3, 4)
MARGIN = 0.01  # a candidate's mean must be this much lower than the baseline's, and lower on both folds
RULE = ("The rule, written before the first run: on pooled folds 0 and 1, a candidate beats the baseline (A) when "
        f"its mean image-mode inner-validation loss is lower by at least {MARGIN} and it is lower on both folds; the "
        "candidate that beats A by the most is confirmed on five folds (its mean over them again lower by at least "
        f"{MARGIN}; this criterion added before any candidate's run finished); should it fail, the next candidate that "
        "beats A is confirmed the same way (added before candidate F's first run finished), and A ships if none is "
        "confirmed.")
# What each option of TrainConfig means in words, for the candidates' differences from the baseline.
OPTIONS = {"epochs": "{} epochs", "normal_crops": "lesion-free squares of lesion scans as normal examples ({} per scan per epoch)",
           "paint_out_annotations": "burnt-in marks painted out", "source_balanced": "sources drawn equally often",
           "soft_targets": "distilled from cross-fitted teachers", "distill_weight": "the teacher's share of the loss {}"}
SAME_IN_EVERY_RUN = ("fold", "out_dir", "seed", "num_workers", "device")
# The plan written before the first run (docs/training.md, "Choosing a recipe"); C was dropped before any result.
PLANNED = {"B": "a longer schedule (25 epochs)", "D": "lesion-free squares of lesion scans as normal examples",
           "E": "burnt-in marks painted out", "F": "distilled from cross-fitted teachers"}


def changes(config: dict, baseline: dict) -> dict:
    """The training options in which ``config`` differs from ``baseline``."""
    # An option newer than the baseline's run is absent from its config: it ran with the option's default.
    defaults = TrainConfig().to_dict()
    config, baseline = _comparable(config), _comparable({**defaults, **baseline})
    return {k: v for k, v in config.items() if k not in SAME_IN_EVERY_RUN and baseline.get(k) != v}


def _comparable(config: dict) -> dict:
    """Each fold's soft-target table is its own (its teachers never saw that fold's scans): a recipe distils or not."""
    return {**config, "soft_targets": bool(config.get("soft_targets"))}


def recipe(config: dict, baseline: dict) -> str:
    changed = changes(config, baseline)
    if not changed:
        return "the default recipe on both sources"
    return "; ".join(OPTIONS.get(k, f"{k} {{}}").format(v) if not isinstance(v, bool) else OPTIONS.get(k, k)
                     for k, v in sorted(changed.items()))


def finished_loss(run: Path) -> float | None:
    """The run's figure, or None while it has not finished: a run cut short has a history too."""
    return inner_validation_loss(run, "image") if RunFolder(run).complete else None


def confirmation(results: Path, winner: str) -> dict:
    """The winner against A on all five pooled folds, once both have finished them."""
    runs = {name: [results / f"screen-{name}" / f"{PRESET}-fold{k}" for k in CONFIRMATION_FOLDS]
            for name in ("A", winner)}
    for name, folds in runs.items():
        screened = RunFolder(folds[0]).config
        for run in folds[1:]:
            if run.is_dir() and changes(RunFolder(run).config, screened):
                raise SystemExit(f"{run} trained with a recipe other than its fold 0's "
                                 f"({recipe(RunFolder(run).config, screened)}); train it again with the screened flags")
    losses = {name: [finished_loss(run) for run in folds] for name, folds in runs.items()}
    entry = {"folds": list(CONFIRMATION_FOLDS), "inner_validation_loss": losses}
    if any(v is None for values in losses.values() for v in values):
        return {**entry, "verdict": "not finished"}
    gain = fmean(losses["A"]) - fmean(losses[winner])
    return {**entry, "gain_over_A": gain, "verdict": "confirmed" if gain >= MARGIN else "not confirmed"}


def screen(results: Path) -> dict:
    folders = sorted(p for p in results.glob("screen-*") if p.is_dir())
    runs = {p.name.removeprefix("screen-"): [p / f"{PRESET}-fold{k}" for k in FOLDS] for p in folders}
    runs = {name: folds for name, folds in runs.items() if any(run.is_dir() for run in folds)}
    losses = {name: [finished_loss(run) for run in folds] for name, folds in runs.items()}
    if "A" not in losses or None in losses["A"]:
        raise SystemExit(f"the baseline {results / 'screen-A'} has no finished folds {FOLDS}")
    baseline_config = RunFolder(runs["A"][0]).config
    base = losses["A"]
    candidates = {}
    for name, values in losses.items():
        finished = [(i, v, b) for i, (v, b) in enumerate(zip(values, base)) if v is not None]
        higher = [FOLDS[i] for i, v, b in finished if v >= b]
        if len(finished) < len(FOLDS) and not higher:
            continue  # undecided until its other folds finish
        entry = {"recipe": recipe(RunFolder(runs[name][finished[0][0]]).config, baseline_config),
                 "inner_validation_loss": values}
        if name == "A":
            candidates[name] = {**entry, "gain_over_A": 0.0, "verdict": "the baseline"}
        elif len(finished) < len(FOLDS):  # the rule needs it lower on every fold: one higher fold decides
            candidates[name] = {**entry, "gain_over_A": None,
                                "verdict": f"does not beat A (higher on fold {higher[0]}; its other folds cannot "
                                           "change that)"}
        else:
            gain = fmean(base) - fmean(values)
            beats = gain >= MARGIN and not higher
            candidates[name] = {**entry, "gain_over_A": gain, "verdict": "beats A" if beats else "does not beat A"}
    beaters = sorted((n for n, c in candidates.items() if c["verdict"] == "beats A"),
                     key=lambda n: candidates[n]["gain_over_A"], reverse=True)
    confirmations = {}
    for name in beaters:  # in turn, best first, until one is confirmed or still training
        confirmations[name] = confirmation(results, name)
        if confirmations[name]["verdict"] != "not confirmed":
            break
    # The one confirmed or still training; when every one failed, the best on folds 0 and 1.
    leading = next((n for n, c in confirmations.items() if c["verdict"] != "not confirmed"), beaters[0] if beaters else "A")
    not_finished = {name: PLANNED.get(name, "") for name in sorted(set(losses) - set(candidates))}
    not_run = {name: what for name, what in PLANNED.items() if name not in losses}
    return {"rule": RULE, "folds": list(FOLDS), "candidates": candidates, "leading": leading,
            "winner": None if not_finished or not_run else leading,  # no winner while a candidate waits
            "not_finished": not_finished, "not_run": not_run,
            "confirmation": confirmations.get(leading), "confirmations": confirmations}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the folder holding screen-A, screen-B, …")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = screen(args.results)
    for name, c in result["candidates"].items():
        losses = ", ".join("–" if v is None else f"{v:.4f}" for v in c["inner_validation_loss"])
        print(f"{name}: {c['recipe']}: {losses} -> {c['verdict']}")
    waiting = [*result["not_finished"], *result["not_run"]]
    print(f"leading: {result['leading']} (not screened yet: {', '.join(waiting)})" if waiting
          else f"winner: {result['winner']}")
    for name, tried in result["confirmations"].items():
        print(f"{name} on five folds: {tried['verdict']}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
