"""The same training through image files and in memory: Fashion-MNIST read from PNG class
folders (``--data folder``, the practitioner's path: worker processes decode and augment
each file) against the IDX files held in memory (``--data fashion-mnist``), same recipe,
epochs, splits and augmentation, in one run, on the same machine.

What makes the two comparable (set explicitly on both, whatever the recipe or the
dataset defaults say):

- the pixels: the PNGs are the IDX images (fashion_mnist_folders.py), decoded as RGB by
  the folder reader; the in-memory images are repeated into 3 channels (data.channels=3),
  so both models take 3-channel 28x28 inputs (data.image_size=28, no resize on either);
- normalization ``inception`` ((x - 0.5) / 0.5 on both: the in-memory default would be the
  training split's statistics, the folder default ImageNet's);
- augmentation: a pad-2 random crop and a horizontal flip on both (augment.crop_padding,
  augment.hflip), no random-resized crop and no centre crop at evaluation on the folder;
- the splits: validation held out of the 60,000 training images (data.val_size), then a
  stratified training subset (data.train_size), both with data.split_seed 0; the test set is
  the official 10,000 on both (all of test/ when the folders are complete). Which images
  fall in each subset differs (the two paths list the images in different orders).

The in-memory path is trained with several seeds (--seeds) to measure the seed-to-seed
noise; the folder path with --folder-seeds. The verdict: is each folder accuracy within the
in-memory seeds' mean +/- 2 sample standard deviations (the criterion), and within their
min-max range (also printed)?

    python benchmarks/folder_vs_memory.py --folders /tmp/fmnist-png --train-size 10000 --epochs 3
    python benchmarks/folder_vs_memory.py --folders /tmp/fmnist-png --seeds 0,1,2 --folder-seeds 0,1 model.name=resnet8

The folders are written first where they are not complete (all 70,000 images, about a
minute). Prints a table (path, seed, test accuracy, training seconds, wall seconds,
training images/s) and the verdict; writes benchmarks/results/folder_vs_memory.json (or
--json) with the CPU flags and the exact ``reslab train`` command of every run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from reslab.config import load
from reslab.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks beside this one
from fashion_mnist_folders import DATA_ROOT, FOLDER_MARKER, write_folders

from common import cpu_flags, run_script, write_figures

RESULTS = Path(__file__).parent / "results"
# The resolved settings that must agree between the two paths (read back from each run's config.yaml).
COMPARED = {"data": ("image_size", "normalization", "val_size", "train_size", "split_seed"),
            "augment": ("crop_padding", "hflip", "rotation", "scale", "mixup", "cutmix"),
            "train": ("epochs", "batch_size", "label_smoothing", "ema", "tta", "precision", "channels_last"),
            "optim": ("name", "lr", "momentum", "nesterov", "weight_decay"),
            "schedule": ("name",), "model": ("name", "shortcut")}


def common_overrides(args) -> list[str]:
    """The settings both paths share (see the module docstring)."""
    return [f"train.epochs={args.epochs}", "train.max_iters=null", f"data.train_size={args.train_size}",
            f"data.val_size={args.val_size}", f"data.image_size={args.image_size}", "data.normalization=inception",
            f"augment.crop_padding={args.crop_padding}", "augment.hflip=true", "augment.random_resized_crop=0",
            "data.download=false", "output.plots=false"]


def path_overrides(path: str, args) -> list[str]:
    if path == "memory":
        return ["data.name=fashion-mnist", f"data.root={args.data_root}", "data.channels=3"]
    workers = [] if args.workers is None else [f"data.workers={args.workers}"]
    return ["data.name=folder", f"data.root={args.folders}", "data.center_crop=false", *workers]


def run(path: str, seed: int, args, out: Path) -> dict:
    """One training run; its row of the table, with the exact command."""
    overrides = [*common_overrides(args), *path_overrides(path, args), f"train.seed={seed}", *args.overrides,
                 f"output.dir={out}", f"output.name={path}-seed{seed}"]
    config = load(args.recipe, overrides)
    started = time.perf_counter()
    result = train(config, progress=False)
    wall = time.perf_counter() - started
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    dataset = json.loads((result.run_dir / "dataset.json").read_text())
    metrics = result.metrics
    row = {"path": path, "seed": seed, "test_accuracy": metrics["test"]["accuracy"],
           "val_accuracy": (metrics.get("val") or {}).get("accuracy"), "train_seconds": metrics["train_seconds"],
           "wall_seconds": wall, "images_per_second": metrics["images_per_second"], "epochs": metrics["epochs"],
           "best_weights": metrics.get("best_weights"), "sizes": dataset["sizes"], "test_samples":
           metrics["test"]["samples"], "bad_files": metrics["bad_files"],
           "settings": {section: {key: saved[section].get(key) for key in keys} for section, keys in COMPARED.items()},
           "pipeline": dataset.get("pipeline"), "loader": dataset.get("loader"), "workers": dataset.get("workers"),
           "decoder": dataset.get("decoder"),
           "command": shlex.join(["reslab", "train", "--config", args.recipe, *overrides, "--no-progress"])}
    print(f"  {path:<7} seed {seed}: test accuracy {row['test_accuracy']:.4f}  {row['train_seconds']:6.1f} s training"
          f"  {wall:6.1f} s wall  {row['images_per_second']:5.0f} img/s", flush=True)
    return row


def verdict(memory: list[float], folder: list[float]) -> dict:
    """Each folder accuracy against the in-memory seeds' noise."""
    mean = statistics.fmean(memory)
    std = statistics.stdev(memory) if len(memory) > 1 else 0.0
    band = [mean - 2 * std, mean + 2 * std]
    spread = [min(memory), max(memory)]
    return {
        "criterion": "folder accuracy within the in-memory seeds' mean +/- 2 sample standard deviations",
        "memory_mean": mean, "memory_std": std, "memory_seeds": len(memory), "band": band, "min_max": spread,
        "folder_accuracies": folder, "folder_mean": statistics.fmean(folder),
        "difference_of_means": statistics.fmean(folder) - mean,
        "within_band": all(band[0] <= a <= band[1] for a in folder),
        "within_min_max": all(spread[0] <= a <= spread[1] for a in folder),
        "enough_seeds": len(memory) >= 2,
    }


