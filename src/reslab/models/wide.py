"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016) for 32x32 images.

A 3x3 conv with 16 filters, three stages of n = (d-4)/6 pre-activation basic blocks with
16k/32k/64k filters on 32/16/8 maps, a final BN-ReLU, pooling and a classifier. A 1x1
conv shortcut where the width or size changes; optional dropout between the two convs of
a block (§2.4; the paper uses 0.3). WRN-28-10 has 36,479,194 parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ReslabError
from .base import StagedModel, init_he
from .blocks import make_stage
from .registry import CIFAR_MAX_SIDE, MAX_PARAMETERS, register_model, register_pattern


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3; the shortcut conv sees the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: without a shortcut conv, x itself is the identity to add back.
        preact = torch.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(preact)
        out = self.conv1(preact)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.dropout(out)
        out = self.conv2(out)
        return out + identity


class WideResNet(StagedModel):
    """WRN-``depth``-``widen_factor``; ``depth`` must be 6n+4."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_wide_depth(depth, widen_factor)
        if not 0.0 <= dropout < 1.0:
            raise ReslabError(f"dropout must be in [0, 1), got {dropout!r}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth = depth
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.layer1 = self._make_layer(widths[0], blocks_per_stage, 1, dropout)
        self.layer2 = self._make_layer(widths[1], blocks_per_stage, 2, dropout)
        self.layer3 = self._make_layer(widths[2], blocks_per_stage, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.num_features = widths[2]
        self.fc = nn.Linear(self.num_features, num_classes)
        init_he(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
        stage = make_stage(lambda in_planes, block_stride: WideBasicBlock(in_planes, planes, block_stride, dropout),
                           self.in_planes, planes, blocks, stride)
        self.in_planes = planes
        return stage

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-activation blocks end on an addition: normalize and rectify before pooling.
        return self.relu(self.bn(x))


MAX_WIDEN_FACTOR = 64


def check_wide_depth(depth: int, widen_factor: int) -> None:
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ReslabError(f"invalid depth {depth} for a Wide ResNet: the depth must be 6n+4 (10, 16, 22, 28, 40, ...)")
    if not isinstance(widen_factor, int) or not 1 <= widen_factor <= MAX_WIDEN_FACTOR:
        raise ReslabError(f"the widening factor k of WRN-d-k must be an integer from 1 to {MAX_WIDEN_FACTOR} "
                          f"(WRN-28-64 has 1.5 billion parameters), got {widen_factor!r}")
    parameters = wide_parameters(depth, widen_factor)
    if parameters > MAX_PARAMETERS:
        raise ReslabError(f"WRN-{depth}-{widen_factor} would have about {parameters / 1e9:,.0f} billion parameters, "
                          f"over the {MAX_PARAMETERS / 1e9:g} billion reslab builds; choose a smaller depth or width")


def wide_parameters(depth: int, widen_factor: int) -> int:
    """About how many parameters WRN-d-k has: its 3x3 convs, two a block, (d - 4) / 6 blocks a
    stage at widths 16k, 32k and 64k (the rest is under 2%: WRN-28-10 36.5M, this 38.7M)."""
    blocks = (depth - 4) // 6
    return 2 * 9 * blocks * (16 * widen_factor) ** 2 * (1 + 4 + 16)


def wide_resnet(
    depth: int, widen_factor: int, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
) -> WideResNet:
    """WRN-d-k of any depth 6n+4 and width k."""
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout)


def _register(depth: int, widen_factor: int) -> None:
    def build(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
        return wide_resnet(depth, widen_factor, num_classes, in_channels, dropout)

    register_model(f"wrn{depth}_{widen_factor}", f"Wide ResNet WRN-{depth}-{widen_factor}",
                   max_side=CIFAR_MAX_SIDE)(build)


for _depth, _widen in ((28, 10), (16, 8), (40, 4)):
    _register(_depth, _widen)


def _any_wide(match, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    return wide_resnet(int(match.group(1)), int(match.group(2)), num_classes, in_channels, dropout)


register_pattern(r"wrn([0-9]+)_([0-9]+)", _any_wide,
                 lambda match: f"Wide ResNet WRN-{match.group(1)}-{match.group(2)} (CIFAR, depth 6n+4)",
                 max_side=CIFAR_MAX_SIDE,
                 check=lambda match: check_wide_depth(int(match.group(1)), int(match.group(2))))
