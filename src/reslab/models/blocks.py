"""The building blocks shared by the ResNet families (He et al. 2016, Fig. 2 and 5, §3.3):
3x3 and 1x1 convs without bias (BN follows), the option-B projection, the basic block and
the bottleneck (each with a plain twin that drops the shortcut), and ``make_stage``, which
stacks a stage of any family's blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Option B shortcut (§3.3): a strided 1x1 conv and BN, only where the shape changes."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convs (the CIFAR nets, ResNet-18/34); ``residual=False`` makes the plain net's block."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        **_unused,
    ):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.residual:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.relu(out)


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


def make_stage(make_block: Callable[[int, int], nn.Module], in_planes: int, out_planes: int, blocks: int,
               stride: int) -> nn.Sequential:
    """A stage (``layer1`` ... in torchvision's names) of ``blocks`` blocks built by
    ``make_block(in_planes, stride)``: the first takes the stage's input and stride, the
    rest ``out_planes`` at stride 1."""
    return nn.Sequential(*(make_block(in_planes if i == 0 else out_planes, stride if i == 0 else 1)
                           for i in range(blocks)))


def projection_stage(block, in_planes: int, planes: int, blocks: int, stride: int, residual: bool = True,
                     **block_options) -> nn.Sequential:
    """A stage of torchvision-style blocks (``BasicBlock`` or ``Bottleneck``) with option-B
    projections where the shape changes; a plain net (``residual=False``) has none."""
    out_planes = planes * block.expansion

    def make_block(block_in: int, block_stride: int) -> nn.Module:
        changes = block_stride != 1 or block_in != out_planes
        downsample = projection(block_in, out_planes, block_stride) if residual and changes else None
        return block(block_in, planes, block_stride, downsample, residual=residual, **block_options)

    return make_stage(make_block, in_planes, out_planes, blocks, stride)
