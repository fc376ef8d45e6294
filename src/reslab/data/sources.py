"""One entry point from the data and augmentation config to the loaders a run consumes:
``build_data`` returns a ``DataBundle`` of train / validation / test loaders (DeviceLoader
for the small in-memory datasets, FileLoader for folders of images, ImageNet and COCO)
with what describes them.

``DataOptions`` and ``AugmentOptions`` list the config fields this needs: the ones of
``config.DataConfig`` / ``config.AugmentConfig`` and those the file datasets add. Either
kind of object can be passed; fields a config does not have take their defaults here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ReslabError
from .files import DECODERS, DEFAULT_DECODER, BadFile, FileLoader, FileSplits, default_workers, verify_files
from .loader import BatchAugment, DeviceLoader
from .transforms import AUTO_AUGMENTS, BatchMix, ImagePipeline, MixingLoader, eval_transform, train_transform

IN_MEMORY_DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "kmnist")
FILE_DATASETS = ("folder", "imagenet", "coco")
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

# What a file dataset gets where the config leaves a field to the dataset (None).
# ImageNet-style: RandomResizedCrop to 224 and flip, evaluation on the central 224 of the
# image resized to 256. COCO: the whole image squashed to 448x448 (ML-GCN's and ASL's
# resolution) with a flip; a random crop could cut a labelled object out.
FILE_DEFAULTS = {
    "folder": {"image_size": 224, "center_crop": True, "random_resized_crop": 0.08, "hflip": True},
    "imagenet": {"image_size": 224, "center_crop": True, "random_resized_crop": 0.08, "hflip": True},
    "coco": {"image_size": 448, "center_crop": False, "random_resized_crop": 0.0, "hflip": True},
}


def augment_defaults(name: str) -> dict:
    """The values the augmentation fields left None take for dataset ``name`` (for the
    loop to resolve once and write into the run's config.yaml)."""
    if name in FILE_DEFAULTS:
        return {"crop_padding": 0, "hflip": FILE_DEFAULTS[name]["hflip"],
                "random_resized_crop": FILE_DEFAULTS[name]["random_resized_crop"]}
    from .datasets import DEFAULT_AUGMENT

    return {**DEFAULT_AUGMENT[name], "random_resized_crop": 0.0}


@dataclass
class DataOptions:
    """``DataConfig``'s fields and the ones file datasets add (proposed for config.py)."""

    name: str = "digits"  # + folder, imagenet, coco
    root: str = "data"
    download: bool = True
    val_size: float = 0.1
    test_size: float = 0.2
    train_size: float | None = None
    split_seed: int = 0
    normalization: str = "auto"  # file datasets: auto and dataset mean the ImageNet statistics
    image_size: int | None = None  # file datasets: the crop side the model sees (None: 224, COCO 448)
    channels: int | None = None
    resize_size: int | None = None  # evaluation resize of the shorter side before the centre crop (None: size/0.875)
    center_crop: bool | None = None  # evaluation: centre crop (True) or whole image squashed (False); None: dataset's
    coco_year: int = 2017  # 2014 or 2017
    keep_unannotated: bool = False  # COCO: keep images without any annotation (all-zero targets)
    strict: bool = False  # decode every file before training and refuse the dataset at the first bad one
    workers: int | None = None  # loader worker processes per loader; None: from the CPUs available
    decoder: str = "auto"  # auto, torchvision, pil

    @classmethod
    def of(cls, config) -> "DataOptions":
        return _copy_fields(cls, config)


@dataclass
class AugmentOptions:
    """``AugmentConfig``'s fields and the ones file datasets add (proposed for config.py)."""

    crop_padding: int | None = None
    hflip: bool | None = None
    rotation: float = 0.0
    scale: float = 0.0
    random_resized_crop: float | None = None  # file datasets: smallest crop area (0.08); 0 off; None: dataset's
    color_jitter: float = 0.0
    auto_augment: str = "none"  # none, trivial, rand, auto
    random_erasing: float = 0.0  # probability
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 off (both on: one of them per batch)

    @classmethod
    def of(cls, config) -> "AugmentOptions":
        return _copy_fields(cls, config)


def _copy_fields(cls, config):
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(config).items() if k in names})


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


