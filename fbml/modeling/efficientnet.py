"""EfficientNet-Lite in plain torch: timm's ``tf_efficientnet_liteN`` (N = 0, 1, 2), module for module.

The TensorFlow flavour the ImageNet weights were trained in: "same" padding (a stride-2 convolution pads
more on the right and bottom, by an amount that depends on the input's size), ReLU6, no
squeeze-excitation, batch norm with TensorFlow's eps (1e-3) and PyTorch's momentum (0.1). Submodules
and state-dict keys are timm's (``conv_stem``, ``bn1``, ``blocks.S.B.conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``,
``conv_head``, ``bn2``, ``global_pool``, ``classifier``), so weights in timm's key style load as they
are. A stem, seven stages of blocks, a 1x1 head convolution to 1280 channels, average pooling and a
linear classifier; the variants widen the blocks and deepen the middle stages.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
"""TensorFlow's batch-norm epsilon (timm's ``BN_EPS_TF_DEFAULT``); the momentum stays PyTorch's 0.1."""
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
CHANNEL_DIVISOR = 8


@attrs.frozen
class Stage:
    """Blocks of one kind: how many, the depthwise kernel, the first block's stride, the expansion, the output width."""

    repeats: int
    kernel: int
    stride: int
    expansion: int
    channels: int


STAGES = (
    Stage(1, 3, 1, 1, 16),  # depthwise-separable blocks (no expansion)
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


@attrs.frozen
class Variant:
    """How a variant scales Lite0: width (channels) and depth (repeats) multipliers, and its input side."""

    width: float
    depth: float
    size: int


VARIANTS = (Variant(1.0, 1.0, 224), Variant(1.0, 1.1, 240), Variant(1.1, 1.2, 260))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of a side of ``size`` pixels, for ``kernel >= stride``: (before, after),
    the odd pixel after. Plain arithmetic, so that an ONNX trace keeps it a function of the input's size."""
    total = kernel - stride + (-size) % stride
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's "same" padding, computed from each input's size (``kernel >= stride``)."""

    def forward(self, images: Tensor) -> Tensor:
        (kernel_height, kernel_width), (stride_height, stride_width) = self.kernel_size, self.stride
        top, bottom = same_padding(images.shape[-2], kernel_height, stride_height)
        left, right = same_padding(images.shape[-1], kernel_width, stride_width)
        return super().forward(F.pad(images, (left, right, top, bottom)))


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution with "same" padding: fixed and symmetric at stride 1 (odd kernels), else per input."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False)
    return SameConv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """Batch norm (TensorFlow's eps), then ReLU6 (``act``, an identity where a block projects)."""

    def __init__(self, channels: int, *, activate: bool = True) -> None:
        super().__init__(channels, eps=BN_EPS)
        self.act: nn.Module = nn.ReLU6(inplace=True) if activate else nn.Identity()

    def forward(self, features: Tensor) -> Tensor:
        activated: Tensor = self.act(super().forward(features))
        return activated


class DepthwiseSeparableConv(nn.Module):
    """Depthwise convolution, then a 1x1 projection; the input added back when the shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = BatchNormAct2d(in_channels)
        self.conv_pw = conv(in_channels, out_channels, 1)
        self.bn2 = BatchNormAct2d(out_channels, activate=False)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, features: Tensor) -> Tensor:
        projected: Tensor = self.bn2(self.conv_pw(self.bn1(self.conv_dw(features))))
        return projected + features if self.has_skip else projected


class InvertedResidual(nn.Module):
    """A 1x1 expansion, a depthwise convolution, a 1x1 projection; the input added back when the shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        middle = in_channels * expansion
        self.conv_pw = conv(in_channels, middle, 1)
        self.bn1 = BatchNormAct2d(middle)
        self.conv_dw = conv(middle, middle, kernel, stride, groups=middle)
        self.bn2 = BatchNormAct2d(middle)
        self.conv_pwl = conv(middle, out_channels, 1)
        self.bn3 = BatchNormAct2d(out_channels, activate=False)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, features: Tensor) -> Tensor:
        expanded = self.bn2(self.conv_dw(self.bn1(self.conv_pw(features))))
        projected: Tensor = self.bn3(self.conv_pwl(expanded))
        return projected + features if self.has_skip else projected


class GlobalPool(nn.Module):
    """The mean of each channel: (B, C, H, W) -> (B, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, features: Tensor) -> Tensor:
        pooled: Tensor = self.flatten(self.pool(features))
        return pooled


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8, never more than 10% below it (timm's ``round_channels``)."""
    target = channels * width
    rounded = max(CHANNEL_DIVISOR, int(target + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    return rounded + CHANNEL_DIVISOR if rounded < 0.9 * target else rounded


def _scaled_repeats(index: int, stage: Stage, depth: float) -> int:
    """The stage's repeats times ``depth``, rounded up; the first and the last stage keep theirs."""
    return stage.repeats if index in (0, len(STAGES) - 1) else math.ceil(stage.repeats * depth)


def _stage_blocks(in_channels: int, stage: Stage, repeats: int, width: float) -> Iterator[nn.Module]:
    out_channels = scaled_channels(stage.channels, width)
    for block in range(repeats):
        channels, stride = (in_channels, stage.stride) if block == 0 else (out_channels, 1)
        if stage.expansion == 1:
            yield DepthwiseSeparableConv(channels, out_channels, stage.kernel, stride)
        else:
            yield InvertedResidual(channels, out_channels, stage.kernel, stride, stage.expansion)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``variant`` (0, 1 or 2) with a ``num_classes``-way classifier; random weights
    initialised as TensorFlow's reference does (timm's ``_init_weight_goog``)."""

    def __init__(self, variant: int = 0, num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        scale = VARIANTS[variant]
        self.conv_stem = conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = BatchNormAct2d(STEM_CHANNELS)
        stages, channels = [], STEM_CHANNELS
        for index, stage in enumerate(STAGES):
            stages.append(nn.Sequential(*_stage_blocks(channels, stage, _scaled_repeats(index, stage, scale.depth), scale.width)))
            channels = scaled_channels(stage.channels, scale.width)
        self.blocks = nn.Sequential(*stages)
        self.conv_head = conv(channels, HEAD_CHANNELS, 1)
        self.bn2 = BatchNormAct2d(HEAD_CHANNELS)
        self.global_pool = GlobalPool()
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        for module in self.modules():
            _initialise(module)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits (B, num_classes) of normalised images (B, 3, H, W)."""
        features = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(images)))))
        logits: Tensor = self.classifier(self.global_pool(features))
        return logits


def _initialise(module: nn.Module) -> None:
    """Convolutions ~ N(0, 2 / fan-out) (fan-out per group), batch norms the identity, the classifier
    ~ U(+-1 / sqrt(classes)) with zero bias."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        bound = 1.0 / math.sqrt(module.out_features)
        nn.init.uniform_(module.weight, -bound, bound)
        nn.init.zeros_(module.bias)
