"""One entry point from the data and augmentation config to the loaders a run consumes:
``build_data`` returns a ``DataBundle`` of train / validation / test loaders (DeviceLoader
for the small in-memory datasets, FileLoader for folders of images, ImageNet and COCO)
with what describes them. ``resolve_defaults`` fills the fields a config leaves to the
dataset (None), once, so that what a run saves is what it used.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import IN_MEMORY_DATASETS, AugmentConfig, DataConfig, RunConfig, validate
from ..errors import ReslabError
from .decode import resolve_decoder
from .files import BadFile, FileLoader, FileSplits, default_workers, verify_files
from .loader import BatchAugment, DeviceLoader
from .normalization import normalization_stats
from .transforms import BatchMix, ImagePipeline, MixingLoader, eval_transform, train_transform

# What a dataset gets where the config leaves a field to it (None). In memory: the paper's
# pad-4 crop and flip for CIFAR; digits and letters must not be mirrored. From files,
# ImageNet-style: RandomResizedCrop to 224 and flip, evaluation on the central 224 of the
# image resized to 256. COCO: the whole image squashed to 448x448 (ML-GCN's and ASL's
# resolution) with a flip; a random crop could cut a labelled object out.
DATASET_DEFAULTS = {
    "digits": {"crop_padding": 1, "hflip": False},
    "cifar10": {"crop_padding": 4, "hflip": True},
    "cifar100": {"crop_padding": 4, "hflip": True},
    "mnist": {"crop_padding": 2, "hflip": False},
    "fashion-mnist": {"crop_padding": 2, "hflip": False},
    "kmnist": {"crop_padding": 2, "hflip": False},
    "folder": {"image_size": 224, "center_crop": True, "random_resized_crop": 0.08, "hflip": True},
    "imagenet": {"image_size": 224, "center_crop": True, "random_resized_crop": 0.08, "hflip": True},
    "coco": {"image_size": 448, "center_crop": False, "random_resized_crop": 0.0, "hflip": True},
}
RESOLVED_FIELDS = {"data": ("image_size", "center_crop"),
                   "augment": ("crop_padding", "hflip", "random_resized_crop")}


# Small images in a folder (Fashion-MNIST's 28x28, CIFAR's 32x32, icons): a random crop of a
# few percent of their area would cut most of the object away, and a centre crop at evaluation
# the object's edges. They get CIFAR's treatment instead (He et al. 2016 §4.2): the image
# resized whole, padded by an eighth of its side and randomly cropped back, and flipped.
SMALL_IMAGES = 64


def folder_defaults(root: str | Path) -> dict:
    """Defaults for a folder of images from the images themselves: the input size is their
    typical shorter side (rounded to 16, at least 32, at most 224); images of at most
    SMALL_IMAGES pixels are not cropped at random, but padded and shifted."""
    from .folders import typical_image_size

    typical = typical_image_size(root)
    if typical is None:  # nothing readable: the folder reader says why, with the ImageNet-style defaults
        return DATASET_DEFAULTS["folder"]
    size = min(max(16 * round(typical / 16), 32), 224)
    if typical > SMALL_IMAGES:
        return {**DATASET_DEFAULTS["folder"], "image_size": size}
    return {"image_size": size, "center_crop": False, "random_resized_crop": 0.0, "crop_padding": size // 8,
            "hflip": True}


def resolve_defaults(config: RunConfig) -> RunConfig:
    """``config`` with every data and augmentation field left to the dataset filled in."""
    dataset = DATASET_DEFAULTS[config.data.name]
    if config.data.name == "folder" and any(getattr(getattr(config, section), key) is None
                                            for section, keys in RESOLVED_FIELDS.items() for key in keys):
        dataset = folder_defaults(config.data.root)
    defaults = {"crop_padding": 0, "random_resized_crop": 0.0, **dataset}
    for section, keys in RESOLVED_FIELDS.items():
        values = getattr(config, section)
        for key in keys:
            if getattr(values, key) is None and key in defaults:
                setattr(values, key, defaults[key])
    return config


@dataclass
class DataBundle:
    """The loaders of a run and what the model and the run folder need to know of the data."""

    train: DeviceLoader | FileLoader | MixingLoader
    val: DeviceLoader | FileLoader | None
    test: DeviceLoader | FileLoader
    classes: list[str]
    task: str  # "single-label" (integer targets) or "multi-label" (float multi-hot targets)
    in_channels: int
    image_size: list[int]  # [height, width] of the model's input
    mean: list[float]
    std: list[float]
    description: dict  # for dataset.json
    problems: list[BadFile] = field(default_factory=list)  # bad files and folders found while listing
    # How an image file becomes the model's input at evaluation (timm's pretrained_cfg,
    # torchvision's weight transforms): saved in every checkpoint, applied by predict and serve.
    preprocess: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def bad_files(self) -> list[BadFile]:
        """Files and folders skipped so far: those found while listing, then those that
        failed to decode in any loader (a loader records them as it meets them)."""
        seen, found = set(), []
        for bad in [*self.problems, *(b for loader in self.loaders() for b in _recorded(loader))]:
            if bad not in seen:
                seen.add(bad)
                found.append(bad)
        return found

    def loaders(self) -> list:
        return [loader for loader in (self.train, self.val, self.test) if loader is not None]

    def train_class_counts(self) -> list[int]:
        """Images per class in the training split (single-label data)."""
        loader = self.train
        targets = loader.labels.cpu() if hasattr(loader, "labels") else torch.as_tensor(loader.images.targets)
        return torch.bincount(targets.long().flatten(), minlength=self.num_classes).tolist()

    def close(self) -> None:
        """End the file loaders' worker processes."""
        for loader in self.loaders():
            getattr(loader, "close", lambda: None)()


