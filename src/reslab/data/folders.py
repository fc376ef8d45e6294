"""Image folders: ``root/<class>/<image>`` (torchvision's ImageFolder layout), either with
``train/``, ``val/`` and ``test/`` sub-folders or as one folder split by seed.

Which folder plays which part:

- ``train/``, ``val/``, ``test/``: each as given;
- ``train/`` and ``test/``: the validation split is held out of ``train/`` (``val_size``);
- ``train/`` and ``val/``: ``val/`` is the test split and the validation split is held out
  of ``train/``: the ImageNet convention, whose public val set is everyone's test set
  and must not also choose the checkpoint;
- one folder of class folders (or ``train/`` alone): test and validation splits are
  held out of it (``test_size``, then ``val_size``).

Held-out splits are stratified by class (sklearn's train_test_split, as
``arrays.hold_out``) and depend on ``split_seed`` only. Class names are the class folder
names, sorted; their order gives the class indices.

Files are the ones with an image extension (any case), in class folders and their
sub-folders; hidden files (``.DS_Store``, macOS's ``._photo.jpg``) are ignored. A folder
that cannot be listed is skipped and reported, or refused with ``strict``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import ReslabError
from .arrays import split_count
from .files import BadFile, FileSplits, ImageList

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")


def list_dir(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: e.name)


def class_folders(folder: Path) -> list[str]:
    """The names of the class folders in ``folder``, sorted."""
    try:
        return [e.name for e in list_dir(folder) if e.is_dir() and not e.name.startswith(".")]
    except OSError as exc:
        raise ReslabError(f"cannot list {folder}: {exc.strerror or exc}") from None


def image_files(folder: Path, problems: list[BadFile], seen: set | None = None) -> list[str]:
    """The image files below ``folder`` (recursively, sorted), as paths relative to it.

    Each real file and folder is taken once, however many links lead to it: a link loop
    (``cat/loop -> .``) or a second link to a file is reported in ``problems`` and skipped,
    so one image cannot land in two splits. Only regular files count (a FIFO named .png
    would hang the loader). A sub-folder that cannot be listed is reported and skipped.
    ``seen`` (device, inode) pairs are shared across class folders by the caller."""
    seen = set() if seen is None else seen
    own = folder.stat()
    seen.add((own.st_dev, own.st_ino))
    found = []
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = list_dir(folder / relative)
        except OSError as exc:
            problems.append(BadFile(str(folder / relative), f"unreadable directory: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(relative, entry.name) if relative else entry.name
            try:
                info = os.stat(entry.path)  # follows links: the real file or folder
            except OSError as exc:
                if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    problems.append(BadFile(entry.path, f"unreadable: {exc.strerror or exc}"))
                continue
            is_dir, is_image = stat.S_ISDIR(info.st_mode), entry.name.lower().endswith(IMAGE_EXTENSIONS)
            if not is_dir and not is_image:
                continue
            if is_image and not stat.S_ISREG(info.st_mode):
                problems.append(BadFile(entry.path, "not a regular file (a pipe, socket or device): skipped"))
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                what = "a link back to a folder already listed (a loop)" if is_dir else "a second link to a file"
                problems.append(BadFile(entry.path, f"{what}: skipped"))
                continue
            seen.add(key)
            if is_dir:
                pending.append(path)
            else:
                found.append(path)
    return sorted(found)


def scan_classes(root: Path, folder: str, classes: list[str] | None, problems: list[BadFile],
                 seen: set | None = None) -> tuple[list[str], ImageList]:
    """The images of ``root/folder/<class>/...``; with ``classes`` given (the training
    split's), a class folder outside them is refused, a missing one is simply empty."""
    base = root / folder if folder else root
    found = class_folders(base)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ReslabError(f"{base} has class folder(s) {', '.join(extra[:5])} that the training split lacks; "
                              "every split must use the training split's classes")
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    seen = set() if seen is None else seen
    seen.add((base.stat().st_dev, base.stat().st_ino))
    for name in found:
        files = image_files(base / name, problems, seen)
        prefix = os.path.join(folder, name) if folder else name
        paths.extend(os.path.join(prefix, f) for f in files)
        labels.extend([index[name]] * len(files))
    return classes, ImageList.of(root, paths, labels)


def split_off(images: ImageList, size: float, seed: int, what: str) -> tuple[ImageList, ImageList | None]:
    """(rest, held-out) of ``images``: ``size`` as a fraction (< 1) or a count, stratified
    by class where every class has two images or more; the same for the same seed."""
    from sklearn.model_selection import train_test_split

    count = split_count(size, len(images), what)
    if count == 0:
        return images, None
    stratify = None
    if not images.multi_label:
        counts = np.bincount(images.targets)
        present = int((counts > 0).sum())
        if counts[counts > 0].min() >= 2 and present <= count <= len(images) - present:
            stratify = images.targets
    rest, held = train_test_split(np.arange(len(images)), test_size=count, random_state=seed, stratify=stratify)
    return images.subset(np.sort(rest)), images.subset(np.sort(held))


def typical_image_size(root: Path, sample: int = 64) -> int | None:
    """The median shorter side of the first ``sample`` images under ``root`` (read from their
    headers; hidden files and links skipped), or None where none can be read."""
    from PIL import Image

    sides = []
    for folder, subfolders, files in os.walk(Path(root).expanduser()):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS) or os.path.islink(path):
                continue
            try:
                with Image.open(path) as image:
                    sides.append(min(image.size))
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
            if len(sides) >= sample:
                return int(np.median(sides))
    return int(np.median(sides)) if sides else None


