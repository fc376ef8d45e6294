"""The published corrupted test sets, read from disk (Hendrycks & Dietterich, ICLR 2019):

- CIFAR-10-C and CIFAR-100-C: a folder of ``<corruption>.npy`` files, each (5 x N, 32, 32, 3)
  uint8, severities 1..5 one after the other over the same N test images in the test set's
  order, and ``labels.npy`` (5 x N,) with their classes;
- ImageNet-C (and Tiny ImageNet-C): ``<corruption>/<severity>/<class>/*.JPEG``, the class
  folders named as the dataset's (WordNet ids), each severity's files in sorted order.

``open_corrupted_set(folder)`` tells the two apart and hands out one (corruption, severity)
cell at a time: ``cell(name, severity)`` is a ``Cell`` whose ``batches(indices, size)`` yield
uint8 (N, 3, H, W) images and their labels, so a 50,000-image cell is never in memory whole.
The corruption names are the published file and folder names, which are reslab's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ReslabError
from .corruptions import CORRUPTIONS, SEVERITIES
from .decode import DEFAULT_DECODER, BadImage, decode

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass
class Cell:
    """One (corruption, severity) of a corrupted set: ``count`` images and their labels."""

    labels: np.ndarray  # (count,) class indices
    images: np.ndarray | None = None  # (count, H, W, 3) uint8, memory-mapped (CIFAR-C)
    paths: list[Path] = field(default_factory=list)  # the image files (ImageNet-C)
    image_size: int | None = None  # files of another size are resized and centre-cropped to it

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, indices: torch.Tensor, batch_size: int):
        """(uint8 (B, 3, H, W), int64 labels (B,)) for ``indices``, in batches."""
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size].numpy()
            labels = torch.from_numpy(self.labels[chosen].astype(np.int64))
            if self.images is not None:
                images = torch.from_numpy(np.ascontiguousarray(self.images[chosen])).permute(0, 3, 1, 2)
            else:
                images = torch.stack([self._read(self.paths[i]) for i in chosen])
            yield images.contiguous(), labels

    def _read(self, path: Path) -> torch.Tensor:
        try:
            image = decode(str(path), DEFAULT_DECODER)
        except BadImage as exc:
            raise ReslabError(f"cannot read {path}: {exc}") from None
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            from torchvision.transforms.v2 import functional as TF

            image = TF.center_crop(TF.resize(image, self.image_size, antialias=True), [self.image_size] * 2)
        return image


@dataclass
class CorruptedSet:
    """A folder of published corrupted images: its layout, the corruptions it holds and its classes."""

    root: Path
    layout: str  # "CIFAR-C .npy files" or "ImageNet-C folders"
    corruptions: list[str]
    classes: list[str] | None = None  # the class folders (ImageNet-C)
    image_size: int | None = None

    def check(self, names: list[str], severities: list[int]) -> None:
        missing = [name for name in names if name not in self.corruptions]
        if missing:
            raise ReslabError(f"{self.root} holds no {', '.join(missing)} (it holds {', '.join(self.corruptions)}); "
                              "ask for those it has with --corruptions")
        if self.layout == "ImageNet-C folders":
            for name in names:
                for severity in severities:
                    if not (self.root / name / str(severity)).is_dir():
                        raise ReslabError(f"{self.root / name} has no severity folder {severity}")

    def cell(self, name: str, severity: int, class_index: dict[str, int] | None = None) -> Cell:
        """The images of ``name`` at ``severity``; ImageNet-C's classes numbered by
        ``class_index`` (folder name -> the model's class), by sorted folder name without it."""
        if self.layout == "CIFAR-C .npy files":
            images = _load_npy(self.root / f"{name}.npy", mmap=True)
            labels = _load_npy(self.root / "labels.npy", mmap=False)
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) % 5:
                raise ReslabError(f"{self.root / name}.npy is not a CIFAR-C file: (5 x N, H, W, 3) uint8 expected, "
                                  f"found {images.shape} {images.dtype}")
            if labels.shape != (len(images),):
                raise ReslabError(f"{self.root / 'labels.npy'} holds {labels.shape} labels for {len(images)} images "
                                  f"in {name}.npy")
            count = len(images) // 5
            part = slice((severity - 1) * count, severity * count)
            return Cell(labels=np.asarray(labels[part]), images=images[part])
        folder = self.root / name / str(severity)
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        index = class_index or {c: k for k, c in enumerate(classes)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ReslabError(f"{folder} has class folders the model does not know ({', '.join(unknown[:3])}); "
                              "is this the dataset the model was trained on?")
        paths, labels = [], []
        for name_of_class in classes:
            files = sorted(p for p in (folder / name_of_class).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths.extend(files)
            labels.extend([index[name_of_class]] * len(files))
        if not paths:
            raise ReslabError(f"{folder} holds no images (<class>/*.JPEG expected)")
        return Cell(labels=np.asarray(labels, dtype=np.int64), paths=paths, image_size=self.image_size)


def open_corrupted_set(root: Path | str, image_size: int | None = None) -> CorruptedSet:
    """The corrupted set in ``root``: CIFAR-C .npy files or ImageNet-C folders (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReslabError(f"--corruptions-from {root} is not a folder; give the folder of CIFAR-10-C's .npy files "
                          "or ImageNet-C's corruption folders")
    npy = [name for name in CORRUPTIONS if (root / f"{name}.npy").is_file()]
    if npy:
        if not (root / "labels.npy").is_file():
            raise ReslabError(f"{root} has corruption .npy files but no labels.npy")
        return CorruptedSet(root, "CIFAR-C .npy files", npy)
    folders = [name for name in CORRUPTIONS if (root / name).is_dir()
               and any((root / name / str(s)).is_dir() for s in SEVERITIES)]
    if folders:
        return CorruptedSet(root, "ImageNet-C folders", folders, image_size=image_size)
    raise ReslabError(f"{root} holds neither CIFAR-C files (gaussian_noise.npy ..., labels.npy) nor ImageNet-C "
                      "folders (gaussian_noise/1/<class>/*.JPEG ...)")


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise ReslabError(f"{path} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ReslabError(f"cannot read {path}: {exc}") from None