def _recorded(loader) -> list[BadFile]:
    return loader.bad_file_list() if hasattr(loader, "bad_file_list") else []


def build_data(data: DataConfig, augment: AugmentConfig | None = None, *, device: torch.device | str = "cpu",
               batch_size: int = 128, eval_batch_size: int = 512, seed: int = 0, rank: int = 0, world_size: int = 1,
               channels_last: bool = False, mean_std: tuple[list[float], list[float]] | None = None) -> DataBundle:
    """The loaders of ``data`` augmented per ``augment`` (fields left None take the dataset's
    defaults; the config is not changed).

    ``batch_size`` and ``eval_batch_size`` are global; this process (``rank`` of
    ``world_size``) gets its share. ``mean_std`` overrides the normalization (e.g. the
    pretrained weights' own); otherwise the in-memory datasets use their training split's
    statistics and the file datasets ImageNet's (a pass over a million photographs to
    measure their own would change them in the third decimal).
    """
    config = resolve_defaults(validate(RunConfig(data=copy.copy(data), augment=copy.copy(augment or AugmentConfig()))))
    data, augment = config.data, config.augment
    device = torch.device(device)
    shard = dict(rank=rank, world_size=world_size, channels_last=channels_last)
    if data.name in IN_MEMORY_DATASETS:
        bundle = _in_memory(data, augment, device, batch_size, eval_batch_size, seed, shard, mean_std)
    else:
        bundle = _from_files(data, augment, device, batch_size, eval_batch_size, seed, shard, mean_std)
    mix = BatchMix(bundle.num_classes, bundle.task == "multi-label", augment.mixup, augment.cutmix)
    if mix.active:
        bundle.train = MixingLoader(bundle.train, mix, seed=seed, rank=rank)
        bundle.description["mixing"] = {"mixup": augment.mixup, "cutmix": augment.cutmix}
    return bundle


def _in_memory(data: DataConfig, augment: AugmentConfig, device, batch_size, eval_batch_size, seed, shard,
               mean_std) -> DataBundle:
    from .datasets import load_splits

    splits = load_splits(data)
    batch_augment = BatchAugment(augment.crop_padding, augment.hflip, augment.rotation, augment.scale)
    mean, std = mean_std or normalization_stats(data.normalization, splits.in_channels, (splits.mean, splits.std))
    if len(mean) != splits.in_channels:
        raise ReslabError(f"the model takes {len(mean)}-channel images (its normalization has {len(mean)} channels) "
                          f"but {data.name} has {splits.in_channels}-channel images; set data.channels "
                          "or data.normalization")
    shard = {**shard, "resize": data.image_size}

    def loader(split, size, train):
        if split is None:
            return None
        return DeviceLoader(split, size, device, mean, std, train=train, augment=batch_augment if train else None,
                            seed=seed, **shard)

    size = [data.image_size] * 2 if data.image_size else list(splits.image_size)
    description = {**splits.describe(), "task": "single-label", "loader": "device"}
    # A file given to predict is squashed to the size the dataset's images have (all square).
    preprocess = preprocessing(size[0], None, False, mean, std, splits.in_channels)
    return DataBundle(loader(splits.train, batch_size, True), loader(splits.val, eval_batch_size, False),
                      loader(splits.test, eval_batch_size, False), splits.classes, "single-label",
                      splits.in_channels, size, list(mean), list(std), description, preprocess=preprocess)


