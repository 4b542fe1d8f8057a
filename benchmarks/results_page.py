"""Write docs/results.md, and the README's results summary, from the figures under benchmarks/results/: every
table comes from a JSON file here, named beside it with the command that made it, so no page can drift from the
measurements.

    python benchmarks/results_page.py           # rewrite docs/results.md and the README's summary
    python benchmarks/results_page.py --check   # exit 1 when either differs (tests/test_docs.py)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "results.md"
README = REPO / "README.md"
SUMMARY_BEGIN, SUMMARY_END = "<!-- results summary: written by benchmarks/results_page.py -->", "<!-- end of results summary -->"
BUSBRA = "../shared/datasets/busbra/labels.csv"


@dataclass(frozen=True)
class Figures:
    """One results file and the command that wrote it."""

    file: str
    command: str

    def load(self) -> dict | None:
        path = RESULTS / self.file
        return json.loads(path.read_text()) if path.is_file() else None

    def cite(self) -> str:
        return f"[`{self.file}`](../benchmarks/results/{self.file}), from\n\n```bash\n{self.command}\n```\n"


# --- the default model: trained on BUSI and BUS-BRA's training half ------------------------------------------------
DEFAULT = "lesion-effnet-lite0"
SHIPPED_RUNS = "results/screen-A"  # the screening's baseline, shipped: its winner was not confirmed
DEFAULT_CV = Figures("cv-summary-two-hospitals.json", f"""\
python benchmarks/cross_validation.py --out {SHIPPED_RUNS} --presets {DEFAULT} --resamples 200 --extra --precision bf16
python benchmarks/summarise.py {SHIPPED_RUNS} --json benchmarks/results/cv-summary-two-hospitals.json""")
WINNER = "D"  # the screening's winner, whose test folds WINNER_CV summarises
WINNER_CV = Figures("cv-summary-screening-winner.json", f"""\
python benchmarks/cross_validation.py --out results/screen-D --presets {DEFAULT} --no-all-data --resamples 200 \\
    --extra --precision bf16 --normal-crops 0.15
python benchmarks/summarise.py results/screen-D --json benchmarks/results/cv-summary-screening-winner.json""")
DEFAULT_BUSBRA = Figures("busbra-two-hospitals.json", f"""\
python -m imagemasknet evaluate --model {DEFAULT} --data {BUSBRA} \\
    --json benchmarks/results/busbra-two-hospitals.json""")
DEFAULT_SAFETY = Figures("safety-busbra-two-hospitals.json", f"""\
python benchmarks/safety_report.py --data {BUSBRA} --json benchmarks/results/safety-busbra-two-hospitals.json""")
DEFAULT_PROXY = Figures("normal-proxy-busbra-two-hospitals.json", f"""\
python benchmarks/normal_proxy.py --data {BUSBRA} --json benchmarks/results/normal-proxy-busbra-two-hospitals.json""")
DEFAULT_RULES = Figures("decision-rules-two-hospitals.json", f"""\
imagemasknet release --folds {SHIPPED_RUNS}/{DEFAULT}-fold{{0,1,2,3,4}} --all-data {SHIPPED_RUNS}/{DEFAULT}-all \\
    --external busbra={BUSBRA}
python benchmarks/decision_rules.py --json benchmarks/results/decision-rules-two-hospitals.json""")
SCREENING = Figures("screening.json", """\
python benchmarks/screening.py results --json benchmarks/results/screening.json""")

# --- the earlier default, trained on BUSI alone (leave one source out: BUSI -> BUS-BRA) ---------------------------
BUSI_CV = Figures("cv-summary-lite0.json", f"""\
python benchmarks/cross_validation.py --out results/cv-lite0 --presets {DEFAULT} --no-all-data \\
    --checkpoints average --busbra {BUSBRA} --extra --precision bf16
python benchmarks/summarise.py results/cv-lite0 --json benchmarks/results/cv-summary-lite0.json""")
BUSI_BUSBRA = Figures("busbra-shipped-lite0.json", f"""\
python -m imagemasknet evaluate --weights weights/lesion-effnet-lite0.safetensors --arch {DEFAULT} \\
    --data {BUSBRA} --json benchmarks/results/busbra-shipped-lite0.json""")
BUSI_SAFETY = Figures("safety-busbra-lite0-busi.json", f"""\
python benchmarks/safety_report.py --data {BUSBRA} --json benchmarks/results/safety-busbra-lite0-busi.json""")
BUSI_PROXY = Figures("normal-proxy-busbra-lite0-busi.json", f"""\
python benchmarks/normal_proxy.py --data {BUSBRA} --json benchmarks/results/normal-proxy-busbra-lite0-busi.json""")
BUSI_RULES = Figures("decision-rules-lite0-busi.json", f"""\
python benchmarks/summarise.py results/cv-lite0 --ship {DEFAULT} --busbra {BUSBRA} --unseen-hospital
python benchmarks/decision_rules.py --json benchmarks/results/decision-rules-lite0-busi.json""")
BUSBRA_TO_BUSI = Figures("loso-busbra-train-to-busi.json", f"""\
python -m imagemasknet train --preset {DEFAULT} --sources busbra-train --fold none --precision bf16 \\
    --out-dir results/loso/{DEFAULT}-busbra-train-all
