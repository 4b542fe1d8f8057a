"""The Retrain page's form, built from :class:`~imagemasknet.training.config.TrainConfig` and its field metadata,
and the server-side check of what a browser sent back."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from imagemasknet.data.sources import TRAINING_SETS
from imagemasknet.models import list_models
from imagemasknet.training.config import PRESETS, TrainConfig

#: TrainConfig fields the form never sets: paths on the server (and the weight only a soft-target table gives
#: meaning) and machine settings.
SERVER_ONLY = ("data", "data_mode", "out_dir", "split_file", "soft_targets", "distill_weight", "device", "num_workers")


@dataclass(frozen=True)
class FormField:
    """How the Retrain form shows one TrainConfig field (all from the dataclass and its metadata)."""

    name: str
    kind: str  # int | float | bool | choice | fold | limit
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple = ()

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def form_fields() -> list[FormField]:
    """One entry per TrainConfig field the form sets, in the dataclass's order."""
    out = []
    for f in fields(TrainConfig):
        if f.name in SERVER_ONLY:
            continue
        meta, kind_name = f.metadata, str(f.type)
        common = dict(name=f.name, default=f.default, help=meta.get("help", ""))
        if f.name == "arch":
            out.append(FormField(kind="choice", choices=tuple(list_models()), **common))
        elif f.name == "sources":
            out.append(FormField(kind="choice", choices=TRAINING_SETS, **common))
        elif f.name == "fold":
            out.append(FormField(kind="fold", choices=(None, 0, 1, 2, 3, 4), **common))
        elif f.name == "limit":
            out.append(FormField(kind="limit", min=meta.get("min", 1), max=meta.get("max"), **common))
        elif "choices" in meta:
            out.append(FormField(kind="choice", choices=tuple(meta["choices"]), **common))
        elif kind_name in ("bool", "<class 'bool'>"):
            out.append(FormField(kind="bool", **common))
        elif kind_name in ("int", "<class 'int'>"):
            out.append(FormField(kind="int", min=meta.get("min", 0), max=meta.get("max"), **common))
        elif kind_name in ("float", "<class 'float'>"):
            out.append(FormField(kind="float", min=meta.get("min"), max=meta.get("max"), **common))
        else:
            raise TypeError(f"TrainConfig.{f.name} ({kind_name}) has no form widget")
    return out


def form_defaults(preset: str | None = None) -> dict[str, Any]:
    """The form's starting values: TrainConfig's defaults, with a preset's values over them."""
    values = {f.name: f.default for f in form_fields()}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
        values.update({k: v for k, v in PRESETS[preset].items() if k in values})
    return values


def _coerce(field: FormField, value: Any) -> Any:
    name = field.name
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if field.kind in ("fold", "limit"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "all", "all data")):
            return None
        value = _coerce(FormField(name, "int", None, ""), value)
        if field.kind == "limit" and value < 1:
            raise ValueError(f"limit: {value} is below the minimum 1 (leave it empty to use every scan)")
        return value
    if field.kind == "int":
        return int(_number(name, value, whole=True))
    if field.kind == "float":
        return _number(name, value, whole=False)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected one of {', '.join(map(str, field.choices))}, got {value!r}")
    return value


def config_from_form(values: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """The server-side check of what the form sent: only form fields, each coerced to its type and
    checked by :meth:`TrainConfig.validated` (bounds, choices, registered model). Raises ValueError."""
    by_name = {f.name: f for f in form_fields()}
    refused = sorted(set(values) - set(by_name))
    if refused:
        raise ValueError(f"not settable from the form: {', '.join(refused)}")
    merged = form_defaults(preset)
    merged.update({name: _coerce(by_name[name], value) for name, value in values.items()})
    return TrainConfig(**merged).validated()


def _number(name: str, value: Any, whole: bool) -> float:
    """``value`` as a finite number (``whole``: with no fractional part); ValueError naming the field otherwise."""
    expected = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}: expected {expected}, got {value!r}") from None
    if whole and (not math.isfinite(number) or number != int(number)):
        raise ValueError(f"{name}: expected a whole number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name}: {value!r} is not a finite number")
    return number
