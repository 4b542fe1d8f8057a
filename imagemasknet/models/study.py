"""The study's two models, layer for layer as the study describes them."""
from __future__ import annotations

import torch
from torch import nn

from .base import ModelOutput


def _conv_block(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]


class ImageMaskNet(nn.Module):
    """Model 1: two conv branches (image, mask), flattened and concatenated, then two linear layers."""

    def __init__(self, image_size: int = 256, num_classes: int = 3):
        super().__init__()
        self.image_branch = nn.Sequential(*_conv_block(3, 32, False), *_conv_block(32, 64, False))
        self.mask_branch = nn.Sequential(*_conv_block(1, 32, False), *_conv_block(32, 64, False))
        features = 2 * 64 * (image_size // 4) ** 2
        self.head = nn.Sequential(nn.Linear(features, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        if mask is None:
            raise ValueError("imagemasknet needs a mask")
        joined = torch.cat([self.image_branch(image).flatten(1), self.mask_branch(mask).flatten(1)], dim=1)
        return ModelOutput(self.head(joined))


class ImageMaskNet2(nn.Module):
    """Model 2: an image-only head, and a combined image+mask head used when a mask is given."""

    def __init__(self, image_size: int = 256, num_classes: int = 3):
        super().__init__()
        self.image_branch = nn.Sequential(
            *_conv_block(3, 32, True), *_conv_block(32, 64, True), *_conv_block(64, 128, True)
        )
        self.mask_branch = nn.Sequential(*_conv_block(1, 32, True), *_conv_block(32, 64, True), nn.Dropout(0.5))
        image_features = 128 * (image_size // 8) ** 2
        mask_features = 64 * (image_size // 4) ** 2
        self.image_head = nn.Sequential(nn.Linear(image_features, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes))
        self.combined_head = nn.Sequential(
            nn.Linear(image_features + mask_features, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)
        )

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        image_features = self.image_branch(image).flatten(1)
        if mask is None:
            return ModelOutput(self.image_head(image_features))
        joined = torch.cat([image_features, self.mask_branch(mask).flatten(1)], dim=1)
        return ModelOutput(self.combined_head(joined))