def _recorded(loader) -> list[BadFile]:
    return loader.bad_file_list() if hasattr(loader, "bad_file_list") else []


def build_data(data, augment=None, *, device: torch.device | str = "cpu", batch_size: int = 128,
               eval_batch_size: int = 512, seed: int = 0, rank: int = 0, world_size: int = 1,
               channels_last: bool = False, mean_std: tuple[list[float], list[float]] | None = None) -> DataBundle:
    """The loaders of ``data`` (a DataConfig or DataOptions) augmented per ``augment``
    (an AugmentConfig or AugmentOptions; fields left None take the dataset's defaults).

    ``batch_size`` and ``eval_batch_size`` are global; this process (``rank`` of
    ``world_size``) gets its share. ``mean_std`` overrides the normalisation (e.g. the
    pretrained weights' own); otherwise the in-memory datasets use their training split's
    statistics and the file datasets ImageNet's (a pass over a million photographs to
    measure their own would change them in the third decimal).
    """
    options = DataOptions.of(data)
    augment = AugmentOptions.of(augment)
    check_options(options, augment)
    device = torch.device(device)
    shard = dict(rank=rank, world_size=world_size, channels_last=channels_last)
    if options.name in IN_MEMORY_DATASETS:
        bundle = _in_memory(options, augment, device, batch_size, eval_batch_size, seed, shard, mean_std)
    else:
        bundle = _from_files(options, augment, device, batch_size, eval_batch_size, seed, shard, mean_std)
    mix = BatchMix(bundle.num_classes, bundle.task == "multi-label", augment.mixup, augment.cutmix)
    if mix.active:
        bundle.train = MixingLoader(bundle.train, mix, seed=seed, rank=rank)
        bundle.description["mixing"] = {"mixup": augment.mixup, "cutmix": augment.cutmix}
    return bundle


