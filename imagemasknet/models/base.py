from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutput(NamedTuple):
    """Class logits (B, 3) and, for models that segment, lesion logits (B, 1, S, S); in eval mode the
    lesion models add the texture statistics the familiarity score reads (B, D)."""

    logits: torch.Tensor
    lesion_logits: torch.Tensor | None = None
    texture: torch.Tensor | None = None