def read_folder(root: Path, val_size: float = 0.1, test_size: float = 0.2, split_seed: int = 0,
                name: str = "folder") -> FileSplits:
    """The splits of an image-folder dataset (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReslabError(f"{root} is not a folder of images (data.root); expected class folders, or train/, "
                          "val/ and test/ sub-folders of class folders")
    present = {split: (root / split).is_dir() for split in SPLIT_FOLDERS}
    problems: list[BadFile] = []
    seen: set = set()  # every real file once, across the splits too
    if present["train"]:
        classes, train = scan_classes(root, "train", None, problems, seen)
        val = scan_classes(root, "val", classes, problems, seen)[1] if present["val"] else None
        test = scan_classes(root, "test", classes, problems, seen)[1] if present["test"] else None
        layout = "/".join(split for split in SPLIT_FOLDERS if present[split]) + " folders"
    else:
        classes, train = scan_classes(root, "", None, problems, seen)
        val = test = None
        layout = "one folder of class folders"
    if not classes:
        raise ReslabError(f"{root} has no class folders; expected {root}/<class>/<image>.jpg "
                          "or train/, val/, test/ sub-folders of class folders")
    counts = np.bincount(train.targets, minlength=len(classes)) if len(train) else np.zeros(len(classes))
    if len(classes) < 2:
        raise ReslabError(f"{root} has one class folder ({classes[0]}); a classifier needs two classes or more")
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if empty and len(train):
        raise ReslabError(f"class folder {empty[0]!r} of {root} holds no images"
                          + (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else "")
                          + ": add images or remove the folder")
    if len(train) == 0:
        raise ReslabError(f"no images in the class folders of {root} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    if test is None and val is not None:
        test, val = val, None  # train/ + val/: val/ is the test split (see the module docstring)
        layout += " (val/ as the test split)"
    if test is None:
        train, test = split_off(train, test_size, split_seed, "data.test_size")
    if val is None:
        train, val = split_off(train, val_size, split_seed, "data.val_size")
    if test is None or len(test) == 0:
        raise ReslabError(f"{name}: the test split is empty")
    check_class_counts(classes, counts, train, {"validation": val, "test": test})
    return FileSplits(name, classes, train, val, test, source=str(root), layout=layout, problems=problems)


def check_class_counts(classes: list[str], counts, train: ImageList, held_out: dict) -> None:
    """A class too small for the split: refused where no image of it is left to train on,
    one warning line per held-out split that has none of it (its figures are then missing)."""
    left = np.bincount(train.targets, minlength=len(classes))
    for name, total, kept in zip(classes, counts, left):
        if kept == 0:
            raise ReslabError(f"class {name!r} has {total} image(s), too few for the split: none is left for "
                              "training; add images (3 or more per class: training, validation and test) or "
                              "hold out fewer (data.val_size, data.test_size)")
    for split, images in held_out.items():
        if images is None or not len(images):
            continue
        absent = [c for c, n in zip(classes, np.bincount(images.targets, minlength=len(classes))) if n == 0]
        if absent:
            logger.warning("the %s split has no image of class %s%s (too few images for the split); its %s "
                           "figures for it are missing", split, repr(absent[0]),
                           f" nor of {len(absent) - 1} more" if len(absent) > 1 else "", split)
