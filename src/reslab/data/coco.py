"""MS COCO 2014 / 2017 as multi-label classification: an image is labelled with every one
of the 80 categories it has at least one instance annotation of (crowd ones included),
as in ML-GCN (Chen et al. 2019) and ASL (Ridnik et al. 2021).

Files, under ``root``: ``annotations/instances_{train,val}{year}.json`` and the image
folders ``{train,val}{year}/`` (or ``images/{train,val}{year}/``). The JSON is read with
pycocotools. Targets are multi-hot rows over the categories sorted by category id; the
class names are the categories' names in that order.

The official val set is the test split; the validation split is held out of train
(``val_size``, not stratified: an image has several labels). Images without any
annotation (about 1% of train2017) are dropped unless ``keep_unannotated`` (the
literature drops them: 82,081 of 82,783 train2014 images).

A JSON that is not COCO (no ``images`` or ``categories`` list) is refused; single
entries that are broken (an annotation without ``image_id`` or ``category_id``, or
naming an image or a category the file does not have, an image without ``id`` or
``file_name``) are skipped and reported.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ReslabError
from ..extras import missing_extra
from .files import BadFile, FileSplits, ImageList
from .folders import split_off

YEARS = (2014, 2017)


def read_coco(root: Path, year: int = 2017, keep_unannotated: bool = False, val_size: float = 0.1,
              split_seed: int = 0) -> FileSplits:
    root = Path(root).expanduser()
    if year not in YEARS:
        raise ReslabError(f"data.coco_year must be 2014 or 2017, got {year}")
    problems: list[BadFile] = []
    category_ids = classes = None
    lists, dropped = {}, {}
    for split in ("train", "val"):
        annotation_file = root / "annotations" / f"instances_{split}{year}.json"
        folder = _image_folder(root, f"{split}{year}")
        coco = load_annotations(annotation_file, problems)
        ids = sorted(coco.getCatIds())
        names = [coco.cats[i]["name"] for i in ids]
        if category_ids is None:
            category_ids, classes = ids, names
        elif ids != category_ids:
            raise ReslabError(f"{annotation_file} has other categories than instances_train{year}.json")
        lists[split], dropped[split] = _image_list(coco, category_ids, root, folder, keep_unannotated)
    if not category_ids:
        raise ReslabError(f"{root / 'annotations'}: the COCO files define no categories")
    if len(lists["train"]) == 0 or len(lists["val"]) == 0:
        empty = "train" if len(lists["train"]) == 0 else "val"
        raise ReslabError(f"COCO {empty}{year} has no annotated images; set data.keep_unannotated=true "
                          "to use images without annotations")
    train, val = split_off(lists["train"], val_size, split_seed, "data.val_size")
    details = {"year": year, "category_ids": category_ids, "test_split": f"val{year}",
               "unannotated_dropped": dropped, "keep_unannotated": keep_unannotated}
    return FileSplits("coco", classes, train, val, lists["val"], source=str(root),
                      layout=f"COCO {year} instances", problems=problems, details=details)


def _image_folder(root: Path, name: str) -> Path:
    for folder in (root / name, root / "images" / name):
        if folder.is_dir():
            return folder
    raise ReslabError(f"COCO images not found: no folder {root / name} (or {root / 'images' / name})")


def load_annotations(path: Path, problems: list[BadFile]):
    """A pycocotools ``COCO`` of the file at ``path``, its broken entries left out and
    added to ``problems``."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise missing_extra("reading COCO", "coco") from None
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ReslabError(f"COCO annotations not found: {path}") from None
    except (OSError, ValueError) as exc:  # unreadable, not JSON, not UTF-8
        raise ReslabError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise ReslabError(f"{path} is not a COCO annotation file (its top level is not an object)")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ReslabError(f"{path} is not a COCO annotation file: it has no {key!r} list")
    where = str(path)
    images = _complete(data["images"], ("id", "file_name"), "images", "image", where, problems)
    image_ids = {image["id"] for image in images}
    categories = _complete(data["categories"], ("id", "name"), "categories", "category", where, problems)
    category_ids = {category["id"] for category in categories}
    annotations = []
    for number, annotation in enumerate(data.get("annotations") or []):
        missing = _missing(annotation, ("image_id", "category_id"))
        if missing:
            problems.append(BadFile(where, f"annotations[{number}]: no {missing!r}; annotation skipped"))
        elif annotation["image_id"] not in image_ids:
            problems.append(BadFile(where, f"annotations[{number}]: unknown image id {annotation['image_id']!r}; "
                                           "annotation skipped"))
        elif annotation["category_id"] not in category_ids:
            problems.append(BadFile(where, f"annotations[{number}]: unknown category id "
                                           f"{annotation['category_id']!r}; annotation skipped"))
        else:
            # pycocotools indexes annotations by id; hand-made files sometimes lack one.
            annotations.append(annotation if "id" in annotation else {**annotation, "id": f"#{number}"})
    coco = COCO()  # filled in place: the file is read once (train2017's is 450 MB)
    coco.dataset = {**data, "images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _complete(entries: list, keys: tuple[str, ...], section: str, noun: str, where: str,
              problems: list) -> list[dict]:
    """The entries of ``section`` that have every key; the others are recorded as problems."""
    kept = []
    for number, entry in enumerate(entries):
        missing = _missing(entry, keys)
        if missing:
            problems.append(BadFile(where, f"{section}[{number}]: no {missing!r}; {noun} skipped"))
        else:
            kept.append(entry)
    return kept


def _missing(entry, keys) -> str | None:
    """The first of ``keys`` that ``entry`` lacks (an id that is no int or str counts as lacking)."""
    if not isinstance(entry, dict):
        return keys[0]
    for key in keys:
        if key not in entry or (key.endswith("id") and not isinstance(entry[key], (int, str))):
            return key
    return None


def _image_list(coco, category_ids: list[int], root: Path, folder: Path,
                keep_unannotated: bool) -> tuple[ImageList, int]:
    """The images of ``coco`` under ``folder`` with their multi-hot targets, and how
    many unannotated ones were dropped."""
    column = {category: i for i, category in enumerate(category_ids)}
    prefix = os.path.relpath(folder, root)
    paths, rows, dropped = [], [], 0
    for image_id in sorted(coco.imgs, key=lambda i: (isinstance(i, str), i)):
        present = {annotation["category_id"] for annotation in coco.imgToAnns.get(image_id, ())}
        if not present and not keep_unannotated:
            dropped += 1
            continue
        row = np.zeros(len(category_ids), dtype=np.uint8)
        row[[column[c] for c in present]] = 1
        paths.append(os.path.join(prefix, coco.imgs[image_id]["file_name"]))
        rows.append(row)
    targets = np.stack(rows) if rows else np.zeros((0, len(category_ids)), dtype=np.uint8)
    return ImageList.of(root, paths, targets), dropped