python -m imagemasknet evaluate --run results/loso/{DEFAULT}-busbra-train-all --data data/busi/Dataset_BUSI_with_GT \\
    --json benchmarks/results/loso-busbra-train-to-busi.json""")

# --- the reproduction and the recipes -------------------------------------------------------------------------------
STUDY = Figures("cv-summary.json", f"""\
python benchmarks/cross_validation.py --out results/cv --busbra {BUSBRA}
python benchmarks/summarise.py results/cv --json benchmarks/results/cv-summary.json""")
RECIPES = [
    ("lesion-effnet-lite0, ImageNet start (BUSI)", "image", BUSI_CV),
    ("lesion-effnet-lite0, stronger appearance augmentation", "image", Figures("cv-summary-lite0-strong.json", f"""\
python benchmarks/cross_validation.py --out results/cv-lite0-strong --presets {DEFAULT} --no-all-data --resamples 300 \\
    --busbra {BUSBRA} --extra --precision bf16 --augment ultrasound-strong
python benchmarks/summarise.py results/cv-lite0-strong --json benchmarks/results/cv-summary-lite0-strong.json""")),
    ("lesion-resunet, weight decay 0.05 (its shipped recipe)", "image", Figures("cv-summary-weight-decay.json", f"""\
python benchmarks/cross_validation.py --out results/cv-wd --presets lesion-resunet --busbra {BUSBRA} --extra --precision bf16
python benchmarks/summarise.py results/cv-wd --json benchmarks/results/cv-summary-weight-decay.json --ship lesion-resunet""")),
    ("lesion-resunet, weight decay 1e-4 (first recipe)", "image", STUDY),
    ("lesion-resunet, class-balanced loss", "image", Figures("cv-summary-class-balanced.json", f"""\
python benchmarks/cross_validation.py --out results/cv-balanced --busbra {BUSBRA} --extra --class-balanced
python benchmarks/summarise.py results/cv-balanced --json benchmarks/results/cv-summary-class-balanced.json""")),
    ("lesion-resunet, moving average of the weights", "image", Figures("cv-summary-ema.json", f"""\
python benchmarks/cross_validation.py --out results/cv-ema --presets lesion-resunet --busbra {BUSBRA} --extra --precision bf16 --ema-decay 0.995
python benchmarks/summarise.py results/cv-ema --json benchmarks/results/cv-summary-ema.json""")),
    ("lesion-resunet, mixup", "image", Figures("cv-summary-mixup.json", f"""\
python benchmarks/cross_validation.py --out results/cv-mixup --presets lesion-resunet --busbra {BUSBRA} --extra --precision bf16 --mixup-alpha 0.4
python benchmarks/summarise.py results/cv-mixup --json benchmarks/results/cv-summary-mixup.json""")),
]
ENSEMBLES = [
    (DEFAULT, Figures("fold-ensemble-busbra-lite0.json", f"""\
python benchmarks/fold_ensemble.py results/cv-lite0 --preset {DEFAULT} --busbra {BUSBRA} \\
    --json benchmarks/results/fold-ensemble-busbra-lite0.json""")),
    ("lesion-resunet", Figures("fold-ensemble-busbra.json", f"""\
