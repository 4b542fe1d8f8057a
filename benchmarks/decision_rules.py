"""The decision rules a shipped model's bundle carries, and what they measured, as one JSON file for the results
page: the malignancy flag (threshold per mode, sensitivity and specificity out of fold and cross-validated, and on
any external set the release reported), the lesion exclusion behind "a lesion cannot be excluded", the low-
confidence rule and the familiarity thresholds. `imagemasknet release` sets all of them on the cross-validation's
out-of-fold predictions (evaluation/decision.py); tests/test_verdict.py recomputes them from the bundle's oof.json.

    python benchmarks/decision_rules.py --model lesion-effnet-lite0 --json benchmarks/results/decision-rules-two-hospitals.json
"""
from __future__ import annotations

import argparse
import sys

from imagemasknet.core.files import write_json
from imagemasknet.models import DEFAULT_MODEL
from imagemasknet.models.bundle import ModelStore

SECTIONS = ("malignancy_flag", "lesion_exclusion", "low_confidence", "familiarity")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    card = ModelStore().shipped(args.model).card
    raw = card.to_json()
    result = {"model": card.name, "version": card.version, "trained_on": card.trained_on,
              **{key: raw.get(key) for key in SECTIONS}}
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
