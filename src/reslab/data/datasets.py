"""One entry point from a ``DataConfig`` to train / validation / test splits.

The validation split is held out of the training set (the paper's 45k/5k) with
``data.split_seed``, so it is the same for every training seed; the test set is the
dataset's official one (digits, which has none, holds one out the same way) and is
never used to choose anything.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import ReslabError
from .arrays import ArrayDataset, DatasetSplits, channel_stats, hold_out
from .cifar import read_cifar
from .digits import read_digits
from .idx import read_idx_dataset


def load_splits(config: DataConfig) -> DatasetSplits:
    root = Path(config.root).expanduser()
    if root.exists() and not root.is_dir():
        raise ReslabError(f"data.root {root} is a file, not a folder")
    if config.name == "digits":
        full, classes = read_digits()
        train, test = hold_out(full, config.test_size, config.split_seed, "data.test_size")
        source = "sklearn.datasets.load_digits"
    elif config.name in ("cifar10", "cifar100"):
        train, test, classes, source = read_cifar(root, config.name, config.download)
    else:
        train, test, classes, source = read_idx_dataset(root, config.name, config.download)
    if test is None or len(test) == 0:
        raise ReslabError(f"{config.name}: the test split is empty")
    train, val = hold_out(train, config.val_size, config.split_seed, "data.val_size")
    if config.train_size is not None:  # a stratified subset, drawn after the validation split so it stays fixed
        _, train = hold_out(train, training_subset(config.train_size, len(train)), config.split_seed,
                            "data.train_size")
    if config.channels is not None and config.channels != train.images.shape[1]:
        if (train.images.shape[1], config.channels) != (1, 3):
            raise ReslabError(f"data.channels={config.channels}: {config.name} has {train.images.shape[1]}-channel "
                              "images; only grayscale to RGB (1 to 3) is supported")
        train, val, test = (_to_rgb(d) if d is not None else None for d in (train, val, test))
    mean, std = channel_stats(train.images)
    return DatasetSplits(config.name, classes, train, val, test, mean, std, source)


def training_subset(size: float, available: int) -> int:
    """``data.train_size`` as a count, refused when it is not smaller than what there is."""
    count = int(round(size * available)) if size < 1 else int(size)
    if not 1 <= count < available:
        raise ReslabError(f"data.train_size={size} must pick between 1 and {available - 1} of the {available} "
                          "training images (leave it empty to train on all)")
    return count


def _to_rgb(data: ArrayDataset) -> ArrayDataset:
    return ArrayDataset(data.images.expand(-1, 3, -1, -1).contiguous(), data.labels)