python benchmarks/fold_ensemble.py results/cv-wd --busbra {BUSBRA} --json benchmarks/results/fold-ensemble-busbra.json""")),
]
FLIP = Figures("flip-tta-ema.json", f"""\
python benchmarks/flip_tta.py results/cv-ema --busbra {BUSBRA} --json benchmarks/results/flip-tta-ema.json""")

# --- refusals and speed ------------------------------------------------------------------------------------------
NOT_ULTRASOUND = Figures("not-ultrasound.json", f"""\
python benchmarks/not_ultrasound.py --out results/not-ultrasound --busbra {BUSBRA} --json benchmarks/results/not-ultrasound.json""")
REFUSAL = Figures("refusal-robustness.json", """\
python benchmarks/refusal_robustness.py results/cv-lite0 --json benchmarks/results/refusal-robustness.json""")
LATENCY = Figures("latency-cpu.json", """\
python benchmarks/latency.py --runs 40 --threads 2 --json benchmarks/results/latency-cpu.json""")
SPEED = Figures("speed-cpu.json", """\
python benchmarks/speed.py --threads 2 --rounds 5 --steps 6 --json benchmarks/results/speed-cpu.json""")
FOLD_TIME = Figures("fold-time-cpu.json", """\
python benchmarks/fold_time.py --fold 0 --precision fp32 bf16 --out results/fold-time --json benchmarks/results/fold-time-cpu.json""")
STREAM = Figures("stream-predict-5000.json", """\
python benchmarks/stream_predict.py --count 5000 --workers 0 1 2 --json benchmarks/results/stream-predict-5000.json""")
APP_LOAD = Figures("app-load.json", """\
python benchmarks/app_load.py --sessions 10 --rounds 2 --soak 0 --large 10 --json benchmarks/results/app-load.json""")

# Issue 24's targets for the default model, with where each figure is read.
TARGETS = [
    ("BUS-BRA held-out patients: AUC, benign vs malignant (image only)", "≥ 0.92", 0.92, "ge"),
    ("BUS-BRA held-out patients: lesions called normal (image only)", "≤ 2 %", 0.02, "le"),
    ("BUS-BRA held-out patients: malignancy flag sensitivity (image only)", "≥ 0.90", 0.90, "ge"),
    ("BUSI part of the pooled folds: accuracy (image only)", "≥ 0.85", 0.85, "ge"),
    ("BUSI part of the pooled folds: macro AUC (image only)", "≥ 0.95", 0.95, "ge"),
    ("Leave one source out, BUSI → BUS-BRA: AUC (image only)", "≥ 0.82", 0.82, "ge"),
    ("Leave one source out, BUS-BRA → BUSI: AUC (image only)", "≥ 0.85", 0.85, "ge"),
]
SOURCE_NAMES = {"busi": "BUSI (Cairo)", "busbra-train": "BUS-BRA training half (Rio de Janeiro)"}
MEASURED_ON = {"out_of_fold": "out of fold", "cross_validated": "cross-validated",
               "busbra": "BUS-BRA's evaluation half (report only)"}


# --- formatting ------------------------------------------------------------------------------------------------------

def num(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def pct(value, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f} %"


def pm(entry: dict | None, percent: bool = False) -> str:
    """mean ± SD of a ``{"mean", "std"}`` entry."""
    if not entry:
        return "–"
    if percent:
        return f"{100 * entry['mean']:.1f} % ± {100 * entry['std']:.1f}"
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]) + "\n"


def missing(figures: Figures) -> str:
    return f"Not measured yet: `{figures.file}` is written by\n\n```bash\n{figures.command}\n```\n"


# --- sections --------------------------------------------------------------------------------------------------------

def cross_validation(figures: Figures, preset: str, what: str) -> str:
    data = figures.load()
    if data is None or preset not in data:
        return missing(figures)
    rows = []
    for mode, entry in data[preset].items():
        rows.append([f"{mode}, all scans", pm(entry.get("accuracy")), pm(entry.get("macro_auc")),
                     pm(entry.get("recall_malignant")), pm(entry.get("ece")), pm(entry.get("lesion_dice")),
                     pm(entry.get("inner_validation_loss"))])
        for source, part in entry.get("by_source", {}).items():
            rows.append([f"{mode}, {SOURCE_NAMES.get(source, source)}", pm(part.get("accuracy")),
                         pm(part.get("macro_auc")), pm(part.get("recall_malignant")), "", "", ""])
    folds = len(next(iter(data[preset].values()))["folds"])
    return (f"{what} Mean ± SD over {folds} folds; each fold's model never saw its test fold.\n\n"
            + table(["mode, scans", "accuracy", "macro AUC", "malignant sensitivity (largest probability)", "ECE",
                     "lesion Dice", "inner-validation loss"], rows) + "\n" + figures.cite())


def held_out(figures: Figures, safety: Figures, proxy: Figures, what: str) -> str:
    data = figures.load()
    if data is None:
        return missing(figures)
    flags = (safety.load() or {}).get("summary", {}).get("flag_sensitivity", {})
    rows = [[mode, num(r["lesions"]["benign_vs_malignant_auc"]), pct(r["lesions"]["lesions_called_normal"]),
             num(r["metrics"]["recall_malignant"]["value"]), num(flags.get(mode))]
            for mode, r in data["modes"].items()]
    text = (f"{what} {data['n']} scans, every one a biopsy-proven lesion.\n\n"
            + table(["mode", "AUC, benign vs malignant", "lesions called normal",
                     "malignant called malignant (largest probability)", "malignancy flag sensitivity"], rows)
            + "\n" + figures.cite())
    report = safety.load()
    if report is not None:
        s = report["summary"]
        trust = s["trust"]
        text += ("\nWhat the Classify page would say about each of them, through the app's own Predictor:\n\n"
                 + table(["scans", "refused as not ultrasound", "lesions reassured as normal", "trust: tested",
                          "trust: unfamiliar", "trust: low confidence", "model sees no lesion where one is marked"],
                         [[str(s["n"]), str(s["refused"]), pct(s["lesions"]["reassured_as_normal"]),
                           str(trust.get("tested", 0)), str(trust.get("unfamiliar", 0)),
                           str(trust.get("low confidence", 0)), pct(s["model_sees_no_lesion_where_marked"])]])
                 + "\n" + safety.cite())
    crops = proxy.load()
    if crops is not None:
        text += (f"\nNormal tissue from the same scanners (BUS-BRA has no normal scans): {crops['crops']} lesion-free "
                 f"squares cut from these scans. Called normal: {pct(crops['called_normal'])}; reassured as normal: "
                 f"{pct(crops['reassured_as_normal'])}.\n\n" + proxy.cite())
    return text


def ci(entry: dict | None, percent: bool = True) -> str:
    """A value with its 95 % CI, from a ``{"value", "ci_low", "ci_high"}`` entry."""
    if not entry or entry.get("value") is None or entry["value"] != entry["value"]:
        return "–"
    show = pct if percent else num
    return f"{show(entry['value'])} [{show(entry['ci_low'])}, {show(entry['ci_high'])}]"


def decision_rules(figures: Figures) -> str:
    data = figures.load()
    if data is None:
        return missing(figures)
    flag, exclusion, low = data["malignancy_flag"], data["lesion_exclusion"], data["low_confidence"]
    known = ("threshold", "footing", "out_of_fold", "cross_validated")
    flag_rows = []
    for mode, entry in flag["modes"].items():
        for where in ("out_of_fold", "cross_validated", *(k for k in entry if k not in known)):
            figure = entry.get(where) or {}
            flag_rows.append([mode, f"{entry['footing']} ≥ {num(entry['threshold'])}", MEASURED_ON.get(where, where),
                              str(figure.get("n_malignant", "–")), ci(figure.get("sensitivity")),
                              ci(figure.get("specificity_benign"))])
    exclusion_rows = [[MEASURED_ON.get(where, where), ci(figure.get("lesions_reassured")), ci(figure.get("normals_reassured"))]
                      for where, figure in exclusion.items() if isinstance(figure, dict) and "lesions_reassured" in figure]
    low_rows = [[mode, pct(f["share_low"]), pct(f["accuracy_low"]), pct(f["accuracy_confident"])]
                for mode, f in low["out_of_fold"].items()]
    familiarity = data.get("familiarity") or {}
    return (f"The rules {data['model']} (version {data['version']}) carries, set on its cross-validation's "
            "out-of-fold predictions: each scan judged by the fold model that never trained on it. "
            "\"Cross-validated\" sets each fold's threshold on the other folds.\n\n"
            f"**The malignancy flag**, set to catch {pct(flag['target_sensitivity'], 0)} of cancers:\n\n"
            + table(["mode", "flagged when", "measured on", "malignant scans", "sensitivity [95 % CI]",
                     "specificity on benign [95 % CI]"], flag_rows)
            + f"\n**Lesion exclusion**: a normal answer reassures only when P(normal) exceeds "
            f"{num(exclusion['threshold'])}, set so that at least {pct(exclusion['target'], 0)} of lesion scans are "
            "not reassured, and only on a tested result.\n\n"
            + table(["measured on", "lesion scans reassured [95 % CI]", "normal scans reassured [95 % CI]"], exclusion_rows)
            + f"\n**Low confidence** ({low['rule']}), out of fold:\n\n"
            + table(["mode", "share of scans", "accuracy when low", "accuracy otherwise"], low_rows)
            + (f"\n**Familiarity**: unfamiliar above a texture score of {num(familiarity['unfamiliar_above'], 2)}, "
               f"refused as not an ultrasound above {num(familiarity['refuse_above'], 2)}.\n"
               if familiarity.get("unfamiliar_above") is not None else "")
            + "\n" + figures.cite())


def leave_one_source_out() -> str:
    rows = []
    forward = BUSI_BUSBRA.load()
    rows.append(["BUSI", "BUS-BRA held-out patients",
                 num(forward["modes"]["image"]["lesions"]["benign_vs_malignant_auc"]) if forward else "–",
                 pct(forward["modes"]["image"]["lesions"]["lesions_called_normal"]) if forward else "–"])
    backward = BUSBRA_TO_BUSI.load()
    rows.append(["BUS-BRA training half", "BUSI (all 780 scans)",
                 num(backward["modes"]["image"]["lesions"]["benign_vs_malignant_auc"]) if backward else "–",
                 pct(backward["modes"]["image"]["lesions"]["lesions_called_normal"]) if backward else "–"])
    return ("Trained on one hospital's scans (all of them, the recipe unchanged), scored on the other's, image "
            "only.\n\n" + table(["trained on", "scored on", "AUC, benign vs malignant", "lesions called normal"], rows)
            + "\n" + BUSI_BUSBRA.cite() + "\n" + (BUSBRA_TO_BUSI.cite() if backward else missing(BUSBRA_TO_BUSI)))


def targets() -> str:
    cv, external, safety = DEFAULT_CV.load(), DEFAULT_BUSBRA.load(), DEFAULT_SAFETY.load()
    forward, backward = BUSI_BUSBRA.load(), BUSBRA_TO_BUSI.load()

    def busi(key):
        return (cv or {}).get(DEFAULT, {}).get("image", {}).get("by_source", {}).get("busi", {}).get(key, {}).get("mean")

    def auc(report):
        return report["modes"]["image"]["lesions"]["benign_vs_malignant_auc"] if report else None

    measured = [auc(external),
                external["modes"]["image"]["lesions"]["lesions_called_normal"] if external else None,
                (safety or {}).get("summary", {}).get("flag_sensitivity", {}).get("image"),
                busi("accuracy"), busi("macro_auc"), auc(forward), auc(backward)]
    rows = []
    for (measure, target, bound, sense), value in zip(TARGETS, measured):
        met = "–" if value is None else ("yes" if (value >= bound if sense == "ge" else value <= bound) else "no")
        shown = pct(value) if "%" in target else num(value)
        rows.append([measure, target, shown, met])
    return ("The default model against its targets (benchmarks, not tests), from the tables below.\n\n"
            + table(["measure", "target", "measured", "met"], rows))


def confirmed(confirmations: dict) -> str:
    """What each five-fold confirmation tried (in turn, best first) said."""
    said = []
    for name, confirmation in confirmations.items():
        if confirmation["verdict"] == "not finished":
            said.append(f"{name} beats A on folds 0 and 1 and ships once its five folds confirm it; until then A ships.")
            continue
        means = {n: sum(v) / len(v) for n, v in confirmation["inner_validation_loss"].items()}
        said.append(f"On all five folds {name}'s mean inner-validation loss is {num(means[name])} against A's "
                    f"{num(means['A'])}: " + ("confirmed, it ships." if confirmation["verdict"] == "confirmed"
                                              else "not confirmed."))
    return " ".join(said)


def screening() -> str:
    data = SCREENING.load()
    if data is None:
        return missing(SCREENING)
    rows = []
    for name, entry in data["candidates"].items():
        losses = entry["inner_validation_loss"]
        mean = None if None in losses else sum(losses) / len(losses)
        rows.append([name, entry["recipe"], ", ".join("not needed" if v is None else num(v) for v in losses),
                     num(mean), entry["verdict"]])
    rows += [[name, what, "not finished", "–", "–"] for name, what in data["not_finished"].items()]
    rows += [[name, what, "not run yet", "–", "–"] for name, what in data["not_run"].items()]
    waiting = [*data["not_finished"], *data["not_run"]]
    winner, after = data["winner"], ""
    tried = confirmed(data["confirmations"]) + " " if data["confirmations"] else ""
    if waiting:
        chosen = (f"{tried}Not screened yet: {', '.join(waiting)}. Until every candidate is screened, A ships: the "
                  "choice is not made.")
    elif winner == "A":
        chosen = "No candidate beats A: A ships."
    else:
        chosen = tried + ("A ships." if data["confirmation"]["verdict"] == "not confirmed" else "")
        if data["confirmation"]["verdict"] != "not finished":
            after = "\n" + after_the_choice(winner)
    return (f"{data['rule']}\n\n" + table(["candidate", "recipe", "inner-validation loss, folds 0 and 1", "mean",
                                          "by the rule"], rows)
            + f"\n{chosen}\n\n" + SCREENING.cite() + after)


def after_the_choice(winner: str) -> str:
    """A and the screening's winner on the pooled test folds, read only once the choice was made."""
    if winner != WINNER:
        raise SystemExit(f"the screening's winner is {winner}, but {WINNER_CV.file} holds {WINNER}'s figures: "
                         "summarise its folds and set WINNER in benchmarks/results_page.py")
    baseline, candidate = DEFAULT_CV.load(), WINNER_CV.load()
    if baseline is None or candidate is None:
        return missing(DEFAULT_CV if baseline is None else WINNER_CV)
    rows = []
    for name, data in (("A", baseline), (winner, candidate)):
        image = data[DEFAULT]["image"]
        busi, busbra = (image.get("by_source", {}).get(source, {}) for source in ("busi", "busbra-train"))
        rows.append([name, pm(image["accuracy"]), pm(image["macro_auc"]), pm(busi.get("accuracy")),
                     pm(busi.get("macro_auc")), pm(busi.get("lesions_called_normal"), percent=True),
                     pm(busbra.get("benign_vs_malignant_auc")), pm(busbra.get("lesions_called_normal"), percent=True)])
    return ("After the choice, both on the pooled test folds, image only (mean ± SD over five folds; these figures "
            "chose nothing):\n\n"
            + table(["recipe", "accuracy", "macro AUC", "BUSI: accuracy", "BUSI: macro AUC", "BUSI: lesions called normal",
                     "BUS-BRA training half: AUC, benign vs malignant", "BUS-BRA training half: lesions called normal"],
                    rows) + "\n" + WINNER_CV.cite())


