"""What a prediction means, in plain words: one verdict with its tone, and one line on how far to trust it.

The Classify page, the HTML report and the command line all say it with these sentences. The first screen
carries no thresholds, scores or model names; :func:`how_decided` says those, for the page's "How this was
decided" expander and the report's details.

* **Tone**: ``alarm`` (suspicious for malignancy), ``reassuring`` only when the result is not flagged, its
  trust level is ``tested``, the scan is not one the model trained on, in mask mode the model itself sees the
  lesion, and, if it is normal, a lesion is excluded; ``neutral`` otherwise. A result that
  is not shown to be safe never gets the reassuring colour.
* **Trust**: ``tested`` (a familiar scan, a confident answer: the flag's tested sensitivity), ``unfamiliar``
  (the flag's sensitivity at a hospital the model never trained on, when the card has it), ``low confidence``
  (no class reaches 60 % in the model's own three-class answer, in mask mode too).
"""
from __future__ import annotations

from dataclasses import dataclass

from imagemasknet.evaluation.decision import EXCLUSION_TARGET, GIVEN_LESION, LOW_CONFIDENCE_BELOW, TARGET_SENSITIVITY


@dataclass(frozen=True)
class Verdict:
    title: str
    tone: str  # alarm | neutral | reassuring
    reason: str  # one plain sentence under the title
    trust_line: str  # one plain sentence: how far to trust it
    disagreement: str | None = None  # mask mode: the model itself sees no lesion where one was marked


def _percent(value: float) -> str:
    return f"{value:.0%}"


def trust_line(prediction) -> str:
    figure = prediction.trust_figures.get(prediction.trust)
    if prediction.trust == "unfamiliar":
        if figure is None:
            return "Unfamiliar scanner or view: how well the model does on scans like this is not known."
        return (f"Unfamiliar scanner or view: at a hospital the model never trained on, this flag caught "
                f"{_percent(figure)} of cancers.")
    if prediction.trust == "low confidence":
        return (f"Low confidence: no answer reaches {_percent(LOW_CONFIDENCE_BELOW)}, so read the probabilities, "
                "not the answer.")
    if prediction.training_match is not None:
        return "Not a test: the model trained on this scan, so the answer says nothing about new scans."
    if figure is None:
        return "Tested: scans like this were in the model's validation."
    return f"Tested: on scans like this the flag caught {_percent(figure)} of cancers."


def verdict(prediction) -> Verdict:
    """The verdict of a :class:`~imagemasknet.inference.predictor.Prediction`."""
    flagged = prediction.suspicious_for_malignancy
    trusted = prediction.trust == "tested"
    earned = trusted and prediction.training_match is None  # a training scan's answer reassures nobody
    disagreement = None
    if prediction.model_sees_no_lesion:
        own = prediction.model_probabilities["normal"]
        disagreement = (f"The model itself sees no lesion here (on its own it says normal, {_percent(own)}); the "
                        "answer below takes the marked lesion as real.")
    if flagged:
        target = prediction.flag_target or TARGET_SENSITIVITY
        return Verdict("Suspicious for malignancy", "alarm",
                       f"The chance of malignancy is above the level set to catch {_percent(target)} of cancers.",
                       trust_line(prediction), disagreement)
    if prediction.predicted_class == "normal" and prediction.lesion_not_excluded:
        why = ("not certain enough to rule out a lesion" if trusted else
               "on a result like this the model has not shown it can rule out a lesion")
        return Verdict("A lesion cannot be excluded", "neutral", f"Normal tissue is the most likely answer, but {why}.",
                       trust_line(prediction), disagreement)
    if prediction.predicted_class == "normal":
        return Verdict("No lesion seen", "reassuring" if earned else "neutral",
                       f"Normal tissue, with the certainty the model needs to miss at most "
                       f"{_percent(1 - EXCLUSION_TARGET)} of lesions.", trust_line(prediction), disagreement)
    if flagged is None:
        return Verdict(f"{prediction.predicted_class.capitalize()} lesion, no malignancy flag", "neutral",
                       "This model has no flag set for sensitivity, so nothing here rules out cancer.",
                       trust_line(prediction), disagreement)
    safe = earned and not prediction.model_sees_no_lesion
    return Verdict("Not flagged for malignancy", "reassuring" if safe else "neutral",
                   f"A {prediction.predicted_class} lesion is the most likely answer, and the chance of malignancy "
                   "stays below the level set to catch most cancers." if safe else
                   f"A {prediction.predicted_class} lesion is the most likely answer; not shown to be safe here.",
                   trust_line(prediction), disagreement)


def how_decided(prediction) -> list[str]:
    """The thresholds and scores behind the verdict, one sentence each."""
    p = prediction.probabilities
    lines = []
    footing = GIVEN_LESION if prediction.mode == "mask" else "P(malignant)"
    if prediction.malignancy_threshold is not None:
        relation = "reaches" if prediction.suspicious_for_malignancy else "is below"
        lines.append(f"Malignancy flag: {footing} {p['malignant']:.1%} {relation} the threshold "
                     f"{prediction.malignancy_threshold:.1%}, set for {prediction.threshold_source}.")
    else:
        lines.append(f"Malignancy flag: {prediction.threshold_source}.")
    if prediction.mode == "mask":
        own = prediction.model_probabilities or {}
        lines.append("With a lesion marked, benign and malignant are renormalised to sum to one: P(· | a lesion). "
                     "The model's own answer before that: " +
                     ", ".join(f"{c} {v:.1%}" for c, v in own.items()) + ".")
    elif prediction.exclusion_threshold is not None:
        lines.append(f"Lesion exclusion: a scan is reassured as normal only when P(normal) exceeds "
                     f"{prediction.exclusion_threshold:.1%}, set so that {_percent(EXCLUSION_TARGET)} of lesion scans "
                     "the cross-validation held out are not reassured.")
    else:
        lines.append("Lesion exclusion: this model carries no exclusion threshold, so it never reassures.")
    if prediction.familiarity is not None:
        lines.append(f"Familiarity: the scan's texture scores {prediction.familiarity:.2f} against the training "
                     f"scans ({'unfamiliar' if prediction.unfamiliar else 'familiar'}).")
    lines.append(f"Low confidence below a top probability of {_percent(LOW_CONFIDENCE_BELOW)}.")
    lines.append(f"Model: {prediction.model}; mode: {prediction.mode}.")
    return lines
