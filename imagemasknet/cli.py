"""Command line: ``imagemasknet {train,evaluate,release,audit,predict,models,data,admin} ...``.

One module (about 600 lines) on purpose: the argument tree and one short handler per subcommand, each of
which imports the package's work only when it runs (that is why the handlers import inside their bodies), so
``imagemasknet --help`` never loads PyTorch (tests/test_cli.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from imagemasknet.data.sources import SOURCES
from imagemasknet.training.config import PRESETS, TrainConfig, preset

SOURCE_NAMES = tuple(SOURCES)


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
    from imagemasknet.training import distributed
    from imagemasknet.training.checkpoint import resume_config
    from imagemasknet.training.trainer import Terminated, train

    if args.resume:
        given = [f.name for f in fields(TrainConfig) if getattr(args, f.name, None) is not None]
        if given or args.preset:
            raise ValueError("--resume continues a run with its own config.json; leave out "
                             + ", ".join(["--preset"] * bool(args.preset) + ["--" + g.replace("_", "-") for g in given]))
        config = resume_config(args.resume)
    else:
        config = _config_from_args(args)
    launched, main = distributed.launched(), distributed.env_world().is_main
    if launched:  # under torchrun: a failing rank's traceback goes into torchrun's failure summary
        from torch.distributed.elastic.multiprocessing.errors import record

        train = record(train)
    try:
        run_dir = train(config, progress=not args.no_progress, resume=args.resume)
    except KeyboardInterrupt as stop:
        if main:
            what = "stopped by the launcher" if launched and isinstance(stop, Terminated) else "cancelled"
            print(f"training {what}; the run folder is consistent (continue it: imagemasknet train --resume RUN_DIR)",
                  file=sys.stderr)
        return 130
    if main:
        print(run_dir)
    return 0


def cmd_evaluate_cv(args: argparse.Namespace) -> int:
    """``evaluate --cv RUN ...``: each fold run on its own test split, merged into one CV report."""
    from imagemasknet.core.device import pick_device
    from imagemasknet.core.files import write_json
    from imagemasknet.core.run_folder import RunFolder
    from imagemasknet.data.dataset import load_arrays
    from imagemasknet.data.sources import training_set_of
    from imagemasknet.evaluation.evaluate import cross_validation_report, format_cv_report, predict_arrays
    from imagemasknet.models import get_spec
    from imagemasknet.models.weights import load_model

    device = pick_device(args.device)
    decoded: dict[tuple, object] = {}
    folds, archs = [], set()
    for run in args.cv:
        run_dir = Path(run)
        run_folder = RunFolder(run_dir)
        config = run_folder.config
        if not config:
            raise SystemExit(f"{run_dir} is not a run folder (no config.json)")
        ids = run_folder.split.get("test") or []
        if not ids:
            raise SystemExit(f"{run_dir} has no test split (trained on all data?), so it is no cross-validation fold")
        key = (config.get("sources", "busi"), config.get("data"), config.get("data_mode", "replace"), config["image_size"],
               config.get("paint_out_annotations", False))
        if key not in decoded:
            decoded[key] = load_arrays(training_set_of(config), config["image_size"], progress=True,
                                       paint_out_annotations=config.get("paint_out_annotations", False))
        spec = get_spec(config["arch"])
        archs.add(spec.name)
        model = load_model(spec.name, run_dir / f"{args.checkpoint}.safetensors", config["image_size"], device)
        modes = [m for m in spec.modes if args.mode in ("both", m)]
        arrays = decoded[key].take(ids)
        folds.append({"run": str(run_dir), "fold": config.get("fold"),
                      "predictions": {m: predict_arrays(model, spec, arrays, m, device) for m in modes},
                      "temperatures": {} if args.uncalibrated else run_folder.temperatures})
    if len(archs) > 1:
        raise SystemExit(f"--cv merges the folds of one model; these runs train {', '.join(sorted(archs))}")
    arch = archs.pop()
    result = {"model": arch, "checkpoint": args.checkpoint,
              "cross_validation": cross_validation_report(folds, resamples=args.resamples)}
    print(format_cv_report(result["cross_validation"], title=f"{arch}: {len(folds)}-fold cross-validation, "
                                                              f"{result['cross_validation']['n']} scans"))
    if args.json:
        write_json(Path(args.json), result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    if getattr(args, "cv", None):
        return cmd_evaluate_cv(args)

    from imagemasknet.core.device import pick_device
    from imagemasknet.core.files import write_json
    from imagemasknet.core.run_folder import RunFolder
    from imagemasknet.data.dataset import load_arrays
    from imagemasknet.data.owndata import load_dataset
    from imagemasknet.data.splits import resolve_split
    from imagemasknet.evaluation.evaluate import evaluate_model, format_report
    from imagemasknet.models import get_spec
    from imagemasknet.models.card import ModelCard
    from imagemasknet.models.weights import load_model

    device = pick_device(args.device)
    if args.run:
        run_dir = Path(args.run)
        run_folder = RunFolder(run_dir)
        config = run_folder.config
        if not config:
            raise SystemExit(f"{run_dir} is not a run folder (no config.json)")
        arch, image_size = config["arch"], config["image_size"]
        weights = run_dir / f"{args.checkpoint}.safetensors"
        temperatures = run_folder.temperatures
        paint_out = bool(config.get("paint_out_annotations", False))
    elif args.model:
        from imagemasknet.models.bundle import BundleError, ModelStore

        try:
            bundle = ModelStore().shipped(args.model)
        except (BundleError, KeyError) as error:
            raise SystemExit(f"error: {error}") from None
        arch, image_size, weights = bundle.card.arch, bundle.card.image_size, Path(bundle.weights)
        temperatures, paint_out = bundle.card.temperature, bundle.card.paint_out_annotations
    else:
        if not (args.weights and args.arch):
            raise SystemExit("give --run DIR, --model NAME, or --weights FILE with --arch NAME")
        arch, image_size, weights = args.arch, args.image_size, Path(args.weights)
        card_path = weights.with_suffix(".json")  # a card beside the weights calibrates them
        temperatures = ModelCard.read(card_path).temperature if card_path.exists() else {}
        paint_out = False
    if args.uncalibrated:
        temperatures = {}
    spec = get_spec(arch)
    modes = spec.modes if args.mode == "both" else (args.mode,)
    unsupported = [m for m in modes if m not in spec.modes]
    if unsupported:
        raise SystemExit(f"{arch} has no '{unsupported[0]}' mode; it supports: {', '.join(spec.modes)}")

    if args.run and not args.data:
        from imagemasknet.data.sources import training_set_of

        data = training_set_of(config)
    else:
        data = load_dataset(args.data)
    for problem in data.report.problems:
        print(f"warning: {problem.message}", file=sys.stderr)
    if args.data and "mask" in modes:
        from imagemasknet.data.owndata import lesions_without_masks

        unmasked = lesions_without_masks(data)
        if unmasked and args.mode == "both" and len(modes) > 1:
            modes = tuple(m for m in modes if m != "mask")
            print(f"warning: {len(unmasked)} lesion scans have no mask (e.g. {unmasked[0]}); mask mode left out",
                  file=sys.stderr)
        elif unmasked:
            print(f"warning: {len(unmasked)} lesion scans have no mask (e.g. {unmasked[0]}); their mask-mode "
                  "figures are not meaningful", file=sys.stderr)
    arrays = load_arrays(data, image_size, progress=True, paint_out_annotations=paint_out)
    if args.data:
        ids, source = data.ids, f"data {args.data}"
    elif args.split_file or args.fold is not None:
        ids, source = resolve_split(data, args.fold, args.split_file)[1], f"fold {args.fold}" if args.split_file is None else args.split_file
    elif args.run:
        ids = run_folder.split.get(args.on, [])
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
                             resamples=args.resamples, sensitivity=args.sensitivity)
    result = {"model": arch, "weights": str(weights), "evaluated_on": source, "n": len(ids), "modes": reports}
    print(format_report(reports, title=f"{arch} on {source} ({len(ids)} scans)"))
    for mode, r in reports.items():
        if r.get("lesions"):
            lesions = r["lesions"]
            print(f"{mode}: benign-vs-malignant AUC {lesions['benign_vs_malignant_auc']:.3f}; "
                  f"lesion scans called normal {lesions['lesions_called_normal']:.1%}")
        point = r.get("operating_point") or {}
        if point.get("threshold") is not None:
            specificity = "n/a" if point["specificity"] is None else f"{point['specificity']:.1%}"
            print(f"{mode}: {point['footing']} >= {point['threshold']:.4f} flags {point['sensitivity']:.1%} of "
                  f"{point['n_malignant']} malignant scans (target {point['target_sensitivity']:.0%}); "
                  f"specificity on {point['n_benign']} benign: {specificity}")
            if point.get("note"):
                print(f"{mode}: note: {point['note']}")
    if args.json:
        write_json(Path(args.json), result)
    if args.data:
        from imagemasknet.evaluation.site_threshold import write_owndata_report

        print(f"report: {write_owndata_report(result, Path(args.data).resolve(), arch, str(weights))}")
    elif args.run and not args.json:
        run_folder.write_metrics(result)
    if args.save_threshold is not None:
        from imagemasknet.evaluation.site_threshold import save_site_threshold, site_threshold_record

        record = site_threshold_record(result, Path(args.data).resolve() if args.data else source, arch, str(weights))
        print(f"site threshold ({record['mode']} mode, {record['modes'][record['mode']]['footing']} >= "
              f"{record['threshold']:.4f}) saved to "
              f"{save_site_threshold(record, args.save_threshold or None)}")
    return 0


def _sources_to_check(args: argparse.Namespace) -> dict[str, object]:
    """``--data DIR``: that folder alone; else each bundled source named by ``--source`` (default: all)."""
    if args.data:
        return {"data": args.data}
    return {name: SOURCES[name] for name in (args.source or SOURCES)}


def cmd_audit(args: argparse.Namespace) -> int:
    from imagemasknet.core.files import write_json
    from imagemasknet.data.owndata import load_dataset
    from imagemasknet.data.duplicates import audit, format_table

    results = {}
    for name, source in _sources_to_check(args).items():
        data = load_dataset(source) if name == "data" else source.load()
        results[name] = audit(data, progress=True)
        if args.format == "table":
            print(f"== {name}: {data.root}")
            print(format_table(results[name]))
    report = {name: result.to_json() for name, result in results.items()}
    if args.json:
        write_json(Path(args.json), report)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from collections import Counter

    from imagemasknet.data.busi import load_busi
    from imagemasknet.data.duplicates import audit, duplicate_groups
    from imagemasknet.data.splits import FOLDS, case_groups, make_folds, merge_groups, split_file_for, write_split_file

    data = load_busi(args.data) if args.data else SOURCES[args.source].load()
    found = duplicate_groups(audit(data, progress=True))
    labels = {c.id: c.label for c in data.cases}
    groups = merge_groups(data.ids, case_groups(data), found)
    folds = make_folds(labels, groups, k=FOLDS, seed=args.seed)
    out = Path(args.out or split_file_for(args.source))
    write_split_file(out, folds, groups, labels, "stratified group 5-fold; groups = audit near-duplicates ∪ the "
                     "data set's near-duplicate groups ∪ patients", source=args.source)
    for k, fold in enumerate(folds):
        shares = Counter(labels[i] for i in fold)
        print(f"fold {k}: {len(fold)} scans, " + ", ".join(f"{c} {shares[c] / len(fold):.1%}" for c in sorted(shares)))
    print(f"wrote {out}")
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from imagemasknet.core.files import write_json
    from imagemasknet.data.busi import find_data_root
    from imagemasknet.data.verify import verify

    reports = {}
    for name, source in _sources_to_check(args).items():
        reports[name] = verify(find_data_root(source) if name == "data" else source.locate())
        print(reports[name].format())
    if args.json:
        write_json(Path(args.json), {name: report.to_json() for name, report in reports.items()})
    return 0 if all(report.ok for report in reports.values()) else 1


def _describe(record: dict) -> str:
    """A record as one line of text (``predict`` without --json/--csv/--out)."""
    from imagemasknet.inference.stream import printable
    if "error" in record:
        return f"{printable(record['file'])}: ERROR {record['error']['message']}"
    p = record["probabilities"]
    warn = f"  [{'; '.join(record['warnings'])}]" if record["warnings"] else ""
    flag = {True: "SUSPICIOUS FOR MALIGNANCY", False: "not flagged", None: "no malignancy threshold"}[
        record.get("suspicious_for_malignancy")]
    threshold = f" at P(malignant) >= {record['malignancy_threshold']:.3f}" if record.get("malignancy_threshold") is not None else ""
    excluded = "; a lesion cannot be excluded" if record.get("lesion_not_excluded") else ""
    size = (f"; lesion {record['lesion_axes_mm'][0]:.1f} x {record['lesion_axes_mm'][1]:.1f} mm"
            if record.get("lesion_axes_mm") else "")
    return (f"{printable(record['file'])}: {flag}{threshold}{excluded}; trust: {record.get('trust', '?')}; predicted "
            f"{record['predicted_class']} ({p[record['predicted_class']]:.1%}; normal {p['normal']:.2f}, benign "
            f"{p['benign']:.2f}, malignant {p['malignant']:.2f}; {record['mode']} mode){size}{warn}")


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imagemasknet.inference.predictor import Predictor
    from imagemasknet.inference.stream import RecordWriter, iter_records, predict_to_file, read_file_list, scan_files
    from imagemasknet.models.weights import WeightsError

    if args.resume and not args.out:
        print("error: --resume continues an --out file; give --out FILE", file=sys.stderr)
        return 2
    files = scan_files(args.inputs) + (read_file_list(args.files_from) if args.files_from else [])
    if not files:
        print("error: no scans to predict (give files, folders or --files-from LIST)", file=sys.stderr)
        return 2
    masks = args.mask or None
    if masks and len(masks) != len(files):
        print(f"error: {len(masks)} masks for {len(files)} scans; give one --mask per scan, in order", file=sys.stderr)
        return 2
    try:
        predictor = (Predictor.from_run(Path(args.run)) if args.run else
                     Predictor.shipped(args.model) if args.model else Predictor.active())
    except (WeightsError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.grad_cam:
        try:
            Path(args.grad_cam).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: cannot save Grad-CAM overlays in {args.grad_cam} ({error.strerror or error}); choose a "
                  "folder you can write", file=sys.stderr)
            return 2
    bar = tqdm(total=len(files), desc="predicting", unit="scan", disable=args.no_progress)
    if args.out:  # streamed to a file as records come; memory stays flat however many files
        summary = predict_to_file(predictor, files, args.out, resume=args.resume, masks=masks, workers=args.workers,
                                  grad_cam_dir=args.grad_cam, on_record=lambda record: bar.update())
        bar.close()
        print(f"{summary.predicted} predicted, {summary.errors} unreadable"
              + (f", {summary.skipped} already in the file" if args.resume else "") + f": {args.out}", file=sys.stderr)
        return 0 if summary.predicted + summary.predicted_before else 1
    records, predicted = [], 0
    writer = RecordWriter(sys.stdout, "csv") if args.csv else None
    for record in iter_records(predictor, files, masks, args.workers, args.grad_cam):
        bar.update()
        predicted += "error" not in record
        if args.json:
            records.append(record)  # one JSON list, printed whole at the end
        elif writer is not None:
            writer.write(record)
        else:
            print(_describe(record), flush=True)
    bar.close()
    if args.json:
        print(json.dumps(records, indent=2))
    return 0 if predicted else 1


def cmd_models(args: argparse.Namespace) -> int:
    from imagemasknet.models import build_model, count_parameters, get_spec, list_models

    width = max(len(n) for n in list_models())
    for name in list_models():
        spec = get_spec(name)
        start = "from scratch" if spec.pretrained is None else (
            f"from {spec.pretrained.dataset} ({spec.pretrained.package} {spec.pretrained.version()}, {spec.pretrained.licence})")
        print(f"{name:{width}}  modes: {'/'.join(spec.modes):11} lesion map: {'yes' if spec.predicts_lesion else 'no ':3}  "
              f"parameters: {count_parameters(build_model(name)):>11,}  trained {start}\n{'':{width}}  {spec.description}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from imagemasknet.ops.release import ReleaseError, release, release_manifest

    external = {}
    for item in args.external or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            print(f"error: --external {item!r} must be NAME=LABELS.csv with an existing file", file=sys.stderr)
            return 2
        external[name] = path
    if args.unseen_hospital and args.unseen_hospital not in external:
        print(f"error: --unseen-hospital {args.unseen_hospital} names no --external set", file=sys.stderr)
        return 2
    try:
        bundle = release([Path(f) for f in args.folds], Path(args.all_data), args.out and Path(args.out), args.name,
                         external, args.unseen_hospital, args.version)
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"released {bundle.card.name} {bundle.card.version} to {bundle.folder}")
    for name, digest in release_manifest(bundle).items():
        print(f"  {digest[:16]}  {name}")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    import getpass

    from imagemasknet.ops import access, promotion

    try:
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Administrator password: ")
        session = access.login(password, client=access.Client("command-line", web=False))
        if args.action == "rollback":
            card = promotion.rollback(admin=session)
            print(f"rolled back: {card.version if card else 'the shipped model'} is the active model")
        else:
            card = promotion.promote(args.run, admin=session, override=args.reason)
            print(f"promoted {card.version}: it is the active model")
    except (access.AccessError, access.ConfigError, promotion.PromotionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_admin_set_password(args: argparse.Namespace) -> int:
    from imagemasknet.ops import access

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("New administrator password: ")
        if getpass.getpass("The same again: ") != password:
            raise ValueError("the two passwords differ; nothing was written")
    hashed = access.hash_password(password)
    if args.print:
        print(hashed)
        print(f"set it as {access.HASH_ENV} in the app's environment", file=sys.stderr)
        return 0
    path = access.write_password_hash(hashed, Path(args.secrets) if args.secrets else None)
    print(f"wrote the administrator password's hash (not the password) to {path}, permissions 600; "
          "restart the app to use it", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagemasknet", description="Breast-ultrasound classification with lesion masks.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model; writes a run folder",
                                description="Train a registered model. A preset sets the study's settings; flags override it. "
                                            "Under torchrun (torchrun --nproc_per_node N -m imagemasknet train ...) it trains "
                                            "data-parallel over the N processes; --batch-size is the global batch.")
    train.add_argument("--preset", choices=list(PRESETS), help="start from a preset: " + ", ".join(PRESETS))
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs still go to log.txt)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint (its own settings)")
    train.add_argument("--no-verify", action="store_true", help="load a data copy even if it fails its checksums")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="metrics with bootstrap CIs for a run, a model or weights",
                                   description="Evaluate a run folder, a shipped model or a weights file; prints a "
                                               "table, writes JSON.")
    source = evaluate.add_argument_group("model")
    source.add_argument("--run", help="run folder")
    source.add_argument("--cv", nargs="+", metavar="RUN", help="cross-validation fold runs (e.g. trained as separate "
                        "jobs with --fold K): each is evaluated on its own test split, merged into one report")
    source.add_argument("--checkpoint", default="best", choices=("best", "last", "average"),
                        help="which checkpoint of the run: best (the one its checkpoint rule kept), last, or average (of the last epochs, where kept)")
    source.add_argument("--model", help="a shipped model bundle by name (weights/NAME), calibrated by its card")
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
    evaluate.add_argument("--json", help="write the report here (default with --run: RUN/metrics.json; with --data "
                                         "the report also goes to a folder runs/owndata-NAME-TIME the Training page lists)")
    evaluate.add_argument("--sensitivity", type=float, default=0.95,
                          help="target malignant sensitivity for the suggested P(malignant) threshold (default: 0.95)")
    evaluate.add_argument("--save-threshold", nargs="?", const="", default=None, metavar="PATH",
                          help="save that threshold as the site's (default PATH: runs/site_threshold.json), "
                               "so the app can flag scans above it")
    evaluate.add_argument("--no-verify", action="store_true", help="load a data copy even if it fails its checksums")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_evaluate)

    audit = commands.add_parser("audit", help="dataset audit: counts, sizes, near-duplicates, label conflicts")
    audit.add_argument("--data", help="a folder of your own (default: every bundled source)")
    audit.add_argument("--source", action="append", choices=SOURCE_NAMES, help="a bundled source (repeat for more)")
    audit.add_argument("--format", choices=("table", "json"), default="table")
    audit.add_argument("--json", help="also write the JSON report to this file")
    audit.add_argument("--no-verify", action="store_true", help="load a data copy even if it fails its checksums")
    audit.set_defaults(func=cmd_audit)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    split = data_commands.add_parser("split", help="rebuild a source's grouped 5-fold split file")
    split.add_argument("--source", default="busi", choices=SOURCE_NAMES)
    split.add_argument("--data", help="another copy of BUSI to split instead of the bundled one")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", help="default: splits/SOURCE-5fold.json")
    split.add_argument("--no-verify", action="store_true", help="load a data copy even if it fails its checksums")
    split.set_defaults(func=cmd_split)
    verify = data_commands.add_parser(
        "verify", help="check a data copy against its checksums.sha256 (missing, changed, extra files)",
        description="Hash every file checksums.sha256 lists and look for files it does not list; "
                    "exit 0 when the copy matches, 1 when it does not.")
    verify.add_argument("--data", help="a folder with a checksums.sha256 (default: every bundled source, as the "
                                       "loader finds it)")
    verify.add_argument("--source", action="append", choices=SOURCE_NAMES, help="a bundled source (repeat for more)")
    verify.add_argument("--json", help="also write the report to this file")
    verify.set_defaults(func=cmd_data_verify)

    predict = commands.add_parser("predict", help="classify scans (files or folders)",
                                  description="Classify scans with the shipped model (or a run's). Unreadable files are "
                                              "reported and the batch goes on; exit 0 when at least one scan was predicted.")
    predict.add_argument("inputs", nargs="*", metavar="FILE_OR_FOLDER")
    predict.add_argument("--files-from", metavar="LIST", help="also predict the files listed here, one per line ('-': stdin)")
    predict.add_argument("--mask", action="append", help="lesion mask for a scan (repeat: one per scan, in order)")
    predict.add_argument("--model", help="shipped model name (default: the default model, or the one promoted in its place)")
    predict.add_argument("--run", help="use a run folder's best checkpoint instead of a shipped model")
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON list, a record per file")
    output.add_argument("--csv", action="store_true", help="print CSV rows")
    output.add_argument("--out", metavar="FILE", help="write records to FILE as they come: CSV for .csv, JSONL otherwise")
    predict.add_argument("--resume", action="store_true", help="with --out: skip files already in FILE, append the rest")
    predict.add_argument("--workers", type=int, default=0, help="processes reading scans in parallel (default: 0)")
    predict.add_argument("--grad-cam", metavar="OUTDIR", help="also save a Grad-CAM overlay per scan here")
    predict.add_argument("--no-progress", action="store_true")
    predict.set_defaults(func=cmd_predict)

    admin = commands.add_parser("admin", help="administrator settings (who may retrain and promote in the app)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    set_password = admin_commands.add_parser(
        "set-password", help="set the administrator password (stores a salted scrypt hash, never the password)",
        description="Prompts for the password twice and writes its salted hash as admin_password_hash to "
                    ".streamlit/secrets.toml (or $IMAGEMASKNET_SECRETS, or --secrets) with permissions 600.")
    set_password.add_argument("--secrets", metavar="PATH", help="the secrets file to write (other keys are kept)")
    set_password.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    set_password.add_argument("--print", action="store_true",
                              help="print the hash (for IMAGEMASKNET_ADMIN_HASH) instead of writing a file")
    set_password.set_defaults(func=cmd_admin_set_password)

    models = commands.add_parser("models", help="list registered models; promote a run or roll back (administrator)")
    models.set_defaults(func=cmd_models)
    model_commands = models.add_subparsers(dest="models_command")
    promote = model_commands.add_parser(
        "promote", help="make a finished run (a whole bundle) the active model; asks for the administrator password",
        description="A run carries no malignancy flag (only a cross-validation sets one), so --reason is needed.")
    promote.add_argument("run", help="the run's name (a folder under the runs folder)")
    promote.add_argument("--reason", help="why it is promoted despite its concerns (recorded in the audit log)")
    promote.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    promote.set_defaults(func=cmd_models_promote, action="promote")
    rollback = model_commands.add_parser("rollback", help="restore the model the active one replaced")
    rollback.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    rollback.set_defaults(func=cmd_models_promote, action="rollback")

    release = commands.add_parser(
        "release", help="build a model bundle from a cross-validation's fold runs and an all-data run",
        description="Every threshold the bundle decides with is set on the fold runs' out-of-fold predictions; "
                    "external sets are reported on only.")
    release.add_argument("--folds", nargs="+", required=True, metavar="RUN", help="the fold runs (each tested on its fold)")
    release.add_argument("--all-data", required=True, metavar="RUN", help="the run trained on all data: its weights ship")
    release.add_argument("--name", help="the bundle's name (default: the architecture's registered name)")
    release.add_argument("--out", help="the bundle folder (default: weights/NAME)")
    release.add_argument("--version", help="the bundle's version (default: today's date)")
    release.add_argument("--external", action="append", metavar="NAME=LABELS.csv",
                         help="a labelled external set to report on (repeat for more); never chooses anything")
    release.add_argument("--unseen-hospital", metavar="NAME",
                         help="the external set from a hospital the model never trained on, whose flag sensitivity "
                              "the 'unfamiliar' trust line quotes")
    release.set_defaults(func=cmd_release)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import os

    from imagemasknet.data.verify import SKIP_ENV

    previous = os.environ.get(SKIP_ENV)
    if getattr(args, "no_verify", False):
        os.environ[SKIP_ENV] = "1"  # for this command (and the processes it starts) only
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if getattr(args, "no_verify", False):
            if previous is None:
                os.environ.pop(SKIP_ENV, None)
            else:
                os.environ[SKIP_ENV] = previous


if __name__ == "__main__":
    sys.exit(main())
