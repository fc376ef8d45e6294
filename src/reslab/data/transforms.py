"""Augmentation of full-size photographs: per-image transforms (torchvision transforms v2,
run in the loader's worker processes on uint8 images) and per-batch mixing (mixup,
cutmix, on the device after normalization).

Training: RandomResizedCrop and a horizontal flip (Szegedy et al. 2015, the ResNet
paper's ImageNet recipe follows it in He et al. 2016 §3.4), then optionally colour
jitter, one automatic policy (TrivialAugment, RandAugment, AutoAugment) and random
erasing. Evaluation: the shorter side resized to 256 and the central 224x224 crop (the
ImageNet convention, ratio 0.875), or the whole image resized to a square (multi-label
datasets, where a crop could cut a labelled object out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import CHOICES
from .seeding import sample_seed, seeded

AUTO_AUGMENTS = CHOICES["augment.auto_augment"]


@dataclass
class ImagePipeline:
    """Options of the per-image transforms of a file dataset."""

    image_size: int = 224  # the side of the square images the model sees
    resize_size: int | None = None  # evaluation: shorter side resized to this, then centre crop; None: size/0.875
    center_crop: bool = True  # False: evaluation resizes the whole image to image_size x image_size
    random_resized_crop: float = 0.08  # smallest crop area fraction in training; 0: the evaluation resize
    crop_padding: int = 0  # with random_resized_crop 0: pad by this many pixels, crop back at random
    hflip: bool = True
    color_jitter: float = 0.0  # brightness, contrast and saturation jitter strength
    auto_augment: str = "none"  # none, trivial (TrivialAugmentWide), rand (RandAugment), auto (AutoAugment)
    random_erasing: float = 0.0  # probability of erasing a rectangle (filled with the mean colour)
    interpolation: str = "bilinear"  # the resize filter: bilinear (torchvision's recipes) or bicubic (timm's)

    def __post_init__(self):
        if self.auto_augment not in AUTO_AUGMENTS:
            raise ValueError(f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)}, got {self.auto_augment!r}")

    @property
    def eval_resize(self) -> int:
        return self.resize_size or int(round(self.image_size / 0.875))


def eval_transform(pipeline: ImagePipeline):
    from torchvision.transforms import v2

    return v2.Compose(_resize(pipeline) + [v2.ToImage()])


def train_transform(pipeline: ImagePipeline, mean: list[float]):
    """The training transforms; ``mean`` (in [0, 1]) is the random-erasing fill colour,
    which normalization turns into zeros as in torchvision's reference recipe."""
    from torchvision.transforms import v2

    steps = []
    if pipeline.random_resized_crop > 0:
        steps.append(v2.RandomResizedCrop(pipeline.image_size, scale=(pipeline.random_resized_crop, 1.0),
                                          interpolation=_mode(pipeline), antialias=True))
    else:
        steps.extend(_resize(pipeline))
        if pipeline.crop_padding:
            steps.append(v2.RandomCrop(pipeline.image_size, padding=pipeline.crop_padding))
    if pipeline.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if pipeline.color_jitter:
        strength = pipeline.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    if pipeline.auto_augment == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif pipeline.auto_augment == "rand":
        steps.append(v2.RandAugment())
    elif pipeline.auto_augment == "auto":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    steps.append(v2.ToImage())
    if pipeline.random_erasing:
        fill = [int(round(255 * m)) for m in mean]
        steps.append(v2.RandomErasing(p=pipeline.random_erasing, value=fill))
    return v2.Compose(steps)


def _resize(pipeline: ImagePipeline) -> list:
    from torchvision.transforms import v2

    if pipeline.center_crop:
        return [v2.Resize(pipeline.eval_resize, interpolation=_mode(pipeline), antialias=True),
                v2.CenterCrop(pipeline.image_size)]
    return [v2.Resize((pipeline.image_size, pipeline.image_size), interpolation=_mode(pipeline), antialias=True)]


