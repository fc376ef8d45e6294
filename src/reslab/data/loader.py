"""The device-resident loader for small-image datasets (after airbench): the whole uint8
dataset is copied to the training device once and each batch is gathered, augmented
and normalized there with a few tensor ops; no per-image Python, no worker processes.

Randomness (the shuffle and every augmentation draw) comes from a CPU generator seeded
by (seed, epoch), so an epoch is the same on every device and after a resume, and the
draws are made for the global batch before it is split among processes: two processes
with 64 images each see exactly the images and crops one process with 128 would.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..device import to_device
from .arrays import ArrayDataset
from .normalization import Normalizer
from .seeding import epoch_generator


class BatchAugment:
    """Pad-and-crop, horizontal flip, rotation and scale, drawn per image, applied per batch.

    Crop and flip act on uint8 pixels exactly like torchvision's RandomCrop(padding=p,
    fill=0) and RandomHorizontalFlip; rotation and scale resample bilinearly with zero fill.
    """

    def __init__(self, crop_padding: int = 0, hflip: bool = False, rotation: float = 0.0, scale: float = 0.0):
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.rotation = rotation
        self.scale = scale

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.rotation or self.scale)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parameters of one batch, always drawn in the same order."""
        params = {}
        if self.crop_padding:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (batch_size, 2), generator=generator)
            params["crop"] = offsets
        if self.hflip:
            params["flip"] = torch.rand(batch_size, generator=generator) < 0.5
        if self.rotation or self.scale:
            angles = (torch.rand(batch_size, generator=generator) * 2 - 1) * math.radians(self.rotation)
            scales = 1 + (torch.rand(batch_size, generator=generator) * 2 - 1) * self.scale
            params["affine"] = torch.stack([angles, scales], 1)
        return params

    def apply_uint8(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Crop and flip, on uint8 (before normalization, so padding is black as in torchvision)."""
        if "crop" in params:
            pad = self.crop_padding
            batch, _, height, width = images.shape
            padded = F.pad(images, (pad, pad, pad, pad))
            offsets = params["crop"].to(images.device)
            rows = (offsets[:, 0:1] + torch.arange(height, device=images.device))[:, None, :, None]
            cols = (offsets[:, 1:2] + torch.arange(width, device=images.device))[:, None, None, :]
            batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
            channel_index = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
            images = padded[batch_index, channel_index, rows, cols]
        if "flip" in params:
            flip = params["flip"].to(images.device)[:, None, None, None]
            images = torch.where(flip, images.flip(3), images)
        return images

    def apply_float(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rotation and scale about the centre, on float pixels in 0..255 (zero fill)."""
        if "affine" not in params:
            return images
        angles, scales = params["affine"].to(images.device, images.dtype).unbind(1)
        cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class DeviceLoader:
    """Batches of normalized float images and their labels, on ``device``.

    ``batch_size`` is the global batch; with ``world_size`` processes each gets its
    ``rank``-th share. Training loaders shuffle and drop the last partial batch (so a
    batch never holds a single image, which batch norm cannot train on); evaluation
    loaders keep order and every image.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        device: torch.device,
        mean: list[float],
        std: list[float],
        *,
        train: bool,
        augment: BatchAugment | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        resize: int | None = None,
    ):
        self.device = torch.device(device)
        self.resize = resize
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if (augment is not None and augment.active and train) else None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.epoch = 0
        self.normalize = Normalizer(mean, std, self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batch_count(len(self.labels), self.batch_size, self.train)

    def batch_indices(self) -> list[tuple[torch.Tensor, dict]]:
        """Per batch: this rank's indices and its share of the augmentation parameters."""
        generator = epoch_generator(self.seed, self.epoch)
        batches = []
        for index in global_batches(len(self.labels), self.batch_size, self.train, generator):
            params = self.augment.draw(len(index), generator) if self.augment else {}
            share = rank_slice(len(index), self.rank, self.world_size)
            batches.append((index[share], {k: v[share] for k, v in params.items()}))
        return batches

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start: int = 0):
        """The batches of this epoch from the ``start``-th on (a resume in mid-epoch)."""
        batches = self.batch_indices()[start:]
        if not batches:
            return
        # The epoch's indices and augmentation draws reach the device in one asynchronous copy
        # each: a copy per batch from pageable memory would make the host wait for the GPU at
        # every step (see to_device), and a step that waits cannot be queued ahead.
        sizes = [len(index) for index, _ in batches]
        indices = to_device(torch.cat([index for index, _ in batches]), self.device).split(sizes)
        draws = {key: to_device(torch.cat([params[key] for _, params in batches]), self.device).split(sizes)
                 for key in batches[0][1]}
        for number, index in enumerate(indices):
            params = {key: values[number] for key, values in draws.items()}
            images = self.images[index]
            if params:
                images = self.augment.apply_uint8(images, params)
            if "affine" in params:  # rotation and scale resample the float pixels
                images = self.augment.apply_float(images.float(), params)
            images = self.normalize(images)
            if self.resize is not None and tuple(images.shape[2:]) != (self.resize, self.resize):
                images = F.interpolate(images, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.labels[index]

    def indexed(self, start: int = 0):
        """``iterate``'s batches with the dataset index of each image (on the CPU), as
        ``FileLoader.indexed`` gives them."""
        for (index, _), (images, labels) in zip(self.batch_indices()[start:], self.iterate(start)):
            yield images, labels, index


def batch_count(count: int, batch_size: int, train: bool) -> int:
    """Training drops the last partial batch; evaluation keeps every image."""
    return count // batch_size if train else math.ceil(count / batch_size)


def global_batches(count: int, batch_size: int, train: bool, generator: torch.Generator) -> list[torch.Tensor]:
    """An epoch's global batches of indices: a permutation drawn from ``generator`` for
    training, the dataset's order for evaluation. Shared by the in-memory and file loaders,
    so both see the same batches for the same (seed, epoch)."""
    order = torch.randperm(count, generator=generator) if train else torch.arange(count)
    return [order[start : start + batch_size]
            for start in range(0, batch_count(count, batch_size, train) * batch_size, batch_size)]


def rank_slice(size: int, rank: int, world_size: int) -> slice:
    """This process's contiguous share of a global batch of ``size``."""
    per_rank = math.ceil(size / world_size)
    return slice(rank * per_rank, min(size, (rank + 1) * per_rank))
