"""Datasets of image files (folders, ImageNet, COCO) and the loader that serves them.

The in-memory loader (``loader.DeviceLoader``) holds a whole small-image dataset on the
device; a dataset of full-size photographs does not fit, so ``FileLoader`` decodes and
augments each image in DataLoader worker processes and ships uint8 batches, which are
normalized on the device. It has DeviceLoader's interface and its guarantees:

- ``batch_size`` is the global batch; each of ``world_size`` processes gets its
  ``rank``-th slice of every global batch (the same split as DeviceLoader), so two
  processes see together exactly the images one process would;
- training batches follow a shuffle seeded by (seed, epoch) and drop the last partial
  batch; evaluation batches keep the dataset order and every image;
- each image's augmentation is drawn from a seed of (seed, epoch, image index), so it
  is the same whatever the number of workers or processes, and after a resume;
- ``iterate(start)`` resumes in mid-epoch by slicing the list of batches: the skipped
  images are never read.

A file that cannot be decoded never stops a run (see ``ImageFileDataset``); its path is
recorded in ``FileLoader.bad_files``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import ReslabError
from ..signals import ignore_stop_signals
from .decode import DECODERS, DEFAULT_DECODER, KNOWN_DECODERS, BadImage, decode
from .loader import batch_count, global_batches, rank_slice
from .normalization import Normalizer
from .seeding import epoch_generator, sample_seed, seeded

# Consecutive undecodable files after which a training batch gives up: that many in a
# row is a broken dataset (an unmounted disk, a wrong folder), not a few bad files.
MAX_SUBSTITUTES = 16


@dataclass(frozen=True)
class BadFile:
    """A file or folder that could not be used, and why (one line of bad_files.txt)."""

    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}\t{self.reason}"


def write_bad_files(path, bad_files: list[BadFile]) -> None:
    """Write ``bad_files`` as ``path<TAB>reason`` lines (the run folder's bad_files.txt)."""
    from ..runfs import atomic_write_text

    atomic_write_text(path, "".join(f"{bad.line()}\n" for bad in bad_files))


class PathTable:
    """Many file paths in two numpy arrays (bytes and offsets) rather than a list of str.

    Worker processes forked from the main one share its memory until they write to it,
    and merely reading a Python object writes its reference count: a list of a million
    str would be copied into every worker page by page (pytorch/pytorch#13246). Two
    numpy arrays are read without being written.
    """

    def __init__(self, paths: list[str] = ()):
        encoded = [os.fsencode(p) for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        return os.fsdecode(self.blob[self.offsets[index] : self.offsets[index + 1]].tobytes())

    def take(self, index: np.ndarray) -> PathTable:
        return PathTable([self[int(i)] for i in index])

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


@dataclass
class ImageList:
    """Image files under ``root`` and their targets: class indices (N,) int64 for a
    single-label dataset, multi-hot rows (N, C) uint8 for a multi-label one."""

    root: str
    paths: PathTable  # relative to root
    targets: np.ndarray

    def __post_init__(self):
        if len(self.paths) != len(self.targets):
            raise ValueError(f"{len(self.paths)} paths but {len(self.targets)} targets")

    @classmethod
    def of(cls, root, paths: list[str], targets) -> ImageList:
        targets = np.asarray(targets)
        if targets.ndim == 1:
            targets = targets.astype(np.int64)
        elif targets.size == 0:
            targets = targets.astype(np.uint8)
        return cls(str(root), PathTable(paths), targets)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multi_label(self) -> bool:
        return self.targets.ndim == 2

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index])

    def target(self, index: int):
        if self.multi_label:
            return torch.from_numpy(self.targets[index].astype(np.float32))
        return int(self.targets[index])

    def subset(self, index) -> ImageList:
        index = np.asarray(index, dtype=np.int64)
        return ImageList(self.root, self.paths.take(index), self.targets[index])


@dataclass
class FileSplits:
    """Train / validation / test image lists of one file dataset, and what describes it."""

    name: str
    classes: list[str]
    train: ImageList
    val: ImageList | None
    test: ImageList
    source: str = ""
    layout: str = ""  # how the files were found, e.g. "train/val/test folders", "official archives"
    problems: list[BadFile] = field(default_factory=list)  # found while listing: skipped
    details: dict = field(default_factory=dict)  # dataset-specific facts for dataset.json

    @property
    def task(self) -> str:
        return "multi-label" if self.train.multi_label else "single-label"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val) if self.val is not None else 0, "test": len(self.test)}


