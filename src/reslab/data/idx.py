"""MNIST-family datasets (MNIST, Fashion-MNIST, KMNIST) from their IDX files
(``train-images-idx3-ubyte[.gz]`` etc., LeCun et al.'s format: a big-endian header of
two zero bytes, a type code, the number of dimensions and each dimension's size)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import ReslabError
from .arrays import ArrayDataset

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The torchvision dataset class of each (for its downloader, mirrors and class names).
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file as an array; a wrong or cut file gives a ``ReslabError``."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ReslabError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ReslabError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ReslabError(f"{path}: IDX type code 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ReslabError(f"{path} is truncated (header cut short)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise ReslabError(f"{path} holds {len(raw) - header} bytes of data, its header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str, name: str) -> Path | None:
    folder_names = [name, TORCHVISION_CLASS[name]]
    folders = [root] + [root / f for f in folder_names] + [root / f / "raw" for f in folder_names]
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _download(root: Path, name: str) -> None:
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, TORCHVISION_CLASS[name])(str(root), download=True)
    except Exception as exc:  # no network or a bad mirror
        raise ReslabError(
            f"could not download {name} ({type(exc).__name__}); put its four IDX files "
            f"({', '.join(FILES['train'] + FILES['test'])}, optionally .gz) in {root / name}"
        ) from None


def class_names(name: str) -> list[str]:
    import torchvision.datasets

    return list(getattr(torchvision.datasets, TORCHVISION_CLASS[name]).classes)


def read_idx_dataset(root: Path, name: str, download: bool) -> tuple[ArrayDataset, ArrayDataset, list[str], str]:
    """(train, test, class names, source folder) of an MNIST-family dataset."""
    if _find(root, FILES["train"][0], name) is None:
        if not download:
            raise ReslabError(
                f"{name} not found in {root}: put {', '.join(FILES['train'] + FILES['test'])} "
                f"(optionally .gz) in {root / name}, or allow data.download=true"
            )
        _download(root, name)
    splits = []
    for image_stem, label_stem in FILES.values():
        image_path, label_path = _find(root, image_stem, name), _find(root, label_stem, name)
        if image_path is None or label_path is None:
            raise ReslabError(f"{name}: {image_stem if image_path is None else label_stem} not found in {root}")
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ReslabError(
                f"{image_path} and {label_path} do not match: image shape {images.shape}, label shape {labels.shape}"
            )
        splits.append(
            ArrayDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
        )
    classes = class_names(name)
    for split, data in zip(FILES, splits):
        if len(data) == 0:
            raise ReslabError(f"{name}: the {split} files hold no images")
        if int(data.labels.max()) >= len(classes):
            raise ReslabError(f"{name}: {split} labels go up to {int(data.labels.max())}, but it has "
                              f"{len(classes)} classes")
    return splits[0], splits[1], classes, str(image_path.parent)
