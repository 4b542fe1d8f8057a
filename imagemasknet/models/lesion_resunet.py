"""A compact residual encoder, trained from scratch, under the shared lesion decoder and pooling
(:mod:`.lesion_head`). The encoder sees only the greyscale scan, so its features (and its batch-norm
statistics) are the same in both modes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lesion_head import LesionModel, conv_bn_relu


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class LesionResUNet(LesionModel):
    def __init__(self, image_size: int = 256, num_classes: int = 3, width: int = 32, dropout: float = 0.3):
        super().__init__()
        del image_size  # fully convolutional: any size divisible by 64 works
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.stem = nn.Sequential(conv_bn_relu(1, 24, 2), conv_bn_relu(24, width, 2))
        self.stages = nn.ModuleList([
            ResidualBlock(width, widths[0]),
            ResidualBlock(widths[0], widths[1], 2),
            ResidualBlock(widths[1], widths[2], 2),
            ResidualBlock(widths[2], widths[3], 2),
        ])
        self.build_lesion_head(list(widths), num_classes, dropout)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1]
