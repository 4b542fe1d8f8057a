"""What the lesion models share: a light top-down decoder that predicts the lesion at 1/4 resolution,
and a classifier that pools the deepest features globally and over the lesion (the given mask in mask
mode, the predicted lesion otherwise). An empty given mask ("no lesion marked") pools to zero, which
the head learns to read as a normal scan.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelOutput

DECODER_CHANNELS = 32


def texture_statistics(features: list[torch.Tensor]) -> torch.Tensor:
    """(B, D): mean and standard deviation over space of each channel of every map but the deepest: what
    :mod:`imagemasknet.inference.familiarity` measures a scan's familiarity on."""
    return torch.cat([torch.cat([f.float().mean((2, 3)), f.float().std((2, 3))], 1) for f in features[:-1]], 1)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LesionModel(nn.Module):
    """A subclass builds an encoder, then calls :meth:`build_lesion_head` with the channels of the
    features its :meth:`encode` returns (strides 4, 8, 16, 32)."""

    def build_lesion_head(self, channels: list[int], num_classes: int, dropout: float) -> None:
        self.laterals = nn.ModuleList([nn.Conv2d(c, DECODER_CHANNELS, 1) for c in channels])
        self.segment = nn.Sequential(conv_bn_relu(DECODER_CHANNELS, DECODER_CHANNELS), nn.Conv2d(DECODER_CHANNELS, 1, 1))
        self.classify = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels[-1], num_classes))

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None,
                mask_given: torch.Tensor | None = None) -> ModelOutput:
        """``mask_given`` (B,) bool picks, per scan, the given mask (True) or the predicted lesion
        (False) for pooling; by default every scan uses the given mask when there is one."""
        features = self.encode(image)
        top = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            top = F.interpolate(top, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        lesion_logits = F.interpolate(self.segment(top), size=image.shape[-2:], mode="bilinear", align_corners=False)

        deepest = features[-1]
        # Detached: the segmentation head learns from the masks, not from the classification loss.
        focus = torch.sigmoid(lesion_logits).detach()
        if mask is not None:
            use_given = torch.ones(len(mask), dtype=torch.bool, device=mask.device) if mask_given is None else mask_given
            focus = torch.where(use_given[:, None, None, None], mask.to(focus.dtype), focus)
        focus = F.adaptive_avg_pool2d(focus, deepest.shape[-2:])
        lesion_pool = (deepest * focus).sum((2, 3)) / (focus.sum((2, 3)) + 1e-3)
        pooled = torch.cat([deepest.mean((2, 3)), lesion_pool], dim=1)
        texture = None if self.training else texture_statistics(features).detach()
        return ModelOutput(self.classify(pooled), lesion_logits, texture)
