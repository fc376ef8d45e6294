"""ResNeXt (Xie et al. 2017): bottlenecks whose 3x3 conv is split into ``cardinality`` groups.

``resnext50_32x4d`` is torchvision's (same key names, 25,028,904 parameters for 1000
classes). ``resnext29_8x64d`` / ``resnext29_16x64d`` are the CIFAR nets of §5.3: a 3x3 conv
with 64 filters, three stages of three bottlenecks with outputs 256/512/1024 on 32/16/8
maps, the grouped width ``cardinality x d`` doubling at each stage, pooling and a classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StagedModel, init_he
from .blocks import Bottleneck, conv3x3, projection_stage
from .imagenet import ImageNetResNet
from .registry import CIFAR_MAX_SIDE, register_model


@register_model("resnext50_32x4d", "ImageNet ResNeXt-50 (32x4d), torchvision's")
def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    model = ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, groups=32, base_width=4)
    model.torchvision_name = "resnext50_32x4d"
    return model


class CifarResNeXt(StagedModel):
    """ResNeXt-29 for 32x32 images (Xie et al. 2017, §5.3); ``width`` is d of "C x d"."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(self, cardinality: int, width: int, num_classes: int = 10, in_channels: int = 3, depth: int = 29):
        super().__init__()
        blocks_per_stage = (depth - 2) // 9
        self.num_classes = num_classes
        # Bottleneck's grouped width is int(planes * base_width / 64) * groups; with planes
        # 64/128/256 that is cardinality * width doubling per stage, as in the paper.
        self.block_options = dict(groups=cardinality, base_width=width)
        self.in_planes = 64
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(64, blocks_per_stage, 1)
        self.layer2 = self._make_layer(128, blocks_per_stage, 2)
        self.layer3 = self._make_layer(256, blocks_per_stage, 2)
        self.num_features = 256 * Bottleneck.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        init_he(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = projection_stage(Bottleneck, self.in_planes, planes, blocks, stride, **self.block_options)
        self.in_planes = planes * Bottleneck.expansion
        return stage

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        return self.relu(x)


@register_model("resnext29_8x64d", "CIFAR ResNeXt-29, cardinality 8, width 64 (Xie et al. 2017, 34.4M)",
                max_side=CIFAR_MAX_SIDE)
def resnext29_8x64d(num_classes: int = 10, in_channels: int = 3) -> CifarResNeXt:
    return CifarResNeXt(8, 64, num_classes, in_channels)


@register_model("resnext29_16x64d", "CIFAR ResNeXt-29, cardinality 16, width 64 (Xie et al. 2017, 68.1M)",
                max_side=CIFAR_MAX_SIDE)
def resnext29_16x64d(num_classes: int = 10, in_channels: int = 3) -> CifarResNeXt:
    return CifarResNeXt(16, 64, num_classes, in_channels)
