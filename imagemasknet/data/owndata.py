"""A site's own labelled scans, and what a training run trains on: BUSI, a user's data, or both.

A user's data comes in either form :func:`imagemasknet.data.busi.load_dataset` reads: a folder with class
sub-folders (``normal/``, ``benign/``, ``malignant/``; any two are enough; optional ``NAME_mask.png``
beside each scan), or a CSV manifest ``image,label[,mask][,patient]`` with paths relative to the CSV.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from imagemasknet.data.busi import Busi, LoadReport, load_busi, load_dataset

DATA_MODES = ("replace", "add")
OWN_PREFIX = "own:"


def combine(base: Busi, own: Busi, prefix: str = OWN_PREFIX) -> Busi:
    """BUSI plus a user's scans. The user's ids get ``prefix`` so they can never collide with BUSI's;
    the result keeps BUSI's root, so its near-duplicate manifest and committed folds still apply."""
    cases = list(base.cases) + [dataclasses.replace(c, id=prefix + c.id) for c in own.cases]
    report = LoadReport(list(base.report.problems) + list(own.report.problems))
    return Busi(base.root, f"{base.layout}+{own.layout}", cases, report)


def load_training_data(data: str | os.PathLike | None = None, mode: str = "replace",
                       verify: bool | None = None) -> Busi:
    """What a training run trains and tests on.

    ``replace`` (the default): ``data`` alone — a BUSI copy, a labelled folder or a CSV manifest — or
    the BUSI copy found automatically when ``data`` is None. ``add``: the BUSI copy found automatically
    plus the scans in ``data`` (ids prefixed ``own:``)."""
    if mode not in DATA_MODES:
        raise ValueError(f"data_mode: '{mode}' is not one of {', '.join(DATA_MODES)}")
    if mode == "replace" or data is None:
        return load_dataset(data, verify=verify)
    return combine(load_busi(None, verify=verify), load_dataset(data, verify=verify))


def lesions_without_masks(data: Busi) -> list[str]:
    """Ids of benign/malignant scans with no mask file (mask-mode figures would be meaningless there)."""
    return [c.id for c in data.cases if c.label != "normal" and not c.mask_paths]


def patient_clusters(data: Busi, ids: list[str]) -> np.ndarray | None:
    """Patient of each id, for a patient-clustered bootstrap; None unless every scan names one."""
    by_id = {c.id: c.patient for c in data.cases}
    patients = [by_id.get(i) for i in ids]
    return np.array(patients) if patients and all(patients) else None
