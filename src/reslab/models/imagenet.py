"""ImageNet ResNets (He et al. 2016, Table 1) and their plain twins.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1..4``, ``fc``; blocks
``conv1..3``, ``bn1..3``, ``downsample.0/.1``), so a torchvision state_dict loads with
``strict=True`` and gives the same logits.

``stride_in`` says where a bottleneck downsamples: ``"3x3"`` in its 3x3 conv (torchvision's
"v1.5", the default, about 0.5% better top-1) or ``"1x1"`` in its first 1x1 conv, as in the
paper and its Caffe models. Basic blocks have only 3x3 convs, so the option changes nothing there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ReslabError
from .base import StagedModel, init_he
from .blocks import BasicBlock, conv1x1, conv3x3, projection
from .registry import register_model

STRIDE_PLACES = ("3x3", "1x1")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152); grouped 3x3 for ResNeXt.

    The 3x3 conv is ``groups`` groups of ``base_width * planes / 64`` channels each
    (Xie et al. 2017, Fig. 3c); ``groups=1, base_width=64`` is the ResNet bottleneck.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
        stride_in: str = "3x3",
    ):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (1, stride) if stride_in == "3x3" else (stride, 1)
        self.conv1 = conv1x1(in_planes, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.residual:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.relu(out)


def check_stride_in(stride_in: str) -> None:
    if stride_in not in STRIDE_PLACES:
        raise ReslabError(f"stride_in must be one of {', '.join(STRIDE_PLACES)}, got {stride_in!r}")


class ImageNetResNet(StagedModel):
    """7x7/2 conv, 3x3/2 max-pool, four stages on 56/28/14/7 maps (for 224 inputs), pool, fc."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")
    # The torchvision builder with the same architecture, for loading its published weights.
    torchvision_name: str | None = None

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        residual: bool = True,
        stride_in: str = "3x3",
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        check_stride_in(stride_in)
        self.num_classes = num_classes
        self.block_options = dict(residual=residual, groups=groups, base_width=base_width, stride_in=stride_in)
        self.residual = residual
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        init_he(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        # A plain net has no shortcuts at all, so no projections either.
        if self.residual and (stride != 1 or self.in_planes != out_planes):
            downsample = projection(self.in_planes, out_planes, stride)
        layers = [block(self.in_planes, planes, stride, downsample, **self.block_options)]
        self.in_planes = out_planes
        for _ in range(1, blocks):
            layers.append(block(self.in_planes, planes, **self.block_options))
        return nn.Sequential(*layers)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        return self.maxpool(x)


def _imagenet_builder(name: str, block, layers, residual: bool, description: str):
    def build(num_classes: int = 1000, in_channels: int = 3, stride_in: str = "3x3") -> ImageNetResNet:
        model = ImageNetResNet(block, layers, num_classes, in_channels, residual=residual, stride_in=stride_in)
        model.torchvision_name = name if residual else None
        return model

    build.__name__ = name
    build.__doc__ = description
    return register_model(name, description)(build)


resnet18 = _imagenet_builder("resnet18", BasicBlock, (2, 2, 2, 2), True, "ImageNet ResNet-18 (basic blocks)")
resnet34 = _imagenet_builder("resnet34", BasicBlock, (3, 4, 6, 3), True, "ImageNet ResNet-34 (basic blocks)")
resnet50 = _imagenet_builder("resnet50", Bottleneck, (3, 4, 6, 3), True, "ImageNet ResNet-50 (bottlenecks)")
resnet101 = _imagenet_builder("resnet101", Bottleneck, (3, 4, 23, 3), True, "ImageNet ResNet-101 (bottlenecks)")
resnet152 = _imagenet_builder("resnet152", Bottleneck, (3, 8, 36, 3), True, "ImageNet ResNet-152 (bottlenecks)")
plain18 = _imagenet_builder("plain18", BasicBlock, (2, 2, 2, 2), False, "ImageNet plain-18 (no shortcuts)")
plain34 = _imagenet_builder("plain34", BasicBlock, (3, 4, 6, 3), False, "ImageNet plain-34 (no shortcuts)")