def _mode(pipeline: ImagePipeline):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(pipeline.interpolation)


# ---------------------------------------------------------------- mixing batches


def mixup_batch(images: torch.Tensor, targets: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) of each image with the previous one in the batch:
    lam * x_i + (1 - lam) * x_{i-1}, and the same convex combination of the targets."""
    images = images.roll(1, 0).mul_(1.0 - lam).add_(images.mul(lam))
    return images, mix_targets(targets, lam)


def cutmix_batch(images: torch.Tensor, targets: torch.Tensor, lam: float,
                 centre: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019): a box of about (1 - lam) of the area, centred at
    ``centre`` (row, column) and clipped to the image, pasted from the previous image of
    the batch; the targets are mixed by the area actually kept."""
    height, width = images.shape[-2:]
    half = 0.5 * math.sqrt(1.0 - lam)
    half_h, half_w = int(half * height), int(half * width)
    top, bottom = max(centre[0] - half_h, 0), min(centre[0] + half_h, height)
    left, right = max(centre[1] - half_w, 0), min(centre[1] + half_w, width)
    images = images.clone()
    images[..., top:bottom, left:right] = images.roll(1, 0)[..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return images, mix_targets(targets, kept)


def mix_targets(targets: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * y_i + (1 - lam) * y_{i-1} for float targets (multi-hot or one-hot rows).

    A mixed multi-hot row is a soft target for binary cross-entropy: class c is present
    with weight lam if only image i has it, 1 - lam if only image i-1 does, 1 if both."""
    targets = targets.float()
    return targets.roll(1, 0).mul_(1.0 - lam).add_(targets.mul(lam))


class BatchMix:
    """Mixup and/or CutMix of a batch; with both, one of them per batch (CutMix with
    probability ``switch_prob``, as timm does). ``alpha`` of each is its Beta(alpha,
    alpha) parameter; 0 turns it off.

    Single-label batches go through torchvision's MixUp / CutMix (integer labels in,
    mixed one-hot rows out); multi-label batches through ``mixup_batch`` /
    ``cutmix_batch``, which make the same draws in the same order. Draws come from a seed
    given per batch, so a batch is mixed the same way after a resume.
    """

    def __init__(self, num_classes: int, multi_label: bool, mixup: float = 0.0, cutmix: float = 0.0,
                 switch_prob: float = 0.5):
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.mixup = mixup
        self.cutmix = cutmix
        self.switch_prob = switch_prob

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, seed: int):
        return seeded(self._mix, (images, targets), seed)

    def _mix(self, batch):
        from torchvision.transforms import v2

        images, targets = batch
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        if not self.multi_label:
            mix = v2.CutMix if use_cutmix else v2.MixUp
            return mix(alpha=alpha, num_classes=self.num_classes)(images, targets)
        # The draws of torchvision's MixUp / CutMix, in their order.
        lam = float(torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha])).sample(()))
        if not use_cutmix:
            return mixup_batch(images, targets, lam)
        height, width = images.shape[-2:]
        column = int(torch.randint(width, size=(1,)))
        row = int(torch.randint(height, size=(1,)))
        return cutmix_batch(images, targets, lam, (row, column))


class MixingLoader:
    """A loader (DeviceLoader or FileLoader) whose training batches are mixed by ``mix``.

    Each process mixes the images of its own share of the global batch (as torchvision's
    and timm's reference scripts do), with a seed of (seed, epoch, batch, rank).
    """

    def __init__(self, loader, mix: BatchMix, seed: int = 0, rank: int = 0):
        self.loader = loader
        self.mix = mix
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def __getattr__(self, name):  # bad_files, images, batch_size ... of the wrapped loader
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start: int = 0):
        for batch, (images, targets) in enumerate(self.loader.iterate(start), start=start):
            seed = sample_seed(self.seed, self.epoch, batch) ^ (self.rank * 0x632BE59BD9B4E019 % 2**62)
            yield self.mix(images, targets, seed)
