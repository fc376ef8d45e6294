"""Per-channel normalization: which mean and standard deviation a run uses, and the one
operation that applies them to uint8 pixels, shared by the loaders and by prediction so
that a model always sees the same numbers for the same image."""

from __future__ import annotations

import torch

from ..errors import ReslabError

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# Keras V1 ResNets' "caffe" preprocessing: the ImageNet means (R, G, B) subtracted on the 0-255
# scale, no division. Keras also swaps RGB to BGR; reslab reverses the stem conv's input
# channels when it loads those weights instead, so images stay RGB everywhere.
CAFFE_STATS = ([123.68 / 255, 116.779 / 255, 103.939 / 255], [1 / 255] * 3)


def normalization_stats(kind: str, channels: int, dataset_stats: tuple[list[float], list[float]] | None = None
                        ) -> tuple[list[float], list[float]]:
    """(mean, std) of ``data.normalization``: ``imagenet``, ``inception`` ([-1, 1]), ``caffe``
    (Keras V1), ``none``, or ``dataset``/``auto``: ``dataset_stats`` (the training split's),
    ImageNet's without them."""
    if kind in ("imagenet", "caffe") or (kind in ("auto", "dataset") and dataset_stats is None):
        if channels != 3:
            shown = "caffe" if kind == "caffe" else "imagenet"
            raise ReslabError(f"data.normalization={shown} needs RGB images; set data.channels=3")
        return CAFFE_STATS if kind == "caffe" else IMAGENET_STATS
    if kind == "inception":
        return [0.5] * channels, [0.5] * channels
    if kind == "none":
        return [0.0] * channels, [1.0] * channels
    return dataset_stats


class Normalizer:
    """uint8 (N, C, H, W) pixels to float ``(x / 255 - mean) / std``, in two in-place ops."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device | str = "cpu"):
        channels = len(mean)
        self.offset = torch.tensor(mean, device=device).mul(255).view(1, channels, 1, 1)
        self.scale = torch.tensor(std, device=device).mul(255).reciprocal().view(1, channels, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.offset.device, non_blocking=True).float().sub_(self.offset).mul_(self.scale)