def study() -> str:
    data = STUDY.load()
    names = {"study-m1": "study Model 1 (ImageMaskNet)", "study-m2": "study Model 2 (ImageMaskNet2)"}
    figures = {"study-m1": {"mask": "98.7 %"}, "study-m2": {"mask": "96.9 %", "image": "≈ 88 %"}}  # the paper's
    rows = []
    for preset, name in names.items():
        for mode, entry in data[preset].items():
            own = entry.get("study_protocol", {}).get("accuracy", {}).get("value")
            rows.append([name, mode, figures[preset].get(mode, "–"), num(own), pm(entry["accuracy"]),
                         pm(entry["macro_auc"]), pm(entry["recall_malignant"])])
    return ("The published study measured its models on the images they trained on. Under its protocol they "
            "reproduce; on held-out folds that keep BUSI's near-duplicates together they fall.\n\n"
            + table(["model", "mode", "study's figure", "accuracy on its own training images",
                     "5-fold accuracy", "5-fold macro AUC", "5-fold malignant sensitivity"], rows)
            + "\n" + STUDY.cite())


def recipes() -> str:
    rows = []
    for name, mode, figures in RECIPES:
        data = figures.load()
        preset = DEFAULT if name.startswith(DEFAULT) else "lesion-resunet"
        entry = data[preset][mode]
        rows.append([name, pm(entry["accuracy"]), pm(entry["macro_auc"]), pm(entry["recall_malignant"]),
                     pm(entry["ece"]), pm(entry.get("inner_validation_loss")), pm(entry.get("busbra_auc")),
                     pm(entry.get("busbra_called_normal"), percent=True)])
    sources = "\n".join(f"- {name}: " + figures.cite() for name, _, figures in RECIPES)
    flip = FLIP.load()["mean"]["image"]
    flip_rows = [[variant, num(f["inner_validation_loss"]), num(f["accuracy"]), num(f["macro_auc"]),
                  num(f["busbra_benign_vs_malignant_auc"])] for variant, f in flip.items()]
    return ("Earlier recipes on BUSI's five folds, image only (mean ± SD over folds; BUS-BRA figures are each "
            "fold model on BUS-BRA's evaluation patients, report only: they chose nothing). A recipe was adopted "
            "only when its inner-validation loss was lower.\n\n"
            + table(["recipe", "accuracy", "macro AUC", "malignant sensitivity", "ECE", "inner-validation loss",
                     "BUS-BRA AUC", "BUS-BRA lesions called normal"], rows)
            + "\n" + sources + "\nMirror-averaged predictions (flip test-time augmentation), lesion-resunet with a "
            "moving average, mean over folds:\n\n"
            + table(["variant", "inner-validation loss", "accuracy", "macro AUC", "BUS-BRA AUC"], flip_rows)
            + "\n" + FLIP.cite())


