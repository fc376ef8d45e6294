"""Pre-activation ("v2") ResNets (He et al. 2016b, "Identity Mappings in Deep Residual Networks").

Two families:

* CIFAR ResNet-164 / ResNet-1001: depth 9n+2, BN-ReLU-conv bottlenecks with outputs
  64/128/256 on 32/16/8 maps, a final BN-ReLU before pooling. As in the authors' code
  (KaimingHe/resnet-1k-layers) the convs have no bias, a block that changes shape shares
  its BN-ReLU between the residual branch and a 1x1 projection shortcut, and the stride sits
  in the first 1x1 conv (``stride_in="3x3"`` moves it). Parameters for 10 classes:
  ResNet-164 1,703,258 (paper: 1.7M), ResNet-1001 10,327,706 (paper: 10.2M, which matches
  its convs and classifier alone, 10,178,490, without the BN scales and shifts).

* ``resnet50v2`` / ``resnet101v2`` / ``resnet152v2``, layer for layer Keras applications'
  ResNetV2, so Keras weights convert and give the same outputs. Keras's choices, kept:
  biases in the stem conv, the shortcut conv and the last 1x1 conv of a block (not in the
  two convs followed by BN); BN epsilon 1.001e-5 and momentum 0.99 (torch's 0.01); the
  stride in the *last* block of stages conv2..conv4 with a 1x1 max-pool shortcut there, a
  conv shortcut in the first block of each stage; explicit zero padding (Keras's
  ZeroPadding2D, symmetric here) before the 7x7 stem conv, the stem max-pool and every
  3x3 conv. The stem max-pool pools over *zero* padding, not -inf, as Keras does.

  Module names map onto Keras layer names by one rule (used by ``weights.keras_weights``):
  ``conv1_conv`` -> ``conv1``; ``conv3_block2_preact_bn`` -> ``conv3.block2.preact_bn``;
  ``conv3_block2_{k}_conv`` / ``_{k}_bn`` / ``_{k}_pad`` -> ``conv3.block2.conv{k}`` /
  ``bn{k}`` / ``pad{k}`` (k = 0 is the shortcut conv); ``post_bn`` -> ``post_bn``;
  ``predictions`` -> ``fc``.

  Keras's ``include_top=False`` is ``num_classes=0``: ``fc`` is then an identity and the
  model returns pooled features. Parameters plus BN moving statistics equal Keras's
  "Total params" with and without the top.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ReslabError
from .base import StagedModel, init_he
from .blocks import make_stage
from .imagenet import check_stride_in
from .registry import CIFAR_MAX_SIDE, register_model, register_pattern

# ---------------------------------------------------------------------------------------
# CIFAR ResNet-164 / ResNet-1001
# ---------------------------------------------------------------------------------------


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (He et al. 2016b, Fig. 4e)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, stride_in: str = "1x1"):
        super().__init__()
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, stride=stride_1x1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride_3x3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: x is the identity added back at the end.
        preact = torch.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(preact)
        out = self.conv1(preact)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)
        return out + identity


class CifarPreActResNet(StagedModel):
    """Pre-activation bottleneck ResNet of depth 9n+2 for 32x32 images."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, stride_in: str = "1x1"):
        super().__init__()
        check_preact_depth(depth)
        check_stride_in(stride_in)
        blocks_per_stage = (depth - 2) // 9
        self.depth = depth
        self.num_classes = num_classes
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.layer1 = self._make_layer(16, blocks_per_stage, 1, stride_in)
        self.layer2 = self._make_layer(32, blocks_per_stage, 2, stride_in)
        self.layer3 = self._make_layer(64, blocks_per_stage, 2, stride_in)
        self.num_features = 64 * PreActBottleneck.expansion
        self.bn = nn.BatchNorm2d(self.num_features)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(self.num_features, num_classes)
        init_he(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, stride_in: str) -> nn.Sequential:
        out_planes = planes * PreActBottleneck.expansion
        stage = make_stage(lambda in_planes, block_stride: PreActBottleneck(in_planes, planes, block_stride, stride_in),
                           self.in_planes, out_planes, blocks, stride)
        self.in_planes = out_planes
        return stage

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        # The last block ends on an addition: normalize and rectify before pooling (§4.1).
        return self.relu(self.bn(x))


def check_preact_depth(depth: int) -> None:
    if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ReslabError(
            f"invalid depth {depth} for a pre-activation bottleneck ResNet: the depth must be 9n+2 "
            "(11, 20, 29, ..., 164, ..., 1001)"
        )


def preact_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, stride_in: str = "1x1"):
    """A CIFAR pre-activation bottleneck ResNet of any depth 9n+2."""
    return CifarPreActResNet(depth, num_classes, in_channels, stride_in)


def _register_cifar(depth: int, params: str) -> None:
    def build(num_classes: int = 10, in_channels: int = 3, stride_in: str = "1x1") -> CifarPreActResNet:
        return preact_resnet(depth, num_classes, in_channels, stride_in)

    register_model(
        f"preact_resnet{depth}",
        f"CIFAR pre-activation ResNet-{depth} (bottlenecks, 9*{(depth - 2) // 9}+2; {params})",
        max_side=CIFAR_MAX_SIDE,
    )(build)


