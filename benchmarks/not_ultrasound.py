"""How often the shipped model refuses what is not a breast ultrasound, and never what is.

The non-ultrasound set is assembled from what ships with the project's packages and from pictures drawn
here, so anyone can rebuild it without a download (``assemble``):

* photographs: scikit-image's sample photographs (astronaut, cat, coffee, rocket, coins, horse …);
* other modalities: scikit-image's fundus photograph (retina) and its crop, two micrographs
  (immunohistochemistry, cells), its CT phantom; pydicom's CT, MR and liver-CT test files;
* screenshots: the app's own screenshots (docs/screenshots, which show ultrasound scans inside a web page);
* documents and text: scikit-image's scanned page and text, and typed reports drawn here;
* charts: bar, line and scatter charts drawn here;
* textures and noise: brick, grass, gravel, uniform and Gaussian noise, flat grey, gradients, a checkerboard,
  random colour blocks.

Then every image goes through ``imagemasknet predict`` (the CLI's records: an error record with
``NotUltrasoundError`` is a refusal), and so do all 780 BUSI scans and the BUS-BRA scans, none of which may
be refused.

    python benchmarks/not_ultrasound.py --out results/not-ultrasound --busbra ../shared/datasets/busbra/labels.csv \\
        --json benchmarks/results/not-ultrasound.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent


def _save(folder: Path, category: str, name: str, picture: np.ndarray | Image.Image, rows: list[dict]) -> None:
    if not isinstance(picture, Image.Image):
        picture = np.asarray(picture)
        if picture.dtype != np.uint8:
            span = max(float(np.ptp(picture)), 1e-9)
            picture = (255 * (picture - picture.min()) / span).astype(np.uint8)
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    path = folder / category / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    rows.append({"file": str(path), "category": category, "source": name})


def _document(rng: np.random.Generator, lines: int, size=(850, 1100)) -> Image.Image:
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    words = ("patient", "breast", "ultrasound", "report", "findings", "lesion", "benign", "follow-up", "BI-RADS",
             "impression", "left", "right", "mm", "no", "evidence", "of", "malignancy", "the", "and", "recommend")
    y = 60
    for _ in range(lines):
        draw.text((60, y), " ".join(rng.choice(words, size=int(rng.integers(6, 14)))), fill=int(rng.integers(0, 60)))
        y += int(rng.integers(16, 30))
    return page


def _chart(rng: np.random.Generator, kind: str, size=(800, 500)) -> Image.Image:
    chart = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(chart)
    draw.line([(60, 440), (760, 440)], fill="black", width=2)
    draw.line([(60, 40), (60, 440)], fill="black", width=2)
    values = rng.uniform(50, 380, 10)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    if kind == "bar":
        for n, v in enumerate(values):
            draw.rectangle([80 + n * 68, 440 - v, 130 + n * 68, 440], fill=colours[n % 4])
    elif kind == "line":
        for series in range(3):
            points = [(60 + n * 75, 440 - v) for n, v in enumerate(rng.uniform(50, 380, 10))]
            draw.line(points, fill=colours[series], width=3)
    else:
        for x, y in rng.uniform([70, 50], [750, 430], (200, 2)):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours[int(x) % 4])
    draw.text((300, 460), f"{kind} chart: accuracy per fold", fill="black")
    return chart


def assemble(folder: Path) -> list[dict]:
    """Write the non-ultrasound pictures under ``folder`` (one sub-folder per category); returns the rows."""
    from skimage import data as samples

    rng = np.random.default_rng(0)
    rows: list[dict] = []
    for name in ("astronaut", "camera", "cat", "coffee", "rocket", "coins", "horse", "moon", "hubble_deep_field",
                 "clock", "logo", "colorwheel"):
        picture = getattr(samples, name)()
        if picture.dtype == bool:  # the horse silhouette
            picture = np.where(picture, 0, 255).astype(np.uint8)
        _save(folder, "photograph", name, picture, rows)
    for name in ("retina", "microaneurysms", "immunohistochemistry", "cell", "shepp_logan_phantom"):
        _save(folder, "other-modality", name, getattr(samples, name)(), rows)
    import pydicom.data

    for name in ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm"):
        path = folder / "other-modality" / name
        path.write_bytes(Path(pydicom.data.get_testdata_file(name)).read_bytes())
        rows.append({"file": str(path), "category": "other-modality", "source": name})
    for path in sorted((REPO / "docs" / "screenshots").glob("*.png")):
        _save(folder, "screenshot", path.stem, Image.open(path).convert("RGB"), rows)
    for name in ("page", "text"):
        _save(folder, "document", name, getattr(samples, name)(), rows)
    for n in range(4):
        _save(folder, "document", f"typed-report-{n}", _document(rng, 20 + 10 * n), rows)
    for kind in ("bar", "line", "scatter"):
        _save(folder, "chart", kind, _chart(rng, kind), rows)
    for name in ("brick", "grass", "gravel", "checkerboard"):
        _save(folder, "texture-or-noise", name, getattr(samples, name)(), rows)
    _save(folder, "texture-or-noise", "uniform-noise", rng.integers(0, 256, (400, 500), dtype=np.uint8), rows)
    _save(folder, "texture-or-noise", "gaussian-noise",
          np.clip(rng.normal(110, 40, (400, 500)), 0, 255).astype(np.uint8), rows)
    _save(folder, "texture-or-noise", "colour-noise", rng.integers(0, 256, (400, 500, 3), dtype=np.uint8), rows)
    _save(folder, "texture-or-noise", "flat-grey", np.full((400, 500), 120, np.uint8), rows)
    _save(folder, "texture-or-noise", "gradient", np.tile(np.linspace(0, 255, 500), (400, 1)).astype(np.uint8), rows)
    blocks = np.kron(rng.integers(0, 256, (8, 10, 3)), np.ones((50, 50, 1))).astype(np.uint8)
    _save(folder, "texture-or-noise", "colour-blocks", blocks, rows)
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "category", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def predict_records(files: list[str], out: Path, label: str) -> list[dict]:
    """``imagemasknet predict`` over ``files`` (streamed to ``out``/LABEL.jsonl, resumable); its records."""
    listing = out / f"{label}.txt"
    listing.write_text("\n".join(files) + "\n")
    records_file = out / f"{label}.jsonl"
    command = [sys.executable, "-m", "imagemasknet", "predict", "--files-from", str(listing), "--out", str(records_file),
               "--no-progress"] + (["--resume"] if records_file.exists() else [])
    subprocess.run(command, check=True, cwd=REPO)
    return [json.loads(line) for line in records_file.read_text().splitlines() if line.strip()]


def refused(record: dict) -> bool:
    return record.get("error", {}).get("type") == "NotUltrasoundError"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the assembled pictures and the records")
    parser.add_argument("--busbra", help="BUS-BRA labels.csv: every scan in it must be accepted")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = assemble(args.out / "pictures")
    by_file = {r["file"]: r for r in rows}
    records = predict_records([r["file"] for r in rows], args.out, "not-ultrasound")
    categories: dict[str, Counter] = {}
    missed = []
    for record in records:
        category = by_file[record["file"]]["category"]
        categories.setdefault(category, Counter())["refused" if refused(record) else "error" if "error" in record else "classified"] += 1
        if not refused(record):
            missed.append({"file": os.path.relpath(record["file"], args.out), "outcome": record.get("error", {}).get("type")
                           or record.get("predicted_class")})
    from imagemasknet.data.busi import find_data_root, load_busi
    from imagemasknet.data.owndata import load_dataset

    busi = load_busi(find_data_root())
    scans = {"busi": [str(c.image_path) for c in busi.cases]}
    if args.busbra:
        scans["busbra"] = [str(c.image_path) for c in load_dataset(args.busbra).cases]
    accepted = {}
    for name, files in scans.items():
        outcome = predict_records(files, args.out, name)
        wrongly = [os.path.basename(r["file"]) for r in outcome if "error" in r]
        accepted[name] = {"scans": len(outcome), "refused_or_unread": len(wrongly), "examples": wrongly[:10]}
    result = {
        "not_ultrasound": {c: dict(n) for c, n in sorted(categories.items())},
        "not_ultrasound_total": {"pictures": len(records), "refused": sum(refused(r) for r in records)},
        "not_refused": missed,
        "ultrasound_scans": accepted,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        from imagemasknet.core.files import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
