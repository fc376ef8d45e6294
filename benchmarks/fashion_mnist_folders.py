"""Fashion-MNIST as the image files a practitioner has: PNG class folders, and a multi-label
set of 2x2 mosaics as JPEGs with COCO annotations. The data of the real-file benchmarks
(folder_vs_memory.py, folder_throughput.py, coco_mosaics.py).

- ``OUT/{train,test}/<class>/<index>.png``: every image of the official splits (60,000 and
  10,000), 28x28 grey PNGs with the pixels of the IDX files, named by their index in their
  split; the class folders are the dataset's label names made filesystem-safe
  (``T-shirt/top`` -> ``T-shirt_top``, ``Ankle boot`` -> ``Ankle_boot``). ``--limit N``
  writes only the first N images of each class of each split (a stratified subset).
- ``--mosaics OUT2``: 56x56 grey JPEGs, each four Fashion-MNIST images in a 2x2 grid, in the
  layout ``--data coco`` reads (data.coco_year=2017): ``OUT2/train2017/*.jpg``,
  ``OUT2/val2017/*.jpg`` and ``OUT2/annotations/instances_{train,val}2017.json``. One
  annotation per tile (its category, a bbox over the tile), so an image is labelled with
  every class it contains, once however many tiles show it. Training mosaics are drawn from
  the training images, validation (reslab's test split) ones from the test images; by
  default each image is used once (15,000 and 2,500 mosaics).

Both are idempotent: a folder whose completion marker (a hidden JSON file) matches the
request is left as it is; an interrupted export continues (each file is written under a
temporary name and renamed, so a file present is whole); a folder holding another export is
refused. Writing uses ``--processes`` worker processes (Pillow, PNG level 6, JPEG quality 90).

    python benchmarks/fashion_mnist_folders.py OUT [--limit N] [--mosaics OUT2]
    python benchmarks/fashion_mnist_folders.py /tmp/fmnist-png --mosaics /tmp/fmnist-coco   # all of it
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from reslab.data.idx import read_idx_dataset
from reslab.errors import ReslabError

DATA_ROOT = Path("/usr/share/datasets/fashion-mnist")
FOLDER_MARKER = ".fashion-mnist-folders.json"
MOSAIC_MARKER = ".fashion-mnist-mosaics.json"
SPLITS = ("train", "test")
TILE = 28
JPEG_QUALITY = 90
YEAR = 2017  # reslab's data.coco_year default: instances_{train,val}2017.json, train2017/, val2017/

# The arrays of the splits, set before the worker processes fork so they inherit them
# rather than receive a pickled copy per task.
_IMAGES: dict[str, np.ndarray] = {}


def safe_name(label: str) -> str:
    """A class name usable as a folder name on every filesystem: runs of anything but
    letters, digits, '-', '_' and '.' become one '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def load_fashion_mnist(root: Path = DATA_ROOT) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """{split: (uint8 images (N, 28, 28), int64 labels (N,))} and the label names, read by the
    reader ``--data fashion-mnist`` uses, so the files hold its very pixels."""
    train, test, classes, _ = read_idx_dataset(Path(root), "fashion-mnist", download=False)
    arrays = {split: (data.images[:, 0].numpy(), data.labels.numpy()) for split, data in zip(SPLITS, (train, test))}
    return arrays, classes


def selected(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the images to write: all, or the first ``limit`` of each class (in file order)."""
    if limit is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)]))


def _write_atomic(image, path: Path, **options) -> None:
    temporary = path.with_name(f".{path.name}.tmp")  # hidden: image readers skip it
    image.save(temporary, **options)
    os.replace(temporary, path)


def _write_pngs(task: tuple[str, list[tuple[int, str]]]) -> int:
    """Writes the PNGs of ``(split, [(index, path), ...])`` that are not there yet; how many."""
    from PIL import Image

    split, items = task
    written = 0
    for index, path in items:
        path = Path(path)
        if not path.exists():
            _write_atomic(Image.fromarray(_IMAGES[split][index], mode="L"), path, format="PNG", compress_level=6)
            written += 1
    return written


def _write_mosaics(task: tuple[str, list[tuple[list[int], str]]]) -> int:
    """Writes the JPEG mosaics of ``(split, [(four indices, path), ...])`` not there yet."""
    from PIL import Image

    split, items = task
    written = 0
    for indices, path in items:
        path = Path(path)
        if not path.exists():
            tiles = _IMAGES[split][indices]
            grid = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
            _write_atomic(Image.fromarray(np.ascontiguousarray(grid), mode="L"), path, format="JPEG",
                          quality=JPEG_QUALITY)
            written += 1
    return written


