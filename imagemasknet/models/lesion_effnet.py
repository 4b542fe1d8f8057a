"""An ImageNet-pretrained EfficientNet-Lite encoder under the shared lesion decoder and pooling
(:mod:`.lesion_head`). The greyscale scan goes in as one channel; the RGB stem is summed over its
inputs, which is exactly the pretrained network's response to the scan copied into R, G and B.
"""
from __future__ import annotations

import torch
from torch import nn

from .efficientnet_lite import EfficientNetLite
from .lesion_head import LesionModel


class LesionEfficientNet(LesionModel):
    def __init__(self, image_size: int = 256, num_classes: int = 3, variant: str = "lite0", dropout: float = 0.3,
                 drop_path: float = 0.2, pretrained: bool = False):
        """``pretrained``: start from the ImageNet weights (training does); a model about to be filled
        from its own checkpoint does not need them."""
        super().__init__()
        del image_size  # fully convolutional
        self.encoder = EfficientNetLite(variant, in_channels=1, drop_path=drop_path)
        if pretrained:
            self.encoder.load_pretrained()
        self.build_lesion_head(self.encoder.channels, num_classes, dropout)

    def freeze_encoder(self, blocks: int) -> None:
        """Keep the stem and the first ``blocks`` blocks at their current weights. Their batch norm still
        adapts its statistics in training mode; the gradient stops below the first trained block, which
        spares the costliest part of the backward pass (the high-resolution depthwise convolutions)."""
        encoder = self.encoder
        if not 0 < blocks <= len(encoder._blocks):
            raise ValueError(f"frozen_blocks: {blocks} is not in 1..{len(encoder._blocks)} for EfficientNet-{encoder.variant.title()}")
        for module in (encoder._conv_stem, encoder._bn0, *encoder._blocks[:blocks]):
            module.requires_grad_(False)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(image)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.encoder.head_activation