def check_options(options: DataOptions, augment: AugmentOptions) -> None:
    """Refuse values no dataset can use, naming the config key."""
    names = IN_MEMORY_DATASETS + FILE_DATASETS
    checks = [
        ("data.name", options.name in names, f"must be one of {', '.join(names)}"),
        ("data.decoder", options.decoder in ("auto", *DECODERS), f"must be one of auto, {', '.join(DECODERS)}"),
        ("data.coco_year", options.coco_year in (2014, 2017), "must be 2014 or 2017"),
        ("data.workers", options.workers is None or options.workers >= 0, "must not be negative"),
        ("data.resize_size", options.resize_size is None or options.resize_size >= 1, "must be at least 1"),
        ("augment.auto_augment", augment.auto_augment in AUTO_AUGMENTS, f"must be one of {', '.join(AUTO_AUGMENTS)}"),
        ("augment.random_resized_crop", augment.random_resized_crop is None or 0 <= augment.random_resized_crop <= 1,
         "must be in [0, 1]"),
        ("augment.color_jitter", augment.color_jitter >= 0, "must not be negative"),
        ("augment.random_erasing", 0 <= augment.random_erasing <= 1, "must be in [0, 1]"),
        ("augment.mixup", augment.mixup >= 0, "must not be negative"),
        ("augment.cutmix", augment.cutmix >= 0, "must not be negative"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ReslabError(f"config key '{key}' {message}, got {_value(options, augment, key)!r}")
    if options.name in FILE_DATASETS and options.channels == 1:
        raise ReslabError(f"data.channels=1: {options.name} images are read as RGB; leave data.channels empty or 3")


def _value(options, augment, key):
    section, name = key.split(".")
    return getattr(options if section == "data" else augment, name)


def _in_memory(options, augment, device, batch_size, eval_batch_size, seed, shard, mean_std) -> DataBundle:
    from ..config import DataConfig
    from .datasets import DEFAULT_AUGMENT, load_splits

    config = DataConfig(**{f.name: getattr(options, f.name) for f in dataclasses.fields(DataConfig)})
    splits = load_splits(config)
    defaults = DEFAULT_AUGMENT[options.name]
    crop_padding = augment.crop_padding if augment.crop_padding is not None else defaults["crop_padding"]
    hflip = augment.hflip if augment.hflip is not None else defaults["hflip"]
    batch_augment = BatchAugment(crop_padding, hflip, augment.rotation, augment.scale)
    mean, std = mean_std or memory_normalization(options.normalization, splits)
    if len(mean) != splits.in_channels:
        raise ReslabError(f"the model takes {len(mean)}-channel images (its normalisation has {len(mean)} channels) "
                          f"but {options.name} has {splits.in_channels}-channel images; set data.channels "
                          "or data.normalization")
    shard = {**shard, "resize": options.image_size}

    def loader(split, size, train):
        if split is None:
            return None
        return DeviceLoader(split, size, device, mean, std, train=train, augment=batch_augment if train else None,
                            seed=seed, **shard)

    size = [options.image_size] * 2 if options.image_size else list(splits.image_size)
    description = {**splits.describe(), "task": "single-label", "loader": "device"}
    return DataBundle(loader(splits.train, batch_size, True), loader(splits.val, eval_batch_size, False),
                      loader(splits.test, eval_batch_size, False), splits.classes, "single-label",
                      splits.in_channels, size, list(mean), list(std), description)


def memory_normalization(kind: str, splits) -> tuple[list[float], list[float]]:
    channels = splits.in_channels
    if kind == "imagenet":
        if channels != 3:
            raise ReslabError("data.normalization=imagenet needs RGB images; set data.channels=3")
        return IMAGENET_STATS
    if kind == "inception":
        return [0.5] * channels, [0.5] * channels
    if kind == "none":
        return [0.0] * channels, [1.0] * channels
    return splits.mean, splits.std  # auto, dataset


def read_file_splits(options: DataOptions) -> FileSplits:
    """The image lists of a file dataset (no file is opened but the annotations)."""
    from .datasets import training_subset
    from .folders import split_off

    root = Path(options.root).expanduser()
    if options.name == "folder":
        from .folders import read_folder

        splits = read_folder(root, options.val_size, options.test_size, options.split_seed)
    elif options.name == "imagenet":
        from .imagenet import read_imagenet

        splits = read_imagenet(root, options.val_size, options.split_seed)
    else:
        from .coco import read_coco

        splits = read_coco(root, options.coco_year, options.keep_unannotated, options.val_size, options.split_seed)
    if options.train_size is not None:
        count = training_subset(options.train_size, len(splits.train))
        _, splits.train = split_off(splits.train, count, options.split_seed, "data.train_size")
    return splits


def file_normalization(kind: str) -> tuple[list[float], list[float]]:
    if kind == "inception":
        return [0.5] * 3, [0.5] * 3
    if kind == "none":
        return [0.0] * 3, [1.0] * 3
    return IMAGENET_STATS  # auto, dataset, imagenet


def _from_files(options, augment, device, batch_size, eval_batch_size, seed, shard, mean_std) -> DataBundle:
    splits = read_file_splits(options)
    decoder = DEFAULT_DECODER if options.decoder == "auto" else options.decoder
    workers = default_workers() if options.workers is None else options.workers
    if options.strict:
        refuse_bad_files(splits, decoder, workers)
    defaults = FILE_DEFAULTS[options.name]
    pipeline = ImagePipeline(
        image_size=options.image_size or defaults["image_size"],
        resize_size=options.resize_size,
        center_crop=defaults["center_crop"] if options.center_crop is None else options.center_crop,
        random_resized_crop=(defaults["random_resized_crop"] if augment.random_resized_crop is None
                             else augment.random_resized_crop),
        hflip=defaults["hflip"] if augment.hflip is None else augment.hflip,
        color_jitter=augment.color_jitter,
        auto_augment=augment.auto_augment,
        random_erasing=augment.random_erasing,
    )
    mean, std = mean_std or file_normalization(options.normalization)
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
    return DataBundle(train, val, test, splits.classes, splits.task, 3, [pipeline.image_size] * 2, list(mean),
                      list(std), description, problems=list(splits.problems))


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