def ensembles() -> str:
    rows = []
    for preset, figures in ENSEMBLES:
        for mode, entry in figures.load()["modes"].items():
            rows.append([preset, mode, num(entry["fold_mean"]["benign_vs_malignant_auc"]),
                         num(entry["ensemble"]["benign_vs_malignant_auc"]),
                         pct(entry["fold_mean"]["lesions_called_normal"]), pct(entry["ensemble"]["lesions_called_normal"])])
    return ("Five fold models averaged, on BUS-BRA's evaluation patients (report only: five networks would not fit "
            "the weights budget).\n\n"
            + table(["model", "mode", "AUC, fold models' mean", "AUC, ensemble", "called normal, fold mean",
                     "called normal, ensemble"], rows)
            + "\n" + "\n".join(figures.cite() for _, figures in ENSEMBLES))


def refusals() -> str:
    data = NOT_ULTRASOUND.load()
    rows = [[kind, str(sum(counts.values())), str(counts.get("refused", 0))]
            for kind, counts in data["not_ultrasound"].items()]
    total = data["not_ultrasound_total"]
    rows.append(["**all pictures**", str(total["pictures"]), str(total["refused"])])
    missed = ", ".join(f"`{Path(r['file']).name}` (called {r['outcome']})" for r in data["not_refused"]) or "none"
    scans = table(["ultrasound set", "scans", "refused or unread"],
                  [[name, str(s["scans"]), str(s["refused_or_unread"])] for name, s in data["ultrasound_scans"].items()])
    robust = REFUSAL.load()
    robust_rows = [[name, num(r["refuse_above"]), pct(r["plain_refused"]), pct(r["strong_refused"])]
                   for name, r in robust.items() if isinstance(r, dict) and "refuse_above" in r]
    return ("What is not a breast ultrasound should be refused, not classified. The shipped default model on "
            "pictures that are not ultrasound, by kind (a picture it does not refuse is still marked \"unfamiliar\", "
            "never green):\n\n" + table(["kind", "pictures", "refused"], rows) + f"\nNot refused: {missed}.\n\n" + scans
            + "\n" + NOT_ULTRASOUND.cite()
            + "\nUltrasound that looks like another scanner's (BUSI held-out scans, as they are and redrawn by the "
            f"`ultrasound-strong` augmentation; {robust['n_plain']} and {robust['n_strong']} scans), against each "
            "fold model's refusal reference:\n\n"
            + table(["reference", "refuse above", "held-out scans refused", "redrawn scans refused"], robust_rows)
            + f"\nBy the rule fixed before the run: {robust['rule_says']}.\n\n" + REFUSAL.cite())


