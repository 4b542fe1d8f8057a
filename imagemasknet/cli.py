"""Command line: ``imagemasknet {train,evaluate,audit,predict,models,data} ...``."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .config import PRESETS, TrainConfig, preset
from .models import DEFAULT_MODEL


def _optional_int(text: str) -> int | None:
    return None if text.lower() in {"none", "all"} else int(text)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults stay None so a preset's values win unless given."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in ("fold", "limit"):
            parser.add_argument(flag, type=str, default=None, help=help_text + "; 'none' for all data")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"), help=help_text)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {}
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            overrides[f.name] = _optional_int(value) if f.name in ("fold", "limit") else value
    if args.preset:
        return preset(args.preset, **overrides)
    return TrainConfig.from_dict(overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    config = _config_from_args(args)
    try:
        run_dir = train(config, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("training cancelled; the run folder is consistent", file=sys.stderr)
        return 130
    print(run_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import load_arrays, load_dataset
    from .evaluate import evaluate_model, format_report
    from .models import get_spec
    from .runs import load_model, read_json, run_temperatures, write_json
    from .splits import resolve_split
    from .train import pick_device

    device = pick_device(args.device)
    if args.run:
        run_dir = Path(args.run)
        config = read_json(run_dir / "config.json")
        if not config:
            raise SystemExit(f"{run_dir} is not a run folder (no config.json)")
        arch, image_size = config["arch"], config["image_size"]
        weights = run_dir / f"{args.checkpoint}.safetensors"
        temperatures = run_temperatures(run_dir)
    else:
        if not (args.weights and args.arch):
            raise SystemExit("give --run DIR, or --weights FILE with --arch NAME")
        arch, image_size, weights = args.arch, args.image_size, Path(args.weights)
        card = read_json(weights.with_suffix(".json"), {}) or {}
        temperatures = {m: float(t) for m, t in card.get("temperature", {}).items()}
    if args.uncalibrated:
        temperatures = {}
    spec = get_spec(arch)
    modes = spec.modes if args.mode == "both" else (args.mode,)
    unsupported = [m for m in modes if m not in spec.modes]
    if unsupported:
        raise SystemExit(f"{arch} has no '{unsupported[0]}' mode; it supports: {', '.join(spec.modes)}")

    data = load_dataset(args.data or (config.get("data") if args.run else None))
    for problem in data.report.problems:
        print(f"warning: {problem.message}", file=sys.stderr)
    arrays = load_arrays(data, image_size, progress=True)
    if args.data:
        ids, source = data.ids, f"data {args.data}"
    elif args.split_file or args.fold is not None:
        ids, source = resolve_split(data, args.fold, args.split_file)[1], f"fold {args.fold}" if args.split_file is None else args.split_file
    elif args.run:
        split = read_json(run_dir / "split.json", {}) or {}
        ids = split.get(args.on, [])
        source = f"the run's {args.on} split"
        if args.on == "train":
            source += " (the study's protocol: the images the model trained on)"
    else:
        raise SystemExit("say what to evaluate on: --fold K, --split-file F, --data FOLDER_OR_CSV, or --run with --on")
    if not ids:
        raise SystemExit(f"nothing to evaluate: {source} is empty")
    arrays = arrays.take(ids)
    clusters = None
    patients = [c.patient for c in data.cases if c.id in set(ids)]
    if patients and all(patients):
        by_id = {c.id: c.patient for c in data.cases}
        clusters = np.array([by_id[i] for i in ids])
    model = load_model(arch, weights, image_size, device)
    reports = evaluate_model(model, spec, arrays, list(modes), temperatures, device, clusters=clusters,
                             resamples=args.resamples)
    result = {"model": arch, "weights": str(weights), "evaluated_on": source, "n": len(ids), "modes": reports}
    print(format_report(reports, title=f"{arch} on {source} ({len(ids)} scans)"))
    for mode, r in reports.items():
        if r.get("lesions"):
            lesions = r["lesions"]
            print(f"{mode}: benign-vs-malignant AUC {lesions['benign_vs_malignant_auc']:.3f}; "
                  f"lesion scans called normal {lesions['lesions_called_normal']:.1%}")
    if args.json:
        write_json(Path(args.json), result)
    if args.run and not args.json:
        write_json(run_dir / "metrics.json", result)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit, format_table
    from .data import load_busi
    from .runs import write_json

    data = load_busi(args.data)
    result = audit(data, progress=True)
    if args.json:
        write_json(Path(args.json), result.to_json())
    print(json.dumps(result.to_json(), indent=2) if args.format == "json" else format_table(result))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from collections import Counter

    from .audit import audit, duplicate_groups
    from .data import load_busi
    from .splits import DEFAULT_SPLIT, make_folds, manifest_groups, merge_groups, write_split_file

    data = load_busi(args.data)
    found = duplicate_groups(audit(data, progress=True))
    labels = {c.id: c.label for c in data.cases}
    groups = merge_groups(data.ids, manifest_groups(data), found)
    folds = make_folds(labels, groups, k=5, seed=args.seed)
    out = Path(args.out or DEFAULT_SPLIT)
    write_split_file(out, folds, groups, labels,
                     "stratified group 5-fold; groups = audit near-duplicates ∪ manifest near_dup_group")
    for k, fold in enumerate(folds):
        shares = Counter(labels[i] for i in fold)
        print(f"fold {k}: {len(fold)} scans, " + ", ".join(f"{c} {shares[c] / len(fold):.1%}" for c in sorted(shares)))
    print(f"wrote {out}")
    return 0


def _scan_files(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded (sorted, recursively) to the image and DICOM files inside."""
    from .data import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES | {".dcm", ".dicom"}))
        else:
            files.append(path)
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    from tqdm import tqdm

    from .explain import heatmap_overlay
    from .predict import Predictor, ScanError, read_mask, read_scan
    from .runs import WeightsError

    try:
        predictor = Predictor.from_run(Path(args.run)) if args.run else Predictor.shipped(args.model)
    except (WeightsError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = _scan_files(args.inputs)
    masks = args.mask or []
    if masks and len(masks) != len(files):
        print(f"error: {len(masks)} masks for {len(files)} scans; give one --mask per scan, in order", file=sys.stderr)
        return 2
    if args.grad_cam:
        Path(args.grad_cam).mkdir(parents=True, exist_ok=True)
    records = []
    for n, file in enumerate(tqdm(files, desc="predicting", unit="scan", disable=args.no_progress or not files)):
        try:
            scan = read_scan(file, name=file.name)
            mask = read_mask(masks[n], scan.pixels.shape, name=Path(masks[n]).name) if masks else None
            prediction = predictor.predict(scan, mask)
            records.append(prediction.record(str(file)))
            if args.grad_cam:
                from PIL import Image

                heat = predictor.grad_cam(scan, prediction.label, mask)
                Image.fromarray(heatmap_overlay(scan.rgb, heat)).save(Path(args.grad_cam) / f"{file.stem}.gradcam.png")
        except ScanError as error:
            records.append({"file": str(file), "error": {"type": type(error).__name__, "message": str(error)}})
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "label", "p_normal", "p_benign", "p_malignant", "mode", "model", "warnings",
                         "error_type", "error_message"])
        for r in records:
            p = r.get("probabilities", {})
            writer.writerow([r["file"], r.get("label", ""), *(f"{p[c]:.6f}" if p else "" for c in ("normal", "benign", "malignant")),
                             r.get("mode", ""), r.get("model", ""), " | ".join(r.get("warnings", [])),
                             r.get("error", {}).get("type", ""), r.get("error", {}).get("message", "")])
    elif args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            if "error" in r:
                print(f"{r['file']}: ERROR {r['error']['message']}")
            else:
                p = r["probabilities"]
                warn = f"  [{'; '.join(r['warnings'])}]" if r["warnings"] else ""
                print(f"{r['file']}: {r['label']} ({p[r['label']]:.1%}; normal {p['normal']:.2f}, benign {p['benign']:.2f}, "
                      f"malignant {p['malignant']:.2f}; {r['mode']} mode){warn}")
    return 0 if any("error" not in r for r in records) else 1


