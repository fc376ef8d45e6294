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
from .blocks import BasicBlock, Bottleneck, projection_stage
from .registry import register_model

STRIDE_PLACES = ("3x3", "1x1")


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
        self.block_options = dict(groups=groups, base_width=base_width, stride_in=stride_in)
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
        stage = projection_stage(block, self.in_planes, planes, blocks, stride, self.residual, **self.block_options)
        self.in_planes = planes * block.expansion
        return stage

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
