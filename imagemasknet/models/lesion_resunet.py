"""A compact residual encoder with a lesion-segmentation decoder and lesion-focused classification.

The encoder sees only the greyscale scan, so its features (and its batch-norm statistics) are the same
in both modes. The decoder predicts the lesion at 1/4 resolution; the classifier pools the deepest
features globally and over the lesion: over the given mask in mask mode, over the predicted lesion
otherwise. One set of weights serves both modes; an empty given mask ("no lesion marked") pools to
zero, which the head learns to read as a normal scan.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelOutput


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class LesionResUNet(nn.Module):
    def __init__(self, image_size: int = 256, num_classes: int = 3, width: int = 32, dropout: float = 0.3):
        super().__init__()
        del image_size  # fully convolutional: any size divisible by 64 works
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.stem = nn.Sequential(_conv_bn_relu(1, 24, 2), _conv_bn_relu(24, width, 2))
        self.stages = nn.ModuleList([
            ResidualBlock(width, widths[0]),
            ResidualBlock(widths[0], widths[1], 2),
            ResidualBlock(widths[1], widths[2], 2),
            ResidualBlock(widths[2], widths[3], 2),
        ])
        decoder = 32
        self.laterals = nn.ModuleList([nn.Conv2d(w, decoder, 1) for w in widths])
        self.segment = nn.Sequential(_conv_bn_relu(decoder, decoder), nn.Conv2d(decoder, 1, 1))
        self.classify = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * widths[3], num_classes))

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None,
                mask_given: torch.Tensor | None = None) -> ModelOutput:
        """``mask_given`` (B,) bool picks, per scan, the given mask (True) or the predicted lesion
        (False) for pooling; by default every scan uses the given mask when there is one."""
        size = image.shape[-2:]
        x = self.stem(image)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        top = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            top = F.interpolate(top, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        lesion_logits = F.interpolate(self.segment(top), size=size, mode="bilinear", align_corners=False)

        deepest = features[-1]
        # Detached: the segmentation head learns from the masks, not from the classification loss.
        focus = torch.sigmoid(lesion_logits).detach()
        if mask is not None:
            use_given = torch.ones(len(mask), dtype=torch.bool, device=mask.device) if mask_given is None else mask_given
            focus = torch.where(use_given[:, None, None, None], mask, focus)
        focus = F.adaptive_avg_pool2d(focus, deepest.shape[-2:])
        lesion_pool = (deepest * focus).sum((2, 3)) / (focus.sum((2, 3)) + 1e-3)
        pooled = torch.cat([deepest.mean((2, 3)), lesion_pool], dim=1)
        return ModelOutput(self.classify(pooled), lesion_logits)
