"""The model registry, parameter counts, output shapes in every mode, and mask handling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imagemasknet.data.transforms import model_input
from imagemasknet.models import build_model, count_parameters, get_spec, list_models

SIZE = 64
BATCH = 2


def scans(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scans and bool masks (B, 1, S, S) like the data loader gives."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    masks = torch.zeros((BATCH, 1, SIZE, SIZE), dtype=torch.bool)
    masks[0, :, 20:40, 16:44] = True
    masks[1, :, 8:24, 30:60] = True
    return images, masks


def built(name: str) -> torch.nn.Module:
    """Pretrained encoders start from their ImageNet weights, as in training (a randomly initialised
    16-block encoder in eval mode gives almost constant features)."""
    torch.manual_seed(0)
    return build_model(name, pretrained=True, image_size=SIZE).eval()


def test_registry_lists_the_three_models():
    names = list_models()
    assert {"imagemasknet", "imagemasknet2", "lesion-resunet"} <= set(names)
    assert len(names) == len(set(names))
    with pytest.raises(KeyError, match="registered"):
        get_spec("no-such-model")
    assert get_spec("imagemasknet").modes == ("mask",)
    assert get_spec("imagemasknet2").modes == ("image", "mask")
    assert get_spec("lesion-resunet").modes == ("image", "mask")


@pytest.mark.parametrize("name, expected", [("imagemasknet", 67_147_587), ("imagemasknet2", 134_332_486)])
def test_study_model_parameter_counts_at_256(name, expected):
    assert count_parameters(build_model(name, image_size=256)) == expected


@pytest.mark.parametrize("name", list_models())
def test_output_shapes_in_every_mode(name):
    spec = get_spec(name)
    model = built(name)
    images, masks = scans()
    for mode in spec.modes:
        image, mask = model_input(spec, images, masks, mode, torch.device("cpu"))
        assert image.shape == (BATCH, spec.image_channels, SIZE, SIZE)
        assert (mask is None) == (mode == "image")
        with torch.no_grad():
            output = model(image, mask)
        assert output.logits.shape == (BATCH, 3), (name, mode)
        assert torch.isfinite(output.logits).all()
        if spec.predicts_lesion:
            assert output.lesion_logits is not None
            assert output.lesion_logits.shape == (BATCH, 1, SIZE, SIZE), (name, mode)
        else:
            assert output.lesion_logits is None


def test_lesion_resunet_lesion_logits_shape_at_256():
    model = built("lesion-resunet")  # fully convolutional: the same weights at another size
    with torch.no_grad():
        output = model(torch.randn(1, 1, 256, 256))
    assert output.logits.shape == (1, 3)
    assert output.lesion_logits.shape == (1, 1, 256, 256)


def test_imagemasknet_without_mask_raises():
    model = built("imagemasknet")
    images, _ = scans()
    image, mask = model_input(get_spec("imagemasknet"), images, None, "image", torch.device("cpu"))
    assert mask is None
    with pytest.raises(ValueError, match="needs a mask"):
        model(image)


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).accepts_mask])
def test_mask_mode_uses_the_mask(name):
    spec = get_spec(name)
    model = built(name)
    images, masks = scans()
    image, mask = model_input(spec, images, masks, "mask", torch.device("cpu"))
    with torch.no_grad():
        with_mask = model(image, mask).logits
        other_mask = model(image, torch.roll(mask, shifts=17, dims=-1)).logits
        again = model(image, mask).logits
    assert torch.equal(with_mask, again)  # eval mode is deterministic
    assert not torch.allclose(with_mask, other_mask), f"{name} ignores the mask it is given"


def test_lesion_resunet_zero_mask_differs_from_predicted_lesion_pooling():
    spec = get_spec("lesion-resunet")
    model = built("lesion-resunet")
    images, _ = scans()
    image, _ = model_input(spec, images, None, "image", torch.device("cpu"))
    zero = torch.zeros((BATCH, 1, SIZE, SIZE))
    with torch.no_grad():
        predicted = model(image)
        given_zero = model(image, zero)
    # The lesion map comes from the image only, whatever the mask.
    assert torch.equal(predicted.lesion_logits, given_zero.lesion_logits)
    assert not torch.allclose(predicted.logits, given_zero.logits, atol=1e-4)


def test_lesion_resunet_mask_given_chooses_per_scan():
    spec = get_spec("lesion-resunet")
    assert spec.per_scan_mask_choice
    model = built("lesion-resunet")
    images, masks = scans()
    image, mask = model_input(spec, images, masks, "mask", torch.device("cpu"))
    with torch.no_grad():
        given = model(image, mask).logits
        predicted = model(image).logits
        mixed = model(image, mask, mask_given=torch.tensor([True, False])).logits
        all_given = model(image, mask, mask_given=torch.tensor([True, True])).logits
    assert not torch.allclose(given, predicted, atol=1e-4)
    torch.testing.assert_close(mixed[0], given[0])
    torch.testing.assert_close(mixed[1], predicted[1])
    torch.testing.assert_close(all_given, given)


def test_half_storage_halves_the_file_and_predicts_like_float32(tmp_path, busi_root):
    """Shipped weights are stored in float16 and cast back to float32 on loading: class probabilities on
    real scans stay within 0.01 and the lesion map within 1 % of its pixels of the float32 weights."""
    from safetensors import safe_open

    from imagemasknet.data.decode import read_grey, resize_pair
    from imagemasknet.models.weights import load_weights, save_weights

    spec = get_spec("lesion-effnet-lite0")
    model = build_model(spec.name, pretrained=True).eval()
    save_weights(tmp_path / "full.safetensors", model)
    save_weights(tmp_path / "half.safetensors", model, half=True)
    assert (tmp_path / "half.safetensors").stat().st_size < 0.55 * (tmp_path / "full.safetensors").stat().st_size
    with safe_open(str(tmp_path / "half.safetensors"), "pt") as stored:
        assert stored.get_tensor("encoder._blocks.4._depthwise_conv.weight").dtype == torch.float16
        assert stored.get_tensor("encoder._blocks.4._bn1.running_var").dtype == torch.float32
    restored = load_weights(tmp_path / "half.safetensors", build_model(spec.name)).eval()
    assert restored.encoder._blocks[4]._depthwise_conv.weight.dtype == torch.float32
    images = []
    for name in ("benign (3)", "malignant (5)", "normal (7)"):
        label = name.split()[0]
        image = read_grey(busi_root / label / "images" / f"{name}.png")
        images.append(resize_pair(image, np.zeros_like(image, dtype=bool), 256)[0])
    x, _ = model_input(spec, torch.from_numpy(np.stack(images))[:, None], None, "image", torch.device("cpu"))
    with torch.no_grad():
        full, half = model(x), restored(x)
    assert (full.logits.softmax(1) - half.logits.softmax(1)).abs().max() < 0.01
    assert ((full.lesion_logits > 0) != (half.lesion_logits > 0)).float().mean() < 0.01