def cmd_models(args: argparse.Namespace) -> int:
    from .models import count_parameters, build_model, get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        print(f"{name:16} modes: {'/'.join(spec.modes):11} lesion map: {'yes' if spec.predicts_lesion else 'no ':3}  "
              f"parameters: {count_parameters(build_model(name)):>11,}  {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagemasknet", description="Breast-ultrasound classification with lesion masks.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model; writes a run folder",
                                description="Train a registered model. A preset sets the study's settings; flags override it.")
    train.add_argument("--preset", choices=list(PRESETS), help="start from a preset (study-m1, study-m2, lesion-resunet)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs still go to log.txt)")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="metrics with bootstrap CIs for a run or weights",
                                   description="Evaluate a run folder or a weights file; prints a table, writes JSON.")
    source = evaluate.add_argument_group("model")
    source.add_argument("--run", help="run folder")
    source.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint of the run")
    source.add_argument("--weights", help="a .safetensors file (with --arch)")
    source.add_argument("--arch", help="registered model name for --weights")
    source.add_argument("--image-size", type=int, default=256)
    target = evaluate.add_argument_group("data")
    target.add_argument("--fold", type=int, help="test fold K of the committed split")
    target.add_argument("--split-file", help="JSON split file; its 'test' list is evaluated")
    target.add_argument("--on", default="test", choices=("test", "train", "validation"),
                        help="with --run: which of the run's own splits (train = the study's protocol)")
    target.add_argument("--data", help="another labelled folder or CSV manifest (image,label[,mask][,patient])")
    evaluate.add_argument("--mode", default="both", choices=("image", "mask", "both"))
    evaluate.add_argument("--uncalibrated", action="store_true", help="ignore the fitted temperature")
    evaluate.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    evaluate.add_argument("--json", help="write the report here (default with --run: RUN/metrics.json)")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_evaluate)

    audit = commands.add_parser("audit", help="dataset audit: counts, sizes, near-duplicates, label conflicts")
    audit.add_argument("--data", help="BUSI folder (default: found automatically)")
    audit.add_argument("--format", choices=("table", "json"), default="table")
    audit.add_argument("--json", help="also write the JSON report to this file")
    audit.set_defaults(func=cmd_audit)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    split = data_commands.add_parser("split", help="rebuild the duplicate-aware 5-fold split file")
    split.add_argument("--data")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", help="default: splits/busi-5fold.json")
    split.set_defaults(func=cmd_split)

    predict = commands.add_parser("predict", help="classify scans (files or folders)",
                                  description="Classify scans with the shipped model (or a run's). Unreadable files are "
                                              "reported and the batch goes on; exit 0 when at least one scan was predicted.")
    predict.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER")
    predict.add_argument("--mask", action="append", help="lesion mask for a scan (repeat: one per scan, in order)")
    predict.add_argument("--model", default=DEFAULT_MODEL, help="shipped model name")
    predict.add_argument("--run", help="use a run folder's best checkpoint instead of a shipped model")
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON list, a record per file")
    output.add_argument("--csv", action="store_true", help="print CSV rows")
    predict.add_argument("--grad-cam", metavar="OUTDIR", help="also save a Grad-CAM overlay per scan here")
    predict.add_argument("--no-progress", action="store_true")
    predict.set_defaults(func=cmd_predict)

    models = commands.add_parser("models", help="list registered models")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