def read_file_splits(data: DataConfig) -> FileSplits:
    """The image lists of a file dataset (no file is opened but the annotations)."""
    from .datasets import training_subset
    from .folders import split_off

    root = Path(data.root).expanduser()
    if data.name == "folder":
        from .folders import read_folder

        splits = read_folder(root, data.val_size, data.test_size, data.split_seed)
    elif data.name == "imagenet":
        from .imagenet import read_imagenet

        splits = read_imagenet(root, data.val_size, data.split_seed)
    else:
        from .coco import read_coco

        splits = read_coco(root, data.coco_year, data.keep_unannotated, data.val_size, data.split_seed)
    if data.train_size is not None:
        count = training_subset(data.train_size, len(splits.train))
        _, splits.train = split_off(splits.train, count, data.split_seed, "data.train_size")
    return splits


def _from_files(data: DataConfig, augment: AugmentConfig, device, batch_size, eval_batch_size, seed, shard,
                mean_std) -> DataBundle:
    splits = read_file_splits(data)
    decoder = resolve_decoder(data.decoder)
    workers = default_workers() if data.workers is None else data.workers
    if data.strict:
        refuse_bad_files(splits, decoder, workers)
    pipeline = ImagePipeline(
        image_size=data.image_size,
        resize_size=data.resize_size,
        center_crop=data.center_crop,
        random_resized_crop=augment.random_resized_crop,
        crop_padding=augment.crop_padding,
        hflip=augment.hflip,
        color_jitter=augment.color_jitter,
        auto_augment=augment.auto_augment,
        random_erasing=augment.random_erasing,
        interpolation=data.interpolation,
    )
    mean, std = mean_std or normalization_stats(data.normalization, 3)
    common = dict(image_size=pipeline.image_size, seed=seed, workers=workers, decoder=decoder, **shard)
    train = FileLoader(splits.train, batch_size, device, mean, std, train=True,
                       transform=train_transform(pipeline, mean), **common)
    evaluation = eval_transform(pipeline)
    val = None
    if splits.val is not None and len(splits.val):
        val = FileLoader(splits.val, eval_batch_size, device, mean, std, train=False, transform=evaluation,
                         **common)
    test = FileLoader(splits.test, eval_batch_size, device, mean, std, train=False, transform=evaluation,
                      persistent_workers=False, **common)
    description = {
        "name": splits.name, "source": splits.source, "layout": splits.layout, "task": splits.task,
        "classes": splits.classes, "image_size": [pipeline.image_size] * 2, "in_channels": 3,
        "sizes": splits.sizes(), "mean": list(mean), "std": list(std), "loader": "files",
        "decoder": decoder, "workers": workers, "pipeline": dataclasses.asdict(pipeline),
        "bad_files_at_listing": len(splits.problems), **splits.details,
    }
    preprocess = preprocessing(pipeline.image_size, pipeline.eval_resize if pipeline.center_crop else None,
                               pipeline.center_crop, mean, std, 3, pipeline.interpolation, decoder)
    return DataBundle(train, val, test, splits.classes, splits.task, 3, [pipeline.image_size] * 2, list(mean),
                      list(std), description, problems=list(splits.problems), preprocess=preprocess)


def preprocessing(image_size: int, resize_size: int | None, center_crop: bool, mean, std, channels: int,
                  interpolation: str = "bilinear", decoder: str = "pil") -> dict:
    """The evaluation transform as data: decode (EXIF orientation applied), then resize the
    shorter side to ``resize_size`` with ``interpolation`` and centre-crop ``image_size``
    square, or squash the whole image to ``image_size`` square; then normalize."""
    return {"image_size": image_size, "resize_size": resize_size, "center_crop": center_crop,
            "interpolation": interpolation, "antialias": True, "mean": list(mean), "std": list(std),
            "channels": channels, "decoder": decoder, "exif": "transpose"}


def refuse_bad_files(splits: FileSplits, decoder: str, workers: int) -> None:
    """Strict mode: decode every file of every split; the first bad one ends the run
    before it starts, with a count of all of them."""
    if splits.problems:
        first = splits.problems[0]
        raise ReslabError(f"{first.path}: {first.reason} ({len(splits.problems)} problem(s) in the dataset; "
                          "fix them, or set data.strict=false to skip them)")
    bad = []
    for images in (splits.train, splits.val, splits.test):
        if images is not None:
            bad.extend(verify_files(images, decoder, workers))
    if bad:
        raise ReslabError(f"{bad[0].path}: {bad[0].reason} ({len(bad)} bad image file(s) in the dataset; "
                          "fix or remove them, or set data.strict=false to skip them)")