_register_cifar(164, "1.7M")
_register_cifar(1001, "10.2M")


def _any_preact(match, num_classes: int = 10, in_channels: int = 3, stride_in: str = "1x1"):
    return preact_resnet(int(match.group(1)), num_classes, in_channels, stride_in)


register_pattern(r"preact_resnet([0-9]+)", _any_preact,
                 lambda match: f"CIFAR pre-activation ResNet-{match.group(1)} (bottlenecks, depth 9n+2)",
                 max_side=CIFAR_MAX_SIDE)


# ---------------------------------------------------------------------------------------
# Keras applications' ResNet50V2 / ResNet101V2 / ResNet152V2
# ---------------------------------------------------------------------------------------

KERAS_BN_EPSILON = 1.001e-5
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99: the weight of the *old* moving statistic


def keras_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM)


class KerasV2Block(nn.Module):
    """Keras's ``residual_block_v2``: preact BN-ReLU, 1x1, pad + 3x3 (strided), 1x1 (+ bias).

    Shortcut: a 1x1 conv of the pre-activated input (``conv_shortcut``, first block of a
    stage), a 1x1 max-pool of the raw input (a strided block), or the raw input.
    """

    def __init__(self, in_planes: int, filters: int, stride: int = 1, conv_shortcut: bool = False):
        super().__init__()
        out_planes = 4 * filters
        self.preact_bn = keras_bn(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv0: nn.Conv2d | None = None
        self.shortcut_pool: nn.MaxPool2d | None = None
        if conv_shortcut:
            self.conv0 = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=True)
        elif stride > 1:
            self.shortcut_pool = nn.MaxPool2d(1, stride=stride)
        self.conv1 = nn.Conv2d(in_planes, filters, 1, bias=False)
        self.bn1 = keras_bn(filters)
        self.pad2 = nn.ZeroPad2d(1)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride=stride, bias=False)
        self.bn2 = keras_bn(filters)
        self.conv3 = nn.Conv2d(filters, out_planes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = torch.relu(self.preact_bn(x))
        if self.conv0 is not None:
            identity = self.conv0(preact)
        elif self.shortcut_pool is not None:
            identity = self.shortcut_pool(x)
        else:
            identity = x
        out = self.conv1(preact)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(self.pad2(out))
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        return out + identity


def keras_v2_stage(in_planes: int, filters: int, blocks: int, stride: int) -> nn.Sequential:
    """Keras's ``stack_residual_blocks_v2``: conv shortcut first, the stride in the last block."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["block1"] = KerasV2Block(in_planes, filters, conv_shortcut=True)
    for i in range(2, blocks):
        layers[f"block{i}"] = KerasV2Block(4 * filters, filters)
    layers[f"block{blocks}"] = KerasV2Block(4 * filters, filters, stride=stride)
    return nn.Sequential(layers)


class ResNetV2(StagedModel):
    """Keras applications' ResNetV2 in torch; ``num_classes=0`` is Keras's ``include_top=False``."""

    stage_names = ("conv2", "conv3", "conv4", "conv5")

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ReslabError(f"num_classes must be a non-negative integer (0: no top), got {num_classes!r}")
        self.blocks = tuple(blocks)
        self.num_classes = num_classes
        self.conv1_pad = nn.ZeroPad2d(3)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, bias=True)
        self.pool1_pad = nn.ZeroPad2d(1)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.conv2 = keras_v2_stage(64, 64, blocks[0], 2)
        self.conv3 = keras_v2_stage(256, 128, blocks[1], 2)
        self.conv4 = keras_v2_stage(512, 256, blocks[2], 2)
        self.conv5 = keras_v2_stage(1024, 512, blocks[3], 1)
        self.num_features = 2048
        self.post_bn = keras_bn(self.num_features)
        self.relu = nn.ReLU(inplace=True)
        self.fc = self._classifier(num_classes)
        init_he(self)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``num_classes``-way head; 0 removes it (Keras's ``include_top=False``)."""
        device = self.post_bn.weight.device
        self.fc = self._classifier(num_classes).to(device)
        self.num_classes = num_classes

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv1_pad(x))
        return self.pool1(self.pool1_pad(x))

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.post_bn(x))


def _register_v2(name: str, blocks: tuple[int, int, int, int], keras_name: str):
    def build(num_classes: int = 1000, in_channels: int = 3) -> ResNetV2:
        return ResNetV2(blocks, num_classes, in_channels)

    build.__name__ = name
    description = f"Keras applications' {keras_name} (pre-activation, {sum(blocks) * 3 + 2} layers)"
    return register_model(name, description)(build)


resnet50v2 = _register_v2("resnet50v2", (3, 4, 6, 3), "ResNet50V2")
resnet101v2 = _register_v2("resnet101v2", (3, 4, 23, 3), "ResNet101V2")
resnet152v2 = _register_v2("resnet152v2", (3, 8, 36, 3), "ResNet152V2")
