"""CIFAR-10 / CIFAR-100 from the official "python version" archive (Krizhevsky 2009),
read straight from ``cifar-10-python.tar.gz`` (or its extracted folder) without
executing anything: the batches are pickles, and only numpy's array reconstruction is
allowed to be unpickled."""

from __future__ import annotations

import io
import lzma
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ReslabError
from .arrays import ArrayDataset


@dataclass(frozen=True)
class CifarSpec:
    title: str
    archive: str
    folder: str
    url: str
    md5: str
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: str
    names_key: str


SPECS = {
    "cifar10": CifarSpec(
        "CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "labels", "label_names",
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",), "test", "meta", "fine_labels", "fine_label_names",
    ),
}

# What the official batches reference: numpy's array reconstruction, nothing else.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        data = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # any unpickling failure means the file is not a CIFAR batch
        raise ReslabError(f"{where} is not a CIFAR batch ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ReslabError(f"{where} is not a CIFAR batch (not a dictionary)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line: tarfile lists each compression it tried on a line of
    its own, and an unpickling error may quote names holding line breaks."""
    if isinstance(exc, tarfile.ReadError) and str(exc).startswith("file could not be opened"):
        return "not a tar archive, plain or compressed with gzip, bzip2 or xz"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def find_cifar(root: Path, name: str) -> Path | None:
    """The archive or extracted folder of ``name`` under ``root`` (or ``root/name``), if any."""
    spec = SPECS[name]
    for folder in (root, root / name):
        for candidate in (folder / spec.folder, folder / spec.archive):
            if candidate.exists():
                return candidate
    if (root / spec.meta_member).exists():  # root is the extracted folder itself
        return root
    return None


def download_cifar(root: Path, name: str) -> Path:
    from torchvision.datasets.utils import check_integrity, download_url

    spec = SPECS[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_url(spec.url, str(root), spec.archive, spec.md5)
    except Exception as exc:  # no network, a proxy, a partial file: all end the same way
        raise ReslabError(
            f"could not download {spec.title} ({type(exc).__name__}); download {spec.url} "
            f"and put {spec.archive} in {root}"
        ) from None
    if not check_integrity(str(root / spec.archive), spec.md5):
        raise ReslabError(f"downloaded {root / spec.archive} fails its MD5 check; delete it and try again")
    return root / spec.archive


def read_cifar(root: Path, name: str, download: bool) -> tuple[ArrayDataset, ArrayDataset, list[str], str]:
    """(train, test, class names, source path) of CIFAR-10 or CIFAR-100."""
    spec = SPECS[name]
    location = find_cifar(root, name)
    if location is None:
        if not download:
            raise ReslabError(
                f"{spec.title} not found in {root}: put {spec.archive} (from {spec.url}) there, "
                "or allow data.download=true"
            )
        location = download_cifar(root, name)
    members = _read_members(location, spec)
    meta = _unpickle(members[spec.meta_member], f"{location}: {spec.meta_member}")
    if spec.names_key not in meta:
        raise ReslabError(f"{location}: {spec.meta_member} has no {spec.names_key!r}; is this {spec.title}?")
    names = meta[spec.names_key]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, (bytes, str)) for c in names):
        raise ReslabError(f"{location}: {spec.meta_member}'s {spec.names_key!r} is not a list of class names")
    classes = [c.decode(errors="replace") if isinstance(c, bytes) else c for c in names]
    train = _batches_to_arrays([members[m] for m in spec.train_members], spec, location, len(classes))
    test = _batches_to_arrays([members[spec.test_member]], spec, location, len(classes))
    return train, test, classes, str(location)


def _read_members(location: Path, spec: CifarSpec) -> dict[str, bytes]:
    wanted = [*spec.train_members, spec.test_member, spec.meta_member]
    found: dict[str, bytes] = {}
    if location.is_dir():
        for member in wanted:
            if (location / member).is_file():
                try:
                    found[member] = (location / member).read_bytes()
                except OSError as exc:
                    raise ReslabError(f"cannot read {location / member}: {exc.strerror or exc}") from None
    else:
        try:
            with tarfile.open(location, "r:*") as archive:
                for info in archive:
                    member = Path(info.name).name
                    if info.isfile() and member in wanted:
                        found[member] = archive.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise ReslabError(
                f"{location} is not a readable {spec.title} archive ({_one_line(exc)}); delete it and download "
                f"{spec.url} again"
            ) from None
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ReslabError(f"{location} is not a complete {spec.title} archive: {', '.join(missing)} missing")
    return found


def _batches_to_arrays(raws: list[bytes], spec: CifarSpec, location: Path, num_classes: int) -> ArrayDataset:
    images, labels = [], []
    for raw in raws:
        batch = _unpickle(raw, str(location))
        if "data" not in batch or spec.label_key not in batch:
            raise ReslabError(f"{location}: a batch lacks 'data' or {spec.label_key!r}; is this {spec.title}?")
        data, batch_labels = _integers(batch["data"], location, "data"), _integers(batch[spec.label_key], location,
                                                                                   spec.label_key)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ReslabError(f"{location}: batch data has shape {data.shape}, expected (N, 3072)")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ReslabError(f"{location}: pixel values outside 0..255; is this {spec.title}?")
        if batch_labels.shape != (len(data),):
            raise ReslabError(f"{location}: a batch has {len(data)} images but {batch_labels.size} labels")
        images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    image_array, label_array = np.concatenate(images), np.concatenate(labels)
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= num_classes):
        raise ReslabError(f"{location}: labels outside 0..{num_classes - 1}")
    return ArrayDataset(torch.from_numpy(image_array), torch.from_numpy(label_array))


def _integers(value, location: Path, key: str) -> np.ndarray:
    """A batch's ``key`` as an integer array, or a one-line error (strings, floats, objects)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "iu":
        raise ReslabError(f"{location}: a batch's {key!r} is not an array of integers")
    return array
