"""Datasets: readers of the real file formats, splits, and the device-resident loader."""

from .arrays import ArrayDataset, DatasetSplits
from .datasets import DEFAULT_AUGMENT, load_splits
from .loader import DeviceLoader

__all__ = ["ArrayDataset", "DatasetSplits", "DEFAULT_AUGMENT", "DeviceLoader", "load_splits"]