def speed() -> str:
    latency = LATENCY.load()
    rows = [[model, num(m["predict_ms"], 1), num(m["grad_cam_ms"], 1)] for model, m in latency["median_ms"].items()]
    steps = SPEED.load()
    step_rows = [[what, num(s["median"], 2), str(s["steps"])] for what, s in steps["training_step_seconds"].items()]
    folds = FOLD_TIME.load()
    fold_rows = [[precision, r["run"], str(r["epochs"]), num(r["minutes"], 1), num(r["image"]["accuracy"])]
                 for precision, r in folds["runs"].items()]
    stream = STREAM.load()
    stream_rows = [[str(r["workers"]), str(r["scans"]), num(r["scans_per_second"], 1), num(r["peak_tree_pss_mib"], 0)]
                   for r in stream["results"]]
    load = APP_LOAD.load()
    c, big = load["concurrency"], load["large_uploads"]
    return ("All on the project's 2-core CPU (no GPU).\n\n"
            f"One scan at a time, the app's whole `predict` (model, calibration, familiarity, training-data search) "
            f"and Grad-CAM, median of {latency['runs']} runs on {latency['threads']} threads:\n\n"
            + table(["model", "predict (ms)", "Grad-CAM (ms)"], rows) + "\n" + LATENCY.cite()
            + f"\nOne training step, {steps['batch_size']} scans at 256 px ({steps['machine']}):\n\n"
            + table(["model and precision", "seconds, median", "steps"], step_rows) + "\n" + SPEED.cite()
            + f"\nOne fold of {folds['preset']}, fold {folds['fold']} ({folds['machine']}):\n\n"
            + table(["precision", "run", "epochs", "minutes", "image-only accuracy"], fold_rows) + "\n" + FOLD_TIME.cite()
            + f"\n`imagemasknet predict` streaming {stream['count']} scans to a file ({stream['machine']}):\n\n"
            + table(["reader processes", "scans", "scans per second", "peak memory, MiB (PSS)"], stream_rows)
            + "\n" + STREAM.cite()
            + f"\nThe app under load ({load['machine']}, {load['date']}): one server and {c['sessions']} headless "
            "browser sessions on the same two cores.\n\n"
            + table(["measure", "figure"], [
                [f"{c['sessions']} sessions classifying at once, {c['rounds']} rounds: upload to result",
                 f"p50 {num(c['p50_s'], 2)} s, p95 {num(c['p95_s'], 2)} s, wrong answers {len(c['wrong'])}"],
                ["the first upload after a start (model loaded, training scans indexed)", f"{num(c['first_upload_s'], 1)} s"],
                [f"{big['sessions']} sessions each uploading {big['files_per_session']} × {big['file']}: server memory",
                 f"{num(big['rss_before_mib'], 0)} MiB before, peak {num(big['rss_peak_while_reading_mib'], 0)} MiB, "
                 f"{num(big['rss_after_removing_mib'], 0)} MiB after removing them"]])
            + "\n" + APP_LOAD.cite())


