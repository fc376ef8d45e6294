"""Report 000's transfer-learning model: Keras ResNet152V2 without top, then a small conv head.

On 32x32 CIFAR images the backbone's output is 1x1x2048. The head (report 000, Fig. 2):
Conv(32,3,same)-ReLU, Conv(32,3,same)-ReLU, MaxPool(2,same), Conv(64,3,same)-ReLU,
Conv(64,3,same)-ReLU, MaxPool(2,same), Flatten, Dense(512), Dropout(0.5), Dense(classes).
Keras's 'same' max-pool keeps a 1x1 map 1x1; the 64 inputs of Dense(512) assume it.
The report shows no activation on Dense(512); none is added here.

Counts as Keras reports them (10 classes): total 59,024,586 = trainable 58,880,842 +
non-trainable 143,744 (the backbone's BN moving means and variances).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .base import init_he
from .preact import ResNetV2
from .registry import register_model


class SameMaxPool2d(nn.Module):
    """Keras/TF ``MaxPooling2D(padding="same")``: output ceil(size / stride), the padding that
    makes it up split with the odd pixel at the end (right/bottom), padded cells ignored."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride or kernel_size

    def _padding(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._padding(x.shape[-2])
        left, right = self._padding(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def conv_same(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)  # 'same' for a 3x3, stride 1


class Report000Net(ResNetV2):
    """ResNet152V2 (no top) + report 000's conv head; ``fc`` is its last Dense layer."""

    # Modules that form the head, for freezing and learning-rate groups (models.transfer).
    head_names = ("head", "fc")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        super().__init__((3, 8, 36, 3), num_classes=0, in_channels=in_channels)
        self.head = nn.Sequential(
            OrderedDict(
                conv1=conv_same(2048, 32),
                relu1=nn.ReLU(inplace=True),
                conv2=conv_same(32, 32),
                relu2=nn.ReLU(inplace=True),
                pool1=SameMaxPool2d(2),
                conv3=conv_same(32, 64),
                relu3=nn.ReLU(inplace=True),
                conv4=conv_same(64, 64),
                relu4=nn.ReLU(inplace=True),
                pool2=SameMaxPool2d(2),
                flatten=nn.Flatten(),
                dense=nn.Linear(64, 512),
                dropout=nn.Dropout(dropout),
            )
        )
        self.head_features = 512
        self.fc = nn.Linear(self.head_features, num_classes)
        self.num_classes = num_classes
        init_he(self.head)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head(features)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Dense layer with a fresh ``num_classes``-way one."""
        self.fc = nn.Linear(self.head_features, num_classes).to(self.head.dense.weight.device)
        self.num_classes = num_classes


@register_model("resnet152v2_report000", "Report 000's model: ResNet152V2 (no top) + conv head, 32x32 inputs")
def resnet152v2_report000(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> Report000Net:
    return Report000Net(num_classes, in_channels, dropout)
