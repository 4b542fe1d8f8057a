"""Does the refusal ("not a breast ultrasound") hold real ultrasound that looks like another scanner's?
Measured on BUSI alone, out of fold.

Each cross-validation fold model gets the refusal reference the shipped model has (its training scans plus two
copies under its training augmentation) and scores its held-out scans twice: as they are, and as the
``ultrasound-strong`` augmentation draws them (depth-dependent gain, tone curves, heavier speckle, blur or
sharpening, JPEG, resolution loss: what changes between scanners), which no reference has seen. A scan counts
as refused above the shipped model's ``refuse_above``.

The candidate reference adds two ``ultrasound-strong`` copies of each training scan; its threshold follows the
shipped rule (1.5 × the largest out-of-fold score of the plain held-out scans), and its held-out strong copies
are drawn with other seeds than its reference's. The rule, fixed before running: the candidate replaces the
shipped reference only if it refuses fewer strongly drawn held-out BUSI scans and refuses no plain one; the
non-ultrasound benchmark (``not_ultrasound.py``) and BUS-BRA are run afterwards to report, and only a fall in
the non-ultrasound pictures refused would veto it.

    python benchmarks/refusal_robustness.py results/cv-lite0 --json benchmarks/results/refusal-robustness.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from imagemasknet.core.files import write_json
from imagemasknet.core.run_folder import RunFolder
from imagemasknet.inference.familiarity import REFUSE_FACTOR, FamiliarityReference
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models.bundle import ModelStore
from imagemasknet.ops.release import augmented_copies, run_arrays, textures

STRONG = "ultrasound-strong"


def fold_scores(run: Path, fold: int) -> dict[str, np.ndarray]:
    """Refusal scores of the fold's held-out scans (plain and strongly drawn) against the shipped design and
    the candidate, both fitted on the fold's own training scans."""
    predictor = Predictor.from_run(run, device="cpu", check_training_data=False)
    folder = RunFolder(run)
    arrays, split = run_arrays(folder), folder.split
    train, test = arrays.take(split["train"]), arrays.take(split["test"])
    plain = textures(predictor, train)
    as_trained = textures(predictor, augmented_copies(train, folder.config.get("augment", "ultrasound"), seed=fold))
    strong_train = textures(predictor, augmented_copies(train, STRONG, seed=1000 + fold))
    held_out = textures(predictor, test)
    held_out_strong = textures(predictor, augmented_copies(test, STRONG, seed=2000 + fold))
    shipped = FamiliarityReference.fit(np.concatenate([plain, as_trained]))
    candidate = FamiliarityReference.fit(np.concatenate([plain, as_trained, strong_train]))
    return {"shipped_plain": shipped.score(held_out), "shipped_strong": shipped.score(held_out_strong),
            "candidate_plain": candidate.score(held_out), "candidate_strong": candidate.score(held_out_strong)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the cross-validation's results folder (PRESET-foldK runs)")
    parser.add_argument("--preset", default="lesion-effnet-lite0")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shipped_threshold = float(ModelStore().shipped(args.preset).card.familiarity["refuse_above"])
    scores: dict[str, list[np.ndarray]] = {}
    for k in args.folds:
        started = time.monotonic()
        for name, values in fold_scores(args.results / f"{args.preset}-fold{k}", k).items():
            scores.setdefault(name, []).append(values)
        print(f"fold {k}: {time.monotonic() - started:.0f} s", flush=True)
    joined = {name: np.concatenate(values) for name, values in scores.items()}
    candidate_threshold = REFUSE_FACTOR * float(joined["candidate_plain"].max())
    result = {
        "shipped": {"refuse_above": shipped_threshold,
                    "plain_refused": float((joined["shipped_plain"] > shipped_threshold).mean()),
                    "strong_refused": float((joined["shipped_strong"] > shipped_threshold).mean()),
                    "strong_score_max": float(joined["shipped_strong"].max())},
        "candidate": {"refuse_above": candidate_threshold,
                      "plain_refused": float((joined["candidate_plain"] > candidate_threshold).mean()),
                      "strong_refused": float((joined["candidate_strong"] > candidate_threshold).mean()),
                      "strong_score_max": float(joined["candidate_strong"].max())},
        "n_plain": int(len(joined["shipped_plain"])), "n_strong": int(len(joined["shipped_strong"])),
        "note": "BUSI held-out scans of each fold against that fold model's reference; ultrasound-strong copies "
                "(2 per scan) stand in for other scanners; nothing external was used",
    }
    for design in ("shipped", "candidate"):
        r = result[design]
        print(f"{design:9s}: refuse above {r['refuse_above']:.2f}; plain held-out refused {r['plain_refused']:.1%}, "
              f"strongly drawn held-out refused {r['strong_refused']:.1%} (max score {r['strong_score_max']:.2f})")
    adopt = (result["candidate"]["strong_refused"] < result["shipped"]["strong_refused"]
             and result["candidate"]["plain_refused"] == 0)
    result["rule_says"] = "adopt the candidate" if adopt else "keep the shipped reference"
    print(result["rule_says"])
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
