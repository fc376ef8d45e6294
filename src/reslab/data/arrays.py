"""Small-image datasets held as one uint8 tensor: the form every in-memory source
(CIFAR, IDX, digits) is read into, and what the device-resident loader serves from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ReslabError


@dataclass
class ArrayDataset:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ArrayDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ArrayDataset(self.images[index], self.labels[index])


@dataclass
class DatasetSplits:
    """Train / validation / test splits of one dataset, and what describes it."""

    name: str
    classes: list[str]
    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset
    mean: list[float] = field(default_factory=list)  # per channel, in [0, 1], of the train split
    std: list[float] = field(default_factory=list)
    source: str = ""  # where it was read from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "classes": self.classes,
            "image_size": list(self.image_size),
            "in_channels": self.in_channels,
            "sizes": {"train": len(self.train), "val": len(self.val) if self.val else 0, "test": len(self.test)},
            "mean": self.mean,
            "std": self.std,
        }


def split_count(size: float, total: int, what: str) -> int:
    """A split size given as a fraction (< 1) or a count (>= 1) as a count."""
    count = int(round(size * total)) if size < 1 else int(size)
    if count >= total:
        raise ReslabError(f"{what} of {size} leaves no training images out of {total}")
    return count


def hold_out(data: ArrayDataset, size: float, seed: int, what: str) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Split ``data`` into (rest, held-out), stratified by class, the same for the same seed."""
    from sklearn.model_selection import train_test_split

    count = split_count(size, len(data), what)
    if count == 0:
        return data, None
    labels = data.labels.numpy()
    stratify = labels if count >= len(np.unique(labels)) else None
    try:
        rest, held = train_test_split(np.arange(len(data)), test_size=count, random_state=seed, stratify=stratify)
    except ValueError as exc:  # too few images left to hold every class
        raise ReslabError(f"{what} of {size} cannot be held out of {len(data)} images: {exc}") from None
    return data.subset(np.sort(rest)), data.subset(np.sort(held))


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] (float64, computed in chunks to bound memory)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(4096):
        values = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(channels, -1)
        total += values.sum(1)
        total_sq += values.square().sum(1)
    count = images.numel() / channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
