"""Normal tissue from other scanners: the lesion-free squares of a labelled set's lesion scans (their masks say
where the lesion is; data/lesion_free.py), and how often a model calls them normal and reassures them as
normal. BUS-BRA has no normal scans, so this stands in for a second scanner's normals. Report only.

    python benchmarks/normal_proxy.py --data ../shared/datasets/busbra/labels.csv \
        --json benchmarks/results/normal-proxy-busbra.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from imagemasknet.core.files import write_json
from imagemasknet.data.lesion_free import lesion_free_crops
from imagemasknet.data.owndata import load_dataset
from imagemasknet.evaluation.decision import LOW_CONFIDENCE_BELOW
from imagemasknet.evaluation.evaluate import predict_arrays
from imagemasknet.evaluation.metrics import softmax
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import DEFAULT_MODEL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled CSV or folder with lesion masks")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    predictor = Predictor.shipped(args.model, device="cpu")
    crops = lesion_free_crops(load_dataset(args.data), predictor.image_size, predictor.card.paint_out_annotations)
    output = predict_arrays(predictor.model, predictor.spec, crops, "image", torch.device("cpu"))
    p = softmax(output.logits, predictor.temperatures.get("image", 1.0))
    called_normal = p.argmax(1) == 0
    familiar = (predictor.familiarity.unfamiliar.score(output.texture) <= predictor.familiarity.unfamiliar.threshold
                if predictor.familiarity is not None else np.zeros(len(p), bool))
    threshold = predictor.card.exclusion_threshold
    reassured = called_normal & familiar & (p.max(1) >= LOW_CONFIDENCE_BELOW) & (
        p[:, 0] > threshold if threshold is not None else False)
    result = {"model": args.model, "version": predictor.version, "data": Path(args.data).parent.name,
              "crops": len(crops.ids), "called_normal": float(called_normal.mean()),
              "reassured_as_normal": float(reassured.mean()), "familiar": float(familiar.mean()),
              "note": "lesion-free squares of lesion scans (at least 40 % of the shorter side, clear of the widened "
                      "outline), resized to the model's input; report only"}
    print(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
