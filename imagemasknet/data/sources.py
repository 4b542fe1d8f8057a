"""The named data sets a model trains on, and a training set pooled from several of them.

A training set is named by its sources joined by ``+`` (``busi+busbra-train``), optionally with a site's own
scans added (``TrainConfig.data`` with ``data_mode="add"``). Each case keeps its source, so folds are grouped
and stratified per source (:mod:`imagemasknet.data.splits`) and every figure can be given per source.
Ids stay unique across sources: BUSI's are its file stems (the committed folds and the near-duplicate
manifest name them so); every other source's carry its name as a prefix (``busbra-train:bus_0001-l``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from imagemasknet.core.paths import DATA_DIR, SHARED_DATASETS
from imagemasknet.data.busi import find_data_root, load_busi
from imagemasknet.data.dataset import Dataset, DatasetNotFoundError, pool
from imagemasknet.data.owndata import OWN_SOURCE, load_dataset, load_labelled_csv
from imagemasknet.data.verify import ensure_verified, skip_requested

DATA_MODES = ("replace", "add")
SEPARATOR = "+"


@dataclass(frozen=True)
class Source:
    """A data set the project bundles for training, with what a model card must say about it."""

    name: str
    short: str  # the data set's name in a sentence
    title: str  # one line: the data set, its hospital and scanners
    classes: tuple[str, ...]
    licence: str
    citation: str
    locate: Callable[[], Path]  # the folder to read (raises DatasetNotFoundError naming where it looked)
    read: Callable[[Path, bool | None], Dataset]
    id_prefix: str

    def load(self, verify: bool | None = None) -> Dataset:
        data = self.read(self.locate(), verify)
        cases = [replace(c, id=self.id_prefix + c.id, source=self.name) for c in data.cases]
        return Dataset(data.root, data.layout, cases, data.report)

    def card(self) -> dict:
        """What a model card records of a source it trained on."""
        return {"name": self.name, "title": self.title, "classes": list(self.classes), "licence": self.licence,
                "citation": self.citation}


def _busbra_train_folder() -> Path:
    places = [DATA_DIR / "busbra-train", SHARED_DATASETS / "busbra-train"]
    for place in places:
        if (place / "labels.csv").is_file():
            return place
    raise DatasetNotFoundError(
        f"BUS-BRA's training half not found (looked in {', '.join(map(str, places))}); the project ships it in "
        "data/busbra-train/ (restore it with `git checkout -- data/busbra-train`).")


def _read_busbra(folder: Path, verify: bool | None) -> Dataset:
    if verify if verify is not None else not skip_requested():
        ensure_verified(folder)
    return load_labelled_csv(folder / "labels.csv")


SOURCES: dict[str, Source] = {
    "busi": Source(
        name="busi",
        short="BUSI",
        title="BUSI: Baheya Hospital, Cairo, Egypt (LOGIQ E9); 780 scans, normal, benign and malignant",
        classes=("normal", "benign", "malignant"),
        licence="CC BY 4.0 (the data article); reported CC0 on Kaggle (data/busi/README.md)",
        citation="Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
                 "Data in Brief 28 (2020) 104863. doi:10.1016/j.dib.2019.104863",
        locate=find_data_root,
        read=lambda folder, verify: load_busi(folder, verify=verify),
        id_prefix="",
    ),
    "busbra-train": Source(
        name="busbra-train",
        short="BUS-BRA (training half)",
        title="BUS-BRA training half: INCA, Rio de Janeiro, Brazil (four scanners); 931 biopsy-proven lesion "
              "scans of 532 patients, benign and malignant",
        classes=("benign", "malignant"),
        licence="BUS-BRA licence (data/busbra-train/LICENSE.txt): redistribution allowed with the notice and "
                "the citation",
        citation="Gómez-Flores W, Gregorio-Calas MJ, Coelho de Albuquerque Pereira W. BUS-BRA: a breast "
                 "ultrasound dataset for assessing computer-aided diagnosis systems. Medical Physics 51(4) "
                 "(2024) 3110-3123. doi:10.1002/mp.16812",
        locate=_busbra_train_folder,
        read=_read_busbra,
        id_prefix="busbra-train:",
    ),
}


#: The training sets the Retrain form offers: both hospitals (the default model's), or one of them.
TRAINING_SETS = ("busi+busbra-train", "busi", "busbra-train")


def parse_sources(text: str) -> list[str]:
    """``busi+busbra-train`` → the names, each checked against :data:`SOURCES`."""
    names = [n.strip() for n in text.split(SEPARATOR) if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if not names or unknown:
        raise ValueError(f"sources: '{text}' must name one or more of {', '.join(SOURCES)} joined by "
                         f"'{SEPARATOR}'" + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    if len(set(names)) != len(names):
        raise ValueError(f"sources: '{text}' names a source twice")
    return names


def load_training_set(sources: str = "busi", data: str | os.PathLike | None = None, mode: str = "replace",
                      verify: bool | None = None) -> Dataset:
    """What a training run trains and tests on.

    Without ``data``: the named sources, pooled. With ``data`` (a BUSI copy, a labelled folder or a CSV
    manifest) and ``mode="replace"`` (the default): that data alone; with ``mode="add"``: the named sources
    plus that data as the source ``own`` (its ids prefixed ``own:``)."""
    if mode not in DATA_MODES:
        raise ValueError(f"data_mode: '{mode}' is not one of {', '.join(DATA_MODES)}")
    if data is not None and mode == "replace":
        return load_dataset(data, verify=verify)
    parts = [SOURCES[name].load(verify) for name in parse_sources(sources)]
    if data is not None:
        own = load_dataset(data, verify=verify)
        parts.append(Dataset(own.root, own.layout, [replace(c, id=f"{OWN_SOURCE}:{c.id}", source=OWN_SOURCE)
                                                    for c in own.cases], own.report))
    return pool(parts)


def training_set_of(config: dict, verify: bool | None = None) -> Dataset:
    """The data a run trained on, from its ``config.json`` (runs from before sources existed trained on BUSI)."""
    return load_training_set(config.get("sources", "busi"), config.get("data"), config.get("data_mode", "replace"),
                             verify=verify)