def _run(worker, tasks: list, processes: int) -> int:
    if processes <= 1 or len(tasks) <= 1:
        return sum(worker(task) for task in tasks)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return sum(pool.imap_unordered(worker, tasks))


def _chunks(split: str, items: list, size: int = 1000) -> list:
    return [(split, items[start : start + size]) for start in range(0, len(items), size)]


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _start(out: Path, marker: Path, request: dict, what: str) -> bool:
    """True when ``out`` already holds this very export, complete. Otherwise marks it as this
    export begun (an interrupted one continues); a folder holding another is refused."""
    found = _read_marker(marker)
    if found is not None and found.get("request") != request:
        raise ReslabError(f"{out} holds another {what} ({found.get('request')}); choose another folder or delete it")
    if found is not None and found.get("complete"):
        return True
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"request": request, "complete": False}))
    return False


def write_folders(out: Path, limit: int | None = None, root: Path = DATA_ROOT, processes: int = 2) -> dict:
    """Fashion-MNIST as ``out/{train,test}/<class>/<index>.png``; returns the marker's contents
    (the request, the class folders, the image count per split and class, seconds taken)."""
    out = Path(out)
    marker = out / FOLDER_MARKER
    request = {"limit": limit, "source": str(root)}
    if _start(out, marker, request, "Fashion-MNIST export"):
        return {**json.loads(marker.read_text()), "skipped": True}
    started = time.perf_counter()
    arrays, labels_names = load_fashion_mnist(root)
    classes = [safe_name(name) for name in labels_names]
    if len(set(classes)) != len(classes):
        raise ReslabError(f"the class names {labels_names} collide once made filesystem-safe: {classes}")
    tasks, counts = [], {}
    for split in SPLITS:
        images, labels = arrays[split]
        _IMAGES[split] = images
        keep = selected(labels, limit)
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        width = len(str(len(labels) - 1))
        items = [(int(i), str(out / split / classes[labels[i]] / f"{i:0{width}d}.png")) for i in keep]
        tasks.extend(_chunks(split, items))
        counts[split] = {name: int((labels[keep] == c).sum()) for c, name in enumerate(classes)}
    written = _run(_write_pngs, tasks, processes)
    for split in SPLITS:  # the folders must hold exactly this export (no leftovers of another)
        for name, expected in counts[split].items():
            found = sum(1 for f in os.listdir(out / split / name) if f.endswith(".png") and not f.startswith("."))
            if found != expected:
                raise ReslabError(f"{out / split / name} holds {found} PNGs, this export {expected}: "
                                  "choose another folder or delete it")
    result = {"request": request, "complete": True, "classes": classes, "label_names": labels_names,
              "counts": counts, "written": written, "seconds": round(time.perf_counter() - started, 2)}
    marker.write_text(json.dumps(result, indent=1))
    return {**result, "skipped": False}


