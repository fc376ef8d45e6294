"""CIFAR ResNets of depth 6n+2 and their plain twins (He et al. 2016, §4.2).

A 3x3 conv with 16 filters, three stages of n basic blocks with 16/32/64 filters on
32/16/8 maps (stride 2 at the first block of stages 2 and 3), global average pooling
and a linear classifier. The plain twin is the same net with every shortcut removed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ReslabError
from .base import StagedModel, init_he
from .blocks import BasicBlock, conv3x3, make_stage, projection
from .registry import CIFAR_MAX_SIDE, register_model, register_pattern

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A (§4.2): identity, subsampled by striding, with zero channels padded on.

    The zeros go half before and half after the input channels, as in the common PyTorch
    reproduction (akamaster/pytorch_resnet_cifar10), so its checkpoints give the same logits.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class CifarResNet(StagedModel):
    """ResNet (or, with ``residual=False``, plain net) of depth 6n+2 for small images."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        residual: bool = True,
    ):
        super().__init__()
        check_cifar_depth(depth)
        if shortcut not in SHORTCUTS:
            raise ReslabError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.num_features = 64
        self.in_planes = 16
        block_shortcut = shortcut if residual else None
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks_per_stage, 1, block_shortcut)
        self.layer2 = self._make_layer(32, blocks_per_stage, 2, block_shortcut)
        self.layer3 = self._make_layer(64, blocks_per_stage, 2, block_shortcut)
        self.fc = nn.Linear(64, num_classes)
        init_he(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, shortcut: str | None) -> nn.Sequential:
        def make_block(in_planes: int, block_stride: int) -> nn.Module:
            downsample = None
            if shortcut is not None and (block_stride != 1 or in_planes != planes):
                downsample = (PadShortcut(in_planes, planes, block_stride) if shortcut == "A"
                              else projection(in_planes, planes, block_stride))
            return BasicBlock(in_planes, planes, block_stride, downsample, residual=shortcut is not None)

        stage = make_stage(make_block, self.in_planes, planes, blocks, stride)
        self.in_planes = planes
        return stage

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        return self.relu(x)


def check_cifar_depth(depth: int) -> None:
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ReslabError(
            f"invalid depth {depth} for a CIFAR ResNet: the depth must be 6n+2 "
            "(8, 14, 20, 26, 32, 44, 56, 110, 1202, ...)"
        )


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """A CIFAR ResNet of any depth 6n+2."""
    return CifarResNet(depth, num_classes, in_channels, shortcut=shortcut, residual=True)


def cifar_plain(depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """The plain twin (no shortcuts) of a CIFAR ResNet of depth 6n+2."""
    if shortcut != "A":
        raise ReslabError(f"plain{depth} has no shortcuts, so model.shortcut={shortcut} does not apply; leave it A")
    return CifarResNet(depth, num_classes, in_channels, shortcut=shortcut, residual=False)


def _register(depth: int, plain: bool) -> None:
    kind = "plain" if plain else "resnet"
    builder = cifar_plain if plain else cifar_resnet
    what = "plain net (no shortcuts)" if plain else "ResNet"

    def build(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"):
        return builder(depth, num_classes, in_channels, shortcut)

    register_model(f"{kind}{depth}", f"CIFAR {what}, depth {depth} = 6*{(depth - 2) // 6}+2",
                   max_side=CIFAR_MAX_SIDE)(build)


for _depth in (20, 32, 44, 56, 110, 1202):
    _register(_depth, plain=False)
for _depth in (20, 32, 44, 56, 110):
    _register(_depth, plain=True)


def _any_depth(match, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"):
    builder = cifar_plain if match.group(1).endswith("plain") else cifar_resnet
    return builder(int(match.group(2)), num_classes, in_channels, shortcut)


def _describe_depth(match) -> str:
    depth = int(match.group(2))
    what = "plain net (no shortcuts)" if match.group(1).endswith("plain") else "ResNet"
    size = f" = 6*{(depth - 2) // 6}+2" if (depth - 2) % 6 == 0 and depth >= 8 else " (not 6n+2: refused)"
    return f"CIFAR {what}, depth {depth}{size}"


# resnetN / plainN for the paper's CIFAR nets of any depth 6n+2 (the registry keeps names
# that mean an ImageNet net elsewhere, resnet26 and resnet200, for those); cifar_resnetN and
# cifar_plainN always mean the CIFAR nets.
register_pattern(r"(resnet|plain|cifar_resnet|cifar_plain)([0-9]+)", _any_depth, _describe_depth,
                 max_side=CIFAR_MAX_SIDE)
