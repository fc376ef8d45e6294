"""ILSVRC2012 (ImageNet-1k) classification, in the layouts it comes in:

- prepared: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (also under Kaggle's
  ``ILSVRC/Data/CLS-LOC/``);
- official archives: ``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` and
  ``ILSVRC2012_devkit_t12.tar.gz``, which ``torchvision.datasets.ImageNet`` checks
  (MD5), extracts into the prepared layout and whose devkit it parses into ``meta.bin``;
- a flat ``val/`` folder of ``ILSVRC2012_val_00000001.JPEG`` ... with its labels from
  the devkit (``meta.bin``, or the devkit archive, parsed by torchvision) or from
  Kaggle's ``LOC_val_solution.csv``; the files are read where they are, not moved.

Class names are human-readable where the metadata is there: torchvision's ``meta.bin``
(from the devkit) or Kaggle's ``LOC_synset_mapping.txt``; otherwise the WordNet ids. A
name is the synset's first word ("tench"); the few shared by two synsets ("crane": the
bird and the machine) carry their WordNet id.

The public val set is the test split (its labels choose nothing); the validation split
is held out of train/ by ``val_size`` (``folders.read_folder``'s train/ + val/ rule). A
``test/`` folder (Kaggle's unlabelled test images) is ignored.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from ..errors import ReslabError
from .files import FileSplits, ImageList
from .folders import IMAGE_EXTENSIONS, list_dir, scan_classes, split_off

ARCHIVES = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar"}
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META = "meta.bin"  # torchvision's parse of the devkit: ({wnid: (names, ...)}, [val image wnids])
KAGGLE_FOLDER = Path("ILSVRC") / "Data" / "CLS-LOC"


def read_imagenet(root: Path, val_size: float = 0.1, split_seed: int = 0) -> FileSplits:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReslabError(f"ImageNet not found: {root} is not a folder (data.root); it should hold train/ and val/ "
                          f"with one folder per synset, or {ARCHIVES['train']}, {ARCHIVES['val']} and {DEVKIT}")
    base = root / KAGGLE_FOLDER if (root / KAGGLE_FOLDER / "train").is_dir() else root
    layout = "prepared" if base == root else "Kaggle"
    for split, archive in ARCHIVES.items():
        if not (base / split).is_dir() and (root / archive).is_file():
            _extract_official(root, split)
            layout = "official archives"
    if not (base / "train").is_dir():
        raise ReslabError(f"ImageNet not found in {root}: no train/ folder and no {ARCHIVES['train']}")
    if not (base / "val").is_dir():
        raise ReslabError(f"ImageNet not found in {root}: no val/ folder and no {ARCHIVES['val']}")

    meta = _meta(root)
    problems = []
    wnids, train = scan_classes(base, "train", None, problems)
    if not wnids or len(train) == 0:
        raise ReslabError(f"{base / 'train'} has no synset folders with images")
    if _is_flat(base / "val"):
        test = _flat_val(root, base, wnids, meta)
        layout += ", flat val/ folder"
    else:
        test = scan_classes(base, "val", wnids, problems)[1]
    if len(test) == 0:
        raise ReslabError(f"{base / 'val'} holds no images")
    train, val = split_off(train, val_size, split_seed, "data.val_size")
    names, naming = class_names(root, wnids, meta)
    return FileSplits("imagenet", names, train, val, test, source=str(root), layout=layout, problems=problems,
                      details={"wnids": wnids, "class_names_from": naming, "test_split": "ILSVRC2012 val"})


def _extract_official(root: Path, split: str) -> None:
    """Let torchvision check, extract and sort an official archive (and parse the devkit)."""
    import torchvision.datasets

    try:
        torchvision.datasets.ImageNet(str(root), split=split)
    except (RuntimeError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise ReslabError(f"could not prepare ImageNet {split} from the archives in {root}: {message}") from None


def _is_flat(folder: Path) -> bool:
    """True if ``folder`` holds image files rather than class folders."""
    try:
        entries = list_dir(folder)
    except OSError as exc:
        raise ReslabError(f"cannot list {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.is_dir():
            return False
        if entry.name.lower().endswith(IMAGE_EXTENSIONS):
            return True
    return False


def _meta(root: Path) -> tuple[dict, list[str]] | None:
    """torchvision's parse of the devkit (reading ``meta.bin``, or making it from the
    devkit archive), or None when neither is there."""
    from torchvision.datasets.imagenet import load_meta_file, parse_devkit_archive

    if not (root / META).is_file() and (root / DEVKIT).is_file():
        try:
            parse_devkit_archive(str(root))
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise ReslabError(f"{root / DEVKIT} could not be read: {' '.join(str(exc).split())}") from None
    if not (root / META).is_file():
        return None
    try:
        return load_meta_file(str(root))
    except Exception as exc:  # torch.load of a foreign or cut file
        raise ReslabError(f"{root / META} is not torchvision's ImageNet meta file ({type(exc).__name__}); "
                          "delete it to have it made again from the devkit") from None


def _flat_val(root: Path, base: Path, wnids: list[str], meta) -> ImageList:
    """The flat val/ folder, labelled by the devkit (files in sorted order) or by Kaggle's csv."""
    files = sorted(e.name for e in list_dir(base / "val") if e.name.lower().endswith(IMAGE_EXTENSIONS))
    index = {wnid: i for i, wnid in enumerate(wnids)}
    solution = root / "LOC_val_solution.csv"
    if meta is not None:
        labels_by_order = meta[1]
        if len(labels_by_order) != len(files):
            raise ReslabError(f"{base / 'val'} holds {len(files)} images but the devkit labels "
                              f"{len(labels_by_order)}; it needs all 50,000 ILSVRC2012_val_*.JPEG files")
        wnid_of = dict(zip(files, labels_by_order))
    elif solution.is_file():
        with solution.open(newline="") as handle:
            wnid_of = {f"{row['ImageId']}.JPEG": row["PredictionString"].split()[0] for row in csv.DictReader(handle)}
        missing = [f for f in files if f not in wnid_of]
        if missing:
            raise ReslabError(f"{solution} has no label for {base / 'val' / missing[0]} ({len(missing)} unlabelled)")
    else:
        raise ReslabError(f"{base / 'val'} is a flat folder of images; its labels need {DEVKIT} (or torchvision's "
                          f"{META}) or Kaggle's LOC_val_solution.csv in {root}")
    unknown = sorted({w for w in wnid_of.values() if w not in index})
    if unknown:
        raise ReslabError(f"the val labels name synset {unknown[0]}, which has no folder in {base / 'train'}")
    labels = [index[wnid_of[f]] for f in files]
    return ImageList.of(base, [os.path.join("val", f) for f in files], labels)


def class_names(root: Path, wnids: list[str], meta) -> tuple[list[str], str]:
    """Human-readable names of ``wnids`` and where they came from."""
    words = None
    if meta is not None:
        words, source = {wnid: list(names) for wnid, names in meta[0].items()}, META
    elif (root / "LOC_synset_mapping.txt").is_file():
        words, source = {}, "LOC_synset_mapping.txt"
        for line in (root / "LOC_synset_mapping.txt").read_text().splitlines():
            wnid, _, text = line.strip().partition(" ")
            if wnid:
                words[wnid] = [w.strip() for w in text.split(",")]
    if words is None:
        return list(wnids), "wnids (no devkit, meta.bin or LOC_synset_mapping.txt)"
    first = [words[w][0] if w in words and words[w] and words[w][0] else w for w in wnids]
    shared = {name for name, n in Counter(first).items() if n > 1}
    return [f"{name} ({wnid})" if name in shared else name for name, wnid in zip(first, wnids)], source
