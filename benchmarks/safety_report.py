"""What the Classify page would say about every scan of a labelled set, through the app's own Predictor: how
often a lesion is reassured as normal, how often the flag catches a cancer, the trust levels, and how much of
each Grad-CAM lies on burnt-in marks (text, calipers, rulers) before they are left out. Report only: nothing
here chooses a threshold.

    python benchmarks/safety_report.py --data ../shared/datasets/busbra/labels.csv \\
        --json benchmarks/results/safety-busbra-lite0.json
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imagemasknet.core.files import write_json
from imagemasknet.data.decode import read_case_mask
from imagemasknet.data.owndata import load_dataset
from imagemasknet.data.scans import ScanError, read_scan
from imagemasknet.inference.explain import mark_share
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import DEFAULT_MODEL


def scan_rows(predictor: Predictor, data, grad_cam: bool) -> list[dict]:
    rows = []
    for case in tqdm(data.cases, desc="scans", unit="scan"):
        try:
            scan = read_scan(case.image_path)
            image = predictor.predict(scan)
        except ScanError as error:
            rows.append({"id": case.id, "label": case.label, "refused": type(error).__name__})
            continue
        row = {"id": case.id, "label": case.label, "predicted": image.predicted_class, "trust": image.trust,
               "flagged": image.suspicious_for_malignancy, "lesion_not_excluded": image.lesion_not_excluded,
               "marks": float(image.annotations.mean())}
        if case.mask_paths:
            given = predictor.predict(scan, read_case_mask(case.mask_paths, scan.pixels.shape))
            row |= {"flagged_with_mask": given.suspicious_for_malignancy, "model_sees_no_lesion": given.model_sees_no_lesion}
        if grad_cam and image.annotations.any():
            heat = predictor.grad_cam(scan, image.predicted_class)
            row |= {"cam_on_marks": mark_share(heat, image.annotations),
                    "cam_peak_on_mark": bool(image.annotations.flat[int(heat.argmax())])}
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    judged = [r for r in rows if "predicted" in r]
    lesions = [r for r in judged if r["label"] != "normal"]
    malignant = [r for r in judged if r["label"] == "malignant"]
    normals = [r for r in judged if r["label"] == "normal"]

    def share(items, test) -> float | None:
        return float(np.mean([test(r) for r in items])) if items else None

    reassured = lambda r: r["predicted"] == "normal" and not r["lesion_not_excluded"]  # noqa: E731
    out = {
        "n": len(rows), "refused": len(rows) - len(judged),
        "lesions": {"n": len(lesions), "called_normal": share(lesions, lambda r: r["predicted"] == "normal"),
                    "reassured_as_normal": share(lesions, reassured)},
        "normals": {"n": len(normals), "reassured_as_normal": share(normals, reassured)},
        "flag_sensitivity": {"image": share(malignant, lambda r: bool(r["flagged"])),
                             "mask": share([r for r in malignant if "flagged_with_mask" in r],
                                           lambda r: bool(r["flagged_with_mask"]))},
        "trust": dict(Counter(r["trust"] for r in judged)),
        "model_sees_no_lesion_where_marked": share([r for r in lesions if "model_sees_no_lesion" in r],
                                                   lambda r: r["model_sees_no_lesion"]),
        "marks": {"scans_with_marks": share(judged, lambda r: r["marks"] > 0),
                  "median_share_of_the_scan": float(np.median([r["marks"] for r in judged])) if judged else None},
    }
    cams = [r for r in judged if "cam_on_marks" in r]
    if cams:
        out["grad_cam_on_marks"] = {
            "n": len(cams), "mean_share_before": float(np.mean([r["cam_on_marks"] for r in cams])),
            "peak_on_a_mark_before": share(cams, lambda r: r["cam_peak_on_mark"]),
            "after": 0.0, "note": "the page and the report leave the marks out of the map, so after is 0 by construction"}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled folder or CSV manifest (image,label[,mask])")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--no-grad-cam", action="store_true")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    predictor = Predictor.shipped(args.model, device="cpu")
    rows = scan_rows(predictor, load_dataset(args.data), not args.no_grad_cam)
    result = {"model": args.model, "version": predictor.version, "data": Path(args.data).parent.name,
              "summary": summary(rows)}
    print(result)
    if args.json:
        write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
