"""Training and inference pipelines on ``torchvision.transforms.v2``.

Scan and mask travel together as ``tv_tensors.Image`` and ``tv_tensors.Mask``: every geometric draw
is applied to both, photometric changes (gamma, contrast, speckle, blur, burnt-in marks) to the scan
only.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2


def _random_gamma(image: torch.Tensor) -> torch.Tensor:
    gamma = math.exp(torch.empty(1).uniform_(math.log(0.6), math.log(1.6)).item())
    return (image.float().div(255).pow(gamma) * 255).round().to(torch.uint8)


def _speckle(image: torch.Tensor) -> torch.Tensor:
    """Multiplicative noise, smoothed a little so it looks like speckle rather than pixel noise."""
    strength = torch.empty(1).uniform_(0.0, 0.35).item()
    noise = torch.randn((1, 1, image.shape[-2] // 2, image.shape[-1] // 2))
    noise = F.interpolate(noise, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (image.float() * (1 + strength * noise)).clamp(0, 255).to(torch.uint8)


def _resolution_loss(image: torch.Tensor) -> torch.Tensor:
    factor = torch.empty(1).uniform_(0.35, 0.9).item()
    size = image.shape[-2:]
    small = F.interpolate(image[None].float(), scale_factor=factor, mode="bilinear", antialias=True)
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)[0].clamp(0, 255).to(torch.uint8)


def _burnt_in_marks(image: torch.Tensor) -> torch.Tensor:
    """Caliper crosses, dotted lines and text-like blocks, so their presence stops predicting a class."""
    out = image.clone()
    height, width = out.shape[-2:]
    for _ in range(int(torch.randint(1, 5, (1,)))):
        y, x = int(torch.randint(8, height - 8, (1,))), int(torch.randint(8, width - 8, (1,)))
        value = int(torch.randint(180, 256, (1,)))
        kind = int(torch.randint(0, 3, (1,)))
        if kind == 0:  # "+" caliper
            arm = int(torch.randint(3, 7, (1,)))
            out[..., y, x - arm: x + arm + 1] = value
            out[..., y - arm: y + arm + 1, x] = value
        elif kind == 1:  # dotted measurement line
            length = int(torch.randint(20, max(21, width // 3), (1,)))
            columns = torch.arange(x, min(width, x + length), 4)
            out[..., y, columns] = value
        else:  # a block of "text"
            h, w = int(torch.randint(5, 10, (1,))), int(torch.randint(15, 50, (1,)))
            block = (torch.rand((h, min(w, width - x))) > 0.5).to(out.dtype) * value
            region = out[..., y: y + h, x: x + block.shape[1]]
            out[..., y: y + h, x: x + block.shape[1]] = torch.maximum(region, block[: region.shape[-2]])
    return out


def _depth_gain(image: torch.Tensor) -> torch.Tensor:
    """A smooth brightness ramp down the scan and a lateral fall-off: scanners and sonographers set the
    time-gain compensation and focus differently."""
    height, width = image.shape[-2:]
    depth = torch.linspace(-0.5, 0.5, height)[:, None]
    lateral = torch.linspace(-1, 1, width)[None, :] ** 2
    slope, falloff = torch.empty(2).uniform_(-0.9, 0.9).tolist()[0], torch.empty(1).uniform_(0, 0.35).item()
    gain = torch.exp(slope * depth) * (1 - falloff * lateral)
    return (image.float() * gain).clamp(0, 255).to(torch.uint8)


def _tone_curve(image: torch.Tensor) -> torch.Tensor:
    """A random monotone S-curve (or its inverse): other scanners map echo strength to grey differently."""
    midpoint = torch.empty(1).uniform_(0.3, 0.7).item()
    steepness = math.exp(torch.empty(1).uniform_(math.log(0.5), math.log(2.5)).item()) * 6
    x = image.float() / 255
    low, high = torch.sigmoid(torch.tensor(-steepness * midpoint)), torch.sigmoid(torch.tensor(steepness * (1 - midpoint)))
    curved = (torch.sigmoid(steepness * (x - midpoint)) - low) / (high - low)
    return (curved * 255).round().clamp(0, 255).to(torch.uint8)


def _strong_speckle(image: torch.Tensor) -> torch.Tensor:
    """Multiplicative noise of a random grain size, stronger than :func:`_speckle`."""
    strength = torch.empty(1).uniform_(0.1, 0.6).item()
    grain = int(torch.randint(2, 5, (1,)))
    noise = torch.randn((1, 1, max(1, image.shape[-2] // grain), max(1, image.shape[-1] // grain)))
    noise = F.interpolate(noise, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (image.float() * (1 + strength * noise)).clamp(0, 255).to(torch.uint8)


def _jpeg(image: torch.Tensor) -> torch.Tensor:
    """JPEG compression artefacts, as in scans exported from PACS or screenshots."""
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buffer, format="JPEG", quality=int(torch.randint(15, 80, (1,))))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return torch.from_numpy(np.array(decoded.convert("L")))[None]


def _sharpen(image: torch.Tensor) -> torch.Tensor:
    """Edge enhancement, which some scanners apply by default."""
    amount = torch.empty(1).uniform_(0.3, 1.5).item()
    blurred = F.avg_pool2d(image[None].float(), 3, 1, 1, count_include_pad=False)[0]
    return (image.float() + amount * (image.float() - blurred)).clamp(0, 255).to(torch.uint8)


def _scan_only(fn) -> v2.Lambda:
    return v2.Lambda(fn, tv_tensors.Image)


def _geometry(size: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(size, scale=(0.55, 1.0), ratio=(0.75, 1.33), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1), shear=5)], p=0.5),
    ]


def _ultrasound(size: int) -> v2.Transform:
    return v2.Compose([
        *_geometry(size),
        v2.RandomApply([_scan_only(_random_gamma)], p=0.5),
        v2.ColorJitter(brightness=0.3, contrast=0.35),
        v2.RandomApply([_scan_only(_speckle)], p=0.5),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        v2.RandomApply([_scan_only(_resolution_loss)], p=0.3),
        v2.RandomApply([_scan_only(_burnt_in_marks)], p=0.4),
    ])


def _ultrasound_strong(size: int) -> v2.Transform:
    """The same geometry; what changes between scanners, pushed further."""
    return v2.Compose([
        *_geometry(size),
        v2.RandomApply([_scan_only(_depth_gain)], p=0.5),
        v2.RandomApply([_scan_only(_tone_curve)], p=0.5),
        v2.RandomApply([_scan_only(_random_gamma)], p=0.5),
        v2.ColorJitter(brightness=0.4, contrast=0.5),
        v2.RandomApply([_scan_only(_strong_speckle)], p=0.6),
        v2.RandomChoice([v2.GaussianBlur(5, sigma=(0.1, 2.0)), _scan_only(_sharpen), v2.Identity()], p=[0.3, 0.2, 0.5]),
        v2.RandomApply([_scan_only(_resolution_loss)], p=0.3),
        v2.RandomApply([_scan_only(_jpeg)], p=0.3),
        v2.RandomApply([_scan_only(_burnt_in_marks)], p=0.4),
    ])


#: The augmentations by name (``TrainConfig.augment`` offers exactly these; tests/test_transforms.py pins it).
AUGMENTATIONS = {
    "none": lambda size: v2.Identity(),
    "flip": lambda size: v2.RandomHorizontalFlip(),
    "study-m2": lambda size: v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(10),
                                         v2.ColorJitter(brightness=0.2, contrast=0.2)]),
    "ultrasound": _ultrasound,
    "ultrasound-strong": _ultrasound_strong,
}


def build_augmentation(name: str, size: int) -> v2.Transform:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{name}'; choose from {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](size)


def augment_pair(transform: v2.Transform, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one draw of ``transform`` to a uint8 scan (1, S, S) and its mask (1, S, S) together."""
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)


def normalise(image: torch.Tensor, normalisation: str, channels: int) -> torch.Tensor:
    """uint8 scans (B, 1, S, S) → float model input (B, channels, S, S)."""
    x = image.float() / 255
    if normalisation == "per-image":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        x = (x - mean) / std
    elif normalisation != "unit":
        raise ValueError(f"unknown normalisation '{normalisation}'")
    return x.expand(-1, channels, -1, -1) if channels != 1 else x


def model_input(spec, images: torch.Tensor, masks: torch.Tensor | None, mode: str, device: torch.device):
    """uint8 scans and bool masks (B, 1, S, S), resized as :func:`imagemasknet.data.busi.resize_pair` does → the
    (image, mask) pair the model ``spec`` (a registry entry: its channels and normalisation) takes in ``mode``.
    Training, evaluation and the Predictor all go through here."""
    image = normalise(images.to(device), spec.normalisation, spec.image_channels)
    mask = masks.to(device).float() if mode == "mask" and masks is not None else None
    return image, mask
