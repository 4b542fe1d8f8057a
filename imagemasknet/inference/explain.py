"""Grad-CAM (captum's LayerGradCam) and the overlays the app and reports draw."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

# Anchor colours of a perceptually ordered map (dark blue → cyan → yellow → red), interpolated linearly.
_COLORMAPS = {
    "turbo": np.array([[48, 18, 59], [70, 131, 246], [27, 229, 181], [164, 252, 60], [251, 185, 56],
                       [228, 70, 10], [122, 4, 3]], dtype=np.float64),
    "inferno": np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64),
}


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block of the image path: the one a model names (``gradcam_layer``), else
    the study models' last image-branch convolution."""
    named = getattr(model, "gradcam_layer", None)
    if isinstance(named, nn.Module):
        return named
    convolutions = [m for m in model.image_branch if isinstance(m, nn.Conv2d)]
    return convolutions[-1]


def grad_cam(model: nn.Module, image: torch.Tensor, mask: torch.Tensor | None, target: int,
             size_hw: tuple[int, int]) -> np.ndarray:
    def logits(image_input: torch.Tensor, mask_input: torch.Tensor | None = None) -> torch.Tensor:
        return model(image_input, mask_input).logits

    cam = LayerGradCam(logits, gradcam_layer(model))
    image = image.clone().requires_grad_(True)
    attribution = cam.attribute(image, target=target, additional_forward_args=(mask,), relu_attributions=True)
    heat = F.interpolate(attribution.detach().float(), size=size_hw, mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp_min(0).cpu().numpy()
    peak = heat.max()
    return (heat / peak).astype(np.float32) if peak > 0 else np.zeros(size_hw, np.float32)


def without_marks(heat: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """A [0, 1] heat map with burnt-in marks (bool, the heat map's size) left out, scaled to peak at 1 again, so
    what is shown points at tissue."""
    kept = np.where(marks, 0.0, heat).astype(np.float32)
    peak = kept.max() if kept.size else 0.0
    return kept / peak if peak > 0 else kept


def mark_share(heat: np.ndarray, marks: np.ndarray) -> float:
    """The share of a heat map's mass that lies on burnt-in marks."""
    heat = np.asarray(heat, dtype=np.float32)  # a float16 map (the app caches them so) would overflow its sum
    total = float(heat.sum())
    return float(heat[marks].sum()) / total if total > 0 else 0.0


def colorize(values: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """Values in [0, 1] (H, W) → RGB uint8 (H, W, 3)."""
    anchors = _COLORMAPS[colormap]
    position = np.clip(values, 0, 1) * (len(anchors) - 1)
    low = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    fraction = (position - low)[..., None]
    return (anchors[low] * (1 - fraction) + anchors[low + 1] * fraction).round().astype(np.uint8)


def heatmap_overlay(rgb: np.ndarray, heat: np.ndarray, opacity: float = 0.45, colormap: str = "turbo") -> np.ndarray:
    """Blend a [0, 1] heat map over an RGB scan; opacity scales with the heat so cold areas stay clear."""
    alpha = (opacity * np.clip(heat, 0, 1))[..., None]
    return (rgb * (1 - alpha) + colorize(heat, colormap) * alpha).round().astype(np.uint8)


def mask_edges(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The boundary pixels of a bool mask, ``thickness`` pixels wide."""
    mask = mask.astype(bool)
    inner = mask.copy()
    for _ in range(thickness):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0), thickness: int = 2) -> np.ndarray:
    """Draw a mask's outline on an RGB image."""
    out = rgb.copy()
    thickness = max(1, round(thickness * max(mask.shape) / 512))
    out[mask_edges(mask, thickness)] = color
    return out


def fill(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0), opacity: float = 0.35) -> np.ndarray:
    """Tint a mask's area on an RGB image."""
    out = rgb.astype(np.float64)
    out[mask.astype(bool)] = out[mask.astype(bool)] * (1 - opacity) + np.array(color) * opacity
    return out.round().astype(np.uint8)