class ImageFileDataset(Dataset):
    """Decoded, transformed images of an ``ImageList``, indexed by (index, seed) pairs.

    A file that fails to decode must not crash a worker, and so the run. The choice made:

    - training (``substitute=True``): the next image of the list that decodes takes its
      place, so every batch keeps its size (batch norm and the split of the global batch
      among processes rely on it);
    - evaluation: a blank placeholder comes back marked not ok, and the loader drops it,
      so metrics are over the images that decode, each counted once.

    Either way the failed path and the reason travel back with the sample (a worker
    process cannot write to the main process's lists) and the loader records them, and so
    does the index of the image served: what is keyed by an image's index (its corruption
    seeds in a robustness evaluation) stays with that image when one before it fails.
    """

    def __init__(self, images: ImageList, transform, decoder: str = DEFAULT_DECODER, substitute: bool = True,
                 image_size: int = 224):
        self.images = images
        self.transform = transform
        self.decoder = decoder
        self.substitute = substitute
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, seed = key
        failures = []
        attempts = MAX_SUBSTITUTES if self.substitute else 1
        for attempt in range(attempts):
            current = (index + attempt) % len(self.images)
            path = self.images.path(current)
            try:
                image = decode(path, self.decoder)
            except BadImage as exc:
                failures.append(f"{path}\t{exc}")
                continue
            return self._transform(image, seed), self.images.target(current), True, "\n".join(failures), current
        blank = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)
        return blank, self.images.target(index), False, "\n".join(failures), index

    def _transform(self, image: torch.Tensor, seed: int | None) -> torch.Tensor:
        if self.transform is not None:
            image = self.transform(image) if seed is None else seeded(self.transform, image, seed)
        return image.as_subclass(torch.Tensor)  # a plain tensor, not a tv_tensors.Image


# ---------------------------------------------------------------- batches


class EpochBatches(Sampler):
    """This process's share of each global batch of an epoch, from batch ``start`` on.

    The order and the global batches are DeviceLoader's: a permutation drawn from
    ``epoch_generator(seed, epoch)`` (training) or the dataset order (evaluation), cut
    into ``batch_size`` pieces (``global_batches``), each split among the processes by ``rank_slice``.
    Elements are (image index, augmentation seed) pairs for ``ImageFileDataset``.
    """

    def __init__(self, count: int, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.count = count
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def batch_count(self) -> int:
        return batch_count(self.count, self.batch_size, self.train)

    def __len__(self) -> int:
        return max(0, self.batch_count() - self.start)

    def batches(self) -> list[np.ndarray]:
        """This process's image indices of every batch of the epoch (skipped ones included)."""
        generator = epoch_generator(self.seed, self.epoch)
        return [index[rank_slice(len(index), self.rank, self.world_size)].numpy()
                for index in global_batches(self.count, self.batch_size, self.train, generator)]

    def __iter__(self):
        for index in self.batches()[self.start :]:
            if self.train:
                yield [(int(i), sample_seed(self.seed, self.epoch, int(i))) for i in index]
            else:
                yield [(int(i), None) for i in index]


def _collate(samples):
    if not samples:
        return (torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0), torch.zeros(0, dtype=torch.bool), [],
                torch.zeros(0, dtype=torch.long))
    first = samples[0][0]
    out = None
    if get_worker_info() is not None:
        # Stack straight into shared memory, as default_collate does: the batch is sent
        # to the training process without another copy.
        storage = first.untyped_storage()._new_shared(len(samples) * first.numel() * first.element_size())
        out = first.new(storage).resize_(len(samples), *first.shape)
    images = torch.stack([s[0] for s in samples], out=out)
    targets = samples[0][1]
    if isinstance(targets, torch.Tensor):
        targets = torch.stack([s[1] for s in samples])
    else:
        targets = torch.tensor([s[1] for s in samples], dtype=torch.long)
    ok = torch.tensor([s[2] for s in samples], dtype=torch.bool)
    failures = [line for s in samples if s[3] for line in s[3].split("\n")]
    indices = torch.tensor([s[4] for s in samples], dtype=torch.long)
    return images, targets, ok, failures, indices