STUDY_TITLE = "The study's reproduction"
SECTIONS = [
    ("Against the targets", targets),
    ("The default model: cross-validation on both hospitals", lambda: cross_validation(
        DEFAULT_CV, DEFAULT, "The default model's recipe on the pooled folds (BUSI's and BUS-BRA's training half's "
        "fold K together), every figure also per source.")),
    ("The default model on BUS-BRA's held-out patients", lambda: held_out(
        DEFAULT_BUSBRA, DEFAULT_SAFETY, DEFAULT_PROXY, "The shipped default on BUS-BRA's evaluation half: patients "
        "of a training hospital that no training, tuning or threshold ever saw.")),
    ("The default model's decision rules", lambda: decision_rules(DEFAULT_RULES)),
    ("Choosing the two-hospital recipe", screening),
    ("Leave one source out", leave_one_source_out),
    ("Before: trained at one hospital", lambda: cross_validation(
        BUSI_CV, DEFAULT, "The earlier default, trained on BUSI alone, on BUSI's five folds.") + "\n" + held_out(
        BUSI_BUSBRA, BUSI_SAFETY, BUSI_PROXY, "That model on BUS-BRA's evaluation half, a hospital it never saw:")
        + "\n" + decision_rules(BUSI_RULES)),
    (STUDY_TITLE, study),
    ("Recipes compared", recipes),
    ("Fold ensembles", ensembles),
    ("Refusing what is not ultrasound", refusals),
    ("Speed", speed),
]


