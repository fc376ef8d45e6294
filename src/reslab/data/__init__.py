"""Datasets: readers of the real file formats, splits, the device-resident loader for small
images and the worker-process loader for image files; ``build_data`` puts them together."""

from .arrays import ArrayDataset, DatasetSplits
from .datasets import load_splits
from .files import FileLoader
from .loader import DeviceLoader
from .sources import DataBundle, build_data, resolve_defaults

__all__ = ["ArrayDataset", "DataBundle", "DatasetSplits", "DeviceLoader", "FileLoader", "build_data", "load_splits",
           "resolve_defaults"]