def print_table(rows: list[dict]) -> None:
    print("\n| path | seed | test accuracy | training s | wall s | training img/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        name = "folder (PNG files)" if row["path"] == "folder" else "in memory (IDX)"
        print(f"| {name} | {row['seed']} | {row['test_accuracy']:.4f} | {row['train_seconds']:.1f} | "
              f"{row['wall_seconds']:.1f} | {row['images_per_second']:.0f} |")


def seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=Path, required=True,
                        help="the PNG class folders (fashion_mnist_folders.py; written here if not complete)")
    parser.add_argument("--limit", type=int, default=None,
                        help="folders of the first N images per class and split (a quick look: the test sets differ)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the Fashion-MNIST IDX files")
    parser.add_argument("--recipe", default="fast-fashion-mnist-resnet20")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--crop-padding", type=int, default=2)
    parser.add_argument("--seeds", type=seeds, default=[0, 1, 2], help="in-memory seeds, e.g. 0,1,2")
    parser.add_argument("--folder-seeds", type=seeds, default=[0], help="folder seeds, e.g. 0 or 0,1")
    parser.add_argument("--workers", type=int, default=None, help="the folder loader's processes (default: reslab's)")
    parser.add_argument("--runs", type=Path, default=None, help="keep the run folders here (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=RESULTS / "folder_vs_memory.json")
    parser.add_argument("overrides", nargs="*", help="section.key=value for both paths (e.g. model.name=resnet8)")
    args = parser.parse_args(argv)
    if not (args.folders / FOLDER_MARKER).is_file():
        print(f"writing the PNG class folders into {args.folders} ...", flush=True)
    folders = write_folders(args.folders, args.limit, root=args.data_root)["request"]
    machine = cpu_flags()
    print(f"machine: {machine}")
    print(f"recipe {args.recipe}, {args.epochs} epochs, {args.train_size} training and {args.val_size} validation "
          f"images, {args.image_size}x{args.image_size}x3, crop padding {args.crop_padding}, flip; "
          f"in-memory seeds {args.seeds}, folder seeds {args.folder_seeds}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        out = args.runs or Path(temporary)
        for seed in args.seeds:
            rows.append(run("memory", seed, args, out))
        for seed in args.folder_seeds:
            rows.append(run("folder", seed, args, out))
    memory = [r["test_accuracy"] for r in rows if r["path"] == "memory"]
    folder = [r["test_accuracy"] for r in rows if r["path"] == "folder"]
    judged = verdict(memory, folder)
    mismatched = {f"{section}.{key}": [r["settings"][section][key] for r in rows]
                  for section, keys in COMPARED.items() for key in keys
                  if len({json.dumps(r["settings"][section][key]) for r in rows}) > 1}
    sizes = {json.dumps(r["sizes"], sort_keys=True) for r in rows}
    print_table(rows)
    low, high = judged["band"]
    print(f"\nin memory: {judged['memory_mean']:.4f} +/- {judged['memory_std']:.4f} (sample std of "
          f"{len(memory)} seeds); mean +/- 2 std [{low:.4f}, {high:.4f}], min-max "
          f"[{judged['min_max'][0]:.4f}, {judged['min_max'][1]:.4f}]")
    print(f"folder:    {', '.join(f'{a:.4f}' for a in folder)} ({judged['difference_of_means']:+.4f} against the "
          "in-memory mean)")
    print(f"verdict:   {'within' if judged['within_band'] else 'OUTSIDE'} the in-memory mean +/- 2 std (the "
          f"criterion); {'within' if judged['within_min_max'] else 'outside'} their min-max range"
          + ("" if judged["enough_seeds"] else "  (one in-memory seed: no noise measured, use --seeds 0,1,2)"))
    if mismatched:
        print(f"WARNING: the paths' resolved settings differ: {mismatched}")
    if len(sizes) > 1:
        print(f"WARNING: the paths' split sizes differ: {sorted(sizes)} (incomplete folders?)")
    summary = {
        "machine": machine, "torch": torch.__version__, "recipe": args.recipe, "epochs": args.epochs,
        "train_size": args.train_size, "val_size": args.val_size, "image_size": args.image_size,
        "crop_padding": args.crop_padding, "overrides": args.overrides, "folders": str(args.folders),
        "folder_export": folders, "comparable_settings": {"common": common_overrides(args),
                                                          "memory": path_overrides("memory", args),
                                                          "folder": path_overrides("folder", args)},
        "settings_differ": mismatched, "sizes_differ": len(sizes) > 1,
        "runs": rows, "verdict": judged, "commands": [r["command"] for r in rows],
    }
    write_figures(args.json, summary)
    return summary


if __name__ == "__main__":
    run_script(main, "folder_vs_memory")