def render() -> str:
    parts = ["# Results", "",
             "Generated by `python benchmarks/results_page.py` from `benchmarks/results/*.json`; do not edit by hand. "
             "Each table names its file and the command that wrote it. BUS-BRA's evaluation half "
             f"(`{BUSBRA}`) is evaluation only: nothing was trained, tuned, selected or calibrated on it.", ""]
    parts += [f"- [{title}](#{anchor(title)})" for title, _ in SECTIONS] + [""]
    for title, section in SECTIONS:
        parts += [f"## {title}", "", section().rstrip("\n"), ""]
    return "\n".join(parts)


def readme_summary() -> list[str]:
    """At most ten lines for the README, each linking to its section here."""
    cv, external, safety, backward = DEFAULT_CV.load(), DEFAULT_BUSBRA.load(), DEFAULT_SAFETY.load(), BUSBRA_TO_BUSI.load()
    forward, study, latency = BUSI_BUSBRA.load(), STUDY.load(), LATENCY.load()
    link = lambda title: f"docs/results.md#{anchor(title)}"  # noqa: E731
    lines = []
    if cv is not None:
        image = cv[DEFAULT]["image"]
        busi = image.get("by_source", {}).get("busi", {})
        lines.append(f"- **Cross-validation on both hospitals** (image only, 5 folds): accuracy {pm(image['accuracy'])}, "
                     f"macro AUC {pm(image['macro_auc'])}; on BUSI's part {pm(busi.get('accuracy'))} and "
                     f"{pm(busi.get('macro_auc'))} ([details]({link('The default model: cross-validation on both hospitals')})).")
    if external is not None:
        lesions = external["modes"]["image"]["lesions"]
        flag = (safety or {}).get("summary", {}).get("flag_sensitivity", {}).get("image")
        details = link("The default model on BUS-BRA's held-out patients")
        lines.append(f"- **BUS-BRA's held-out patients** (image only): AUC {num(lesions['benign_vs_malignant_auc'])} benign "
                     f"vs malignant, {pct(lesions['lesions_called_normal'])} of lesions called normal, the malignancy "
                     f"flag catches {pct(flag, 0)} of cancers ([details]({details})).")
    lines.append(f"- **Leave one hospital out**: trained on BUSI alone, AUC "
                 f"{num(forward['modes']['image']['lesions']['benign_vs_malignant_auc']) if forward else '–'} on BUS-BRA; "
                 f"on BUS-BRA alone, {num(backward['modes']['image']['lesions']['benign_vs_malignant_auc']) if backward else '–'} "
                 f"on BUSI ([details]({link('Leave one source out')})).")
    m1, m2 = study["study-m1"]["mask"], study["study-m2"]["image"]
    lines.append(f"- **The study's reproduction**: its Model 1 scores {pct(m1['study_protocol']['accuracy']['value'])} on "
                 f"the images it trained on (the paper: 98.7 %) and {pct(m1['accuracy']['mean'])} on held-out folds; "
                 f"Model 2 on the image alone {pct(m2['accuracy']['mean'])} ([details]({link(STUDY_TITLE)})).")
    lines.append(f"- **Speed**: {num(latency['median_ms'][DEFAULT]['predict_ms'], 1)} ms a scan on 2 CPU cores, the app's "
                 f"whole prediction ([details]({link('Speed')})).")
    return lines


def with_readme_summary(readme: str) -> str:
    head, begin, rest = readme.partition(SUMMARY_BEGIN)
    _, end, tail = rest.partition(SUMMARY_END)
    if not begin or not end:
        raise SystemExit(f"{README} has no results summary markers ({SUMMARY_BEGIN} … {SUMMARY_END})")
    return head + SUMMARY_BEGIN + "\n" + "\n".join(readme_summary()) + "\n" + SUMMARY_END + tail


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed page instead of writing it")
    args = parser.parse_args()
    readme = README.read_text(encoding="utf-8")
    pages = {PAGE: render(), README: with_readme_summary(readme)}
    if args.check:
        stale = [path for path, text in pages.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run python benchmarks/results_page.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in pages.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
