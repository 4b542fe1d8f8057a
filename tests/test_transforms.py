"""The augmentation pipelines and the one normalisation: scan and mask move together, only the scan's
intensities change, and model input is normalised as the model's registry entry says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imagemasknet.data import transforms
from imagemasknet.data.transforms import augment_pair, build_augmentation, normalise
from imagemasknet.training.config import AUGMENTATIONS


def _square_scan() -> tuple[torch.Tensor, torch.Tensor]:
    """A dark speckled scan with one bright square "lesion", and that square as its mask (1, 128, 128)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(10, 50, (1, 128, 128), dtype=torch.uint8, generator=generator)
    mask = torch.zeros((1, 128, 128), dtype=torch.uint8)
    image[:, 40:80, 50:100] = 230
    mask[:, 40:80, 50:100] = 1
    return image, mask


def test_the_training_config_offers_exactly_the_augmentations_that_are_built():
    assert AUGMENTATIONS == tuple(transforms.AUGMENTATIONS)
    with pytest.raises(ValueError, match="unknown augmentation 'mirror'; choose from none, flip"):
        build_augmentation("mirror", 128)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_geometric_draw_moves_the_scan_and_its_mask_together(name):
    torch.manual_seed(1)
    transform = build_augmentation(name, 128)
    image, mask = _square_scan()
    for _ in range(25):
        out_image, out_mask = augment_pair(transform, image, mask)
        assert out_image.shape == out_mask.shape == (1, 128, 128)
        assert set(out_mask.unique().tolist()) <= {0, 1}  # photometric changes never touch the mask
        if not out_mask.any():
            continue  # a crop that left the lesion out
        bright = out_image.float() > (out_image.float().max() + out_image.float().median()) / 2
        inside = bright[out_mask.bool()].float().mean()
        outside = bright[~out_mask.bool()].float().mean()
        assert inside > 0.6 and outside < 0.15, (name, float(inside), float(outside))


def test_the_strong_preset_changes_intensities_more_than_the_default():
    image, mask = _square_scan()
    spread = {}
    for name in ("ultrasound", "ultrasound-strong"):
        torch.manual_seed(2)
        transform = build_augmentation(name, 128)
        means = [augment_pair(transform, image, mask)[0].float()[:, 40:80, 50:100].mean().item() for _ in range(60)]
        spread[name] = np.std(means)
    assert spread["ultrasound-strong"] > spread["ultrasound"]


def test_unknown_augmentation_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="ultrasound-strong"):
        build_augmentation("sepia", 128)


def test_normalisation_per_image_and_unit():
    images = torch.stack([torch.full((1, 8, 8), 40, dtype=torch.uint8), torch.arange(64, dtype=torch.uint8).view(1, 8, 8)])
    unit = normalise(images, "unit", 3)
    assert unit.shape == (2, 3, 8, 8) and torch.allclose(unit[0], torch.full((3, 8, 8), 40 / 255))
    per_image = normalise(images, "per-image", 1)
    assert torch.allclose(per_image[1].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(per_image[1].std(), torch.tensor(1.0), atol=1e-5)
    assert torch.isfinite(per_image[0]).all()  # a flat scan does not divide by zero
    with pytest.raises(ValueError, match="normalisation"):
        normalise(images, "imagenet", 3)
