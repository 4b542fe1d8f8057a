"""Model registry: build any architecture by name, and say what inputs it takes.

Every model is called as ``model(image, mask=None)`` with ``image`` a float tensor (B, C, S, S) and
``mask`` a float tensor (B, 1, S, S) of 0/1, and returns a :class:`ModelOutput`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from .base import ModelOutput
from .efficientnet_lite import PRETRAINED, PretrainedWeights, PretrainedWeightsError
from .lesion_effnet import LesionEfficientNet
from .lesion_resunet import LesionResUNet
from .study import ImageMaskNet, ImageMaskNet2


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    description: str
    accepts_mask: bool
    needs_mask: bool
    predicts_lesion: bool
    image_channels: int  # 3: the study's RGB-replicated input; 1: greyscale
    normalisation: str  # "unit": pixels / 255; "per-image": zero mean, unit variance per scan
    per_scan_mask_choice: bool = False  # forward takes mask_given=(B,) bool: modes mix inside a batch
    pretrained: PretrainedWeights | None = None  # training starts from these weights (build(pretrained=True))

    @property
    def modes(self) -> tuple[str, ...]:
        if self.needs_mask:
            return ("mask",)
        return ("image", "mask") if self.accepts_mask else ("image",)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"model '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec


register(ModelSpec(
    "imagemasknet", ImageMaskNet,
    "Study Model 1: image branch + mask branch, concatenated; needs a mask.",
    accepts_mask=True, needs_mask=True, predicts_lesion=False, image_channels=3, normalisation="unit",
))
register(ModelSpec(
    "imagemasknet2", ImageMaskNet2,
    "Study Model 2: image-only head, and a combined head used when a mask is given.",
    accepts_mask=True, needs_mask=False, predicts_lesion=False, image_channels=3, normalisation="unit",
))
register(ModelSpec(
    "lesion-resunet", LesionResUNet,
    "Compact residual encoder with a lesion-segmentation head; pools features over the predicted "
    "(or given) lesion. Image-only at inference, mask-aware when a mask is given.",
    accepts_mask=True, needs_mask=False, predicts_lesion=True, image_channels=1, normalisation="per-image",
    per_scan_mask_choice=True,
))

for _variant, _note in (("lite0", "the shipped default"), ("lite1", "deeper"), ("lite2", "deeper and wider")):
    register(ModelSpec(
        f"lesion-effnet-{_variant}", partial(LesionEfficientNet, variant=_variant),
        f"ImageNet-pretrained EfficientNet-{_variant.title()} encoder ({_note}) under the same lesion decoder and "
        "lesion pooling as lesion-resunet. Image-only at inference, mask-aware when a mask is given.",
        accepts_mask=True, needs_mask=False, predicts_lesion=True, image_channels=1, normalisation="per-image",
        per_scan_mask_choice=True, pretrained=PRETRAINED[_variant],
    ))

# The model the app and the CLI use unless told otherwise: the pretrained encoder, ahead of lesion-resunet on
# every BUSI cross-validation figure (README, "Results").
DEFAULT_MODEL = "lesion-effnet-lite0"


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; registered: {', '.join(_REGISTRY)}") from None


def build_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``pretrained``: start a model that has them from its ImageNet weights (training does; a model
    about to be filled from its own checkpoint needs no package)."""
    spec = get_spec(name)
    if pretrained and spec.pretrained is not None:
        kwargs["pretrained"] = True
    return spec.build(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ModelOutput", "ModelSpec", "DEFAULT_MODEL", "PretrainedWeights", "PretrainedWeightsError", "build_model",
    "count_parameters", "get_spec", "list_models", "register",
]