def default_workers() -> int:
    """Worker processes per loader: the CPUs this process may use, shared among the
    processes of this machine (torchrun's LOCAL_WORLD_SIZE), less one for the training
    process itself; at least 1, at most 12."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(12, per_process - 1))


class FileLoader:
    """Batches of normalized float images and their targets, on ``device``, decoded from
    files by DataLoader worker processes (see the module docstring for the guarantees).

    ``transform`` maps a decoded uint8 (3, H, W) tensor to a uint8 (3, image_size,
    image_size) one (``transforms.train_transform`` / ``eval_transform``); None is the
    evaluation resize and centre crop. ``workers`` None is ``default_workers()``.

    Workers ship uint8 images (a quarter of float32's bytes), into pinned memory when the
    device is a GPU; the transfer is asynchronous and normalization happens on the device.
    """

    def __init__(
        self,
        images: ImageList,
        batch_size: int,
        device: torch.device,
        mean: list[float],
        std: list[float],
        *,
        train: bool,
        transform=None,
        image_size: int = 224,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        workers: int | None = None,
        decoder: str = DEFAULT_DECODER,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
    ):
        if decoder not in KNOWN_DECODERS:
            raise ReslabError(f"unknown image decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        self.images = images
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train = train
        self.image_size = image_size
        self.channels_last = channels_last
        self.workers = default_workers() if workers is None else workers
        if transform is None:  # the evaluation resize and crop: every image image_size x image_size
            from .transforms import ImagePipeline, eval_transform

            transform = eval_transform(ImagePipeline(image_size=image_size))
        self.dataset = ImageFileDataset(images, transform, decoder, substitute=train, image_size=image_size)
        self.sampler = EpochBatches(len(images), batch_size, train, seed, rank, world_size)
        self.normalize = Normalizer(mean, std, self.device)
        self.bad_files: dict[str, str] = {}  # path -> reason, in the order met
        self._loader_options = dict(
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=persistent_workers and self.workers > 0,
            prefetch_factor=prefetch_factor if self.workers > 0 else None,
        )
        self._loader: DataLoader | None = None  # made at the first batch: no idle workers before

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return self.sampler.batch_count()

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start: int = 0):
        """The batches of this epoch from the ``start``-th on (a resume in mid-epoch)."""
        for images, targets, _ in self.indexed(start):
            yield images, targets

    def indexed(self, start: int = 0):
        """``iterate``'s batches with the list index of each image, (images, targets,
        indices on the CPU): an evaluation batch lacks the files that failed to decode, so
        the k-th image served is not always image k."""
        if start >= len(self):
            return
        self.sampler.start = start
        if self._loader is None:
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the
            # global one, which would shift the training process's random stream.
            self._loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=_collate,
                                      generator=torch.Generator().manual_seed(self.sampler.seed),
                                      worker_init_fn=ignore_stop_signals,
                                      **self._loader_options)
        for images, targets, ok, failures, indices in self._loader:
            for line in failures:
                path, _, reason = line.partition("\t")
                self.bad_files.setdefault(path, reason)
            if not bool(ok.all()):
                if self.train:
                    first = failures[0].partition("\t")[0]
                    raise ReslabError(f"{MAX_SUBSTITUTES} images in a row failed to decode, the first {first}; "
                                      "the dataset looks broken (a missing or unmounted folder?)")
                images, targets, indices = images[ok], targets[ok], indices[ok]
                if len(images) == 0:
                    continue
            images = self.normalize(images)
            targets = targets.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets, indices

    def bad_file_list(self) -> list[BadFile]:
        return [BadFile(path, reason) for path, reason in self.bad_files.items()]

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._loader = None


# ---------------------------------------------------------------- strict mode


class _CheckDataset(Dataset):
    """The reason each image fails to decode ("" for a good one)."""

    def __init__(self, images: ImageList, decoder: str):
        self.images, self.decoder = images, decoder

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        try:
            decode(self.images.path(index), self.decoder)
        except BadImage as exc:
            return str(exc)
        return ""


def _as_list(items):
    return items


def verify_files(images: ImageList, decoder: str = DEFAULT_DECODER, workers: int = 0) -> list[BadFile]:
    """Decode every image of ``images`` (in ``workers`` processes); the ones that fail.

    A full decode, not a look at headers: a truncated JPEG has a valid header and fails
    only when its last rows are read.
    """
    loader = DataLoader(_CheckDataset(images, decoder), batch_size=64, num_workers=workers,
                        collate_fn=_as_list, worker_init_fn=ignore_stop_signals)
    bad, offset = [], 0
    for reasons in loader:
        bad.extend(BadFile(images.path(offset + i), r) for i, r in enumerate(reasons) if r)
        offset += len(reasons)
    return bad