def mosaic_draws(count: int, available: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 4) image indices: consecutive permutations of the split, so every image is
    used once before any is used twice."""
    needed = 4 * count
    rounds = -(-needed // available)
    return np.concatenate([rng.permutation(available) for _ in range(rounds)])[:needed].reshape(count, 4)


def coco_document(split: str, draws: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """The COCO instances file of mosaics ``draws``: images with ids from 1, categories with
    ids 1..10 in label order, one annotation per tile (bbox [x, y, w, h] over the tile)."""
    images, annotations = [], []
    corners = [(0, 0), (TILE, 0), (0, TILE), (TILE, TILE)]  # (x, y) of tiles 0..3: row-major
    for number, indices in enumerate(draws, start=1):
        images.append({"id": number, "file_name": f"{number:012d}.jpg", "width": 2 * TILE, "height": 2 * TILE})
        for (x, y), index in zip(corners, indices):
            annotations.append({"id": len(annotations) + 1, "image_id": number,
                                "category_id": int(labels[index]) + 1, "bbox": [x, y, TILE, TILE],
                                "area": TILE * TILE, "iscrowd": 0})
    return {
        "info": {"description": f"Fashion-MNIST 2x2 mosaics ({split} images), reslab benchmarks", "year": YEAR},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": name, "supercategory": "clothing"} for c, name in enumerate(classes)],
    }


def write_mosaics(out: Path, train_count: int | None = None, val_count: int | None = None, seed: int = 0,
                  root: Path = DATA_ROOT, processes: int = 2) -> dict:
    """The mosaic COCO set under ``out`` (see the module docstring); ``train_count`` /
    ``val_count`` None use each training / test image once. Returns the marker's contents."""
    out = Path(out)
    marker = out / MOSAIC_MARKER
    request = {"train": train_count, "val": val_count, "seed": seed, "source": str(root)}
    if _start(out, marker, request, "mosaic set"):
        return {**json.loads(marker.read_text()), "skipped": True}
    started = time.perf_counter()
    arrays, label_names = load_fashion_mnist(root)
    classes = [safe_name(name) for name in label_names]
    rng = np.random.default_rng(seed)
    tasks, documents, sizes = [], {}, {}
    for split, coco_split, count in (("train", "train", train_count), ("test", "val", val_count)):
        images, labels = arrays[split]
        _IMAGES[split] = images
        count = len(labels) // 4 if count is None else count
        draws = mosaic_draws(count, len(labels), rng)
        folder = out / f"{coco_split}{YEAR}"
        folder.mkdir(parents=True, exist_ok=True)
        documents[coco_split] = coco_document(coco_split, draws, labels, classes)
        items = [(indices.tolist(), str(folder / entry["file_name"]))
                 for indices, entry in zip(draws, documents[coco_split]["images"])]
        tasks.extend(_chunks(split, items))
        sizes[coco_split] = count
    written = _run(_write_mosaics, tasks, processes)
    (out / "annotations").mkdir(exist_ok=True)
    labels_per_image = {}
    for coco_split, document in documents.items():
        present = {}
        for annotation in document["annotations"]:
            present.setdefault(annotation["image_id"], set()).add(annotation["category_id"])
        labels_per_image[coco_split] = float(np.mean([len(v) for v in present.values()]))
        path = out / "annotations" / f"instances_{coco_split}{YEAR}.json"
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, path)
        found = sum(1 for f in os.listdir(out / f"{coco_split}{YEAR}") if f.endswith(".jpg") and not f.startswith("."))
        if found != sizes[coco_split]:
            raise ReslabError(f"{out / f'{coco_split}{YEAR}'} holds {found} JPEGs, this set {sizes[coco_split]}: "
                              "choose another folder or delete it")
    result = {"request": request, "complete": True, "classes": classes, "images": sizes, "year": YEAR,
              "mean_labels_per_image": labels_per_image, "written": written,
              "seconds": round(time.perf_counter() - started, 2)}
    marker.write_text(json.dumps(result, indent=1))
    return {**result, "skipped": False}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where the PNG class folders go (train/ and test/)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the Fashion-MNIST IDX files")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each class per split")
    parser.add_argument("--mosaics", type=Path, default=None, help="also write the COCO mosaic set here")
    parser.add_argument("--train-mosaics", type=int, default=None, help="default: 15,000 (each image once)")
    parser.add_argument("--val-mosaics", type=int, default=None, help="default: 2,500 (each test image once)")
    parser.add_argument("--seed", type=int, default=0, help="the mosaics' draw")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        folders = write_folders(args.out, args.limit, args.data_root, args.processes)
        totals = {split: sum(counts.values()) for split, counts in folders["counts"].items()}
        state = "complete already, left as it is" if folders["skipped"] else (
            f"{folders['written']:,} PNGs written in {folders['seconds']:.1f} s")
        print(f"{args.out}: {totals['train']:,} training and {totals['test']:,} test images in "
              f"{len(folders['classes'])} class folders ({state})")
        print(f"  classes: {', '.join(folders['classes'])}")
        if args.mosaics is not None:
            mosaics = write_mosaics(args.mosaics, args.train_mosaics, args.val_mosaics, args.seed, args.data_root,
                                    args.processes)
            state = "complete already, left as it is" if mosaics["skipped"] else (
                f"{mosaics['written']:,} JPEGs written in {mosaics['seconds']:.1f} s")
            print(f"{args.mosaics}: {mosaics['images']['train']:,} train{YEAR} and {mosaics['images']['val']:,} "
                  f"val{YEAR} mosaics of 2x2 images, 56x56 ({state}); labels per image "
                  + ", ".join(f"{k} {v:.2f}" for k, v in mosaics["mean_labels_per_image"].items()))
    except ReslabError as exc:
        sys.exit(f"fashion_mnist_folders: error: {exc}")


if __name__ == "__main__":
    main()
