"""Training throughput on a folder of real image files: reslab's folder loader and training
step against the usual ``torchvision.datasets.ImageFolder`` + ``DataLoader`` loop, side by
side, on Fashion-MNIST's PNG class folders (fashion_mnist_folders.py).

Both sides get the same images (all of train/), the same transforms (a pad-2 random crop
to 28x28, a horizontal flip, to a tensor, normalization by 0.5 / 0.5), the same worker
processes, batch, model (resnet20 for 3-channel 28x28 inputs, 10 classes), optimizer
(SGD, momentum 0.9) and threads:

- reslab: the loader ``--data folder`` builds (``build_data``: FileLoader, decoding with
  reslab's decoder, torchvision v2 transforms on uint8 tensors in the workers, uint8
  batches normalized in the training process) and reslab's ``train_step``, as a run takes
  them: channels-last (train.channels_last's default) and ``--precision`` (default auto,
  as the fast recipes: bf16 where the CPU computes it natively, else fp32);
- reference: ImageFolder (PIL open + convert RGB), torchvision's classic transforms
  (RandomCrop(28, padding=2), RandomHorizontalFlip, ToTensor, Normalize) in the workers,
  ``DataLoader(shuffle=True, drop_last=True, persistent_workers=True)`` and the usual step
  (zero_grad, forward, loss, backward, step) in fp32, NCHW.

``--precision fp32 --no-channels-last`` leaves the data path as the only difference.

Each figure is images/s over ``--steps`` timed batches after ``--warmup`` untimed ones
(which start the workers and let the other side's prefetching finish), the median of
``--repeats`` passes, the two sides interleaved so that a busy machine slows both alike.
The same is measured for the data loading alone (batches drawn, no model).

    python benchmarks/folder_throughput.py --folders /tmp/fmnist-png
    python benchmarks/folder_throughput.py --folders /tmp/fmnist-png --workers 2 --steps 50 --repeats 5

Prints both tables and the ratios (goal of issue 21: reslab >= 1.5x the reference in
training); writes benchmarks/results/folder_throughput.json (or --json) with the CPU flags.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from reslab import create_model
from reslab.config import AugmentConfig, DataConfig
from reslab.data import build_data
from reslab.data.files import default_workers
from reslab.errors import ReslabError
from reslab.precision import resolve_precision
from reslab.train.step import train_step

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks beside this one
from fashion_mnist_folders import DATA_ROOT, FOLDER_MARKER, write_folders

from common import cpu_flags, run_script, write_figures

RESULTS = Path(__file__).parent / "results"
MEAN, STD = [0.5] * 3, [0.5] * 3  # reslab's data.normalization=inception


def reslab_loader(folders: Path, args):
    """The training loader a ``--data folder`` run builds, on every image of train/."""
    data = DataConfig(name="folder", root=str(folders), val_size=0, image_size=args.image_size, center_crop=False,
                      normalization="inception", workers=args.workers)
    augment = AugmentConfig(crop_padding=args.crop_padding, hflip=True, random_resized_crop=0.0)
    return build_data(data, augment, device="cpu", batch_size=args.batch_size, seed=0,
                      channels_last=getattr(args, "channels_last", False))


def reference_loader(folders: Path, args):
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    transform = T.Compose([T.RandomCrop(args.image_size, padding=args.crop_padding), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = ImageFolder(str(folders / "train"), transform=transform)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                      persistent_workers=args.workers > 0)


def endless(loader, set_epoch=None):
    """Batches across epochs, forever."""
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1


class Side:
    """One data path with its own model and optimizer; ``step`` draws a batch and trains on
    it (``train=True``) or only draws it."""

    def __init__(self, name: str, batches, step, args, channels_last: bool = False, precision: str = "fp32"):
        torch.manual_seed(0)
        self.name = name
        self.batches = batches
        self.precision = precision
        self.model = create_model(args.model, num_classes=10, in_channels=3)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.criterion = nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.train_step = step

    def step(self, train: bool) -> int:
        images, targets = next(self.batches)
        if train:
            self.train_step(self, images, targets)
        return len(images)


def reslab_step(side: Side, images, targets) -> None:
    train_step(side.model, images, targets, side.criterion, side.optimizer, side.scaler, torch.device("cpu"),
               side.precision)


def reference_step(side: Side, images, targets) -> None:
    images, targets = images.to("cpu"), targets.to("cpu")
    side.optimizer.zero_grad()
    loss = side.criterion(side.model(images), targets)
    loss.backward()
    side.optimizer.step()


def measure(sides: list[Side], train: bool, steps: int, warmup: int, repeats: int) -> dict[str, dict]:
    """Images/s of each side: the median of ``repeats`` interleaved passes of ``steps``
    timed batches, each after ``warmup`` untimed ones."""
    rates = {side.name: [] for side in sides}
    for _ in range(repeats):
        for side in sides:
            for _ in range(warmup):
                side.step(train)
            started = time.perf_counter()
            images = sum(side.step(train) for _ in range(steps))
            rates[side.name].append(images / (time.perf_counter() - started))
    return {name: {"images_per_second": statistics.median(values), "passes": values} for name, values in rates.items()}


def print_table(title: str, figures: dict[str, dict]) -> float:
    ratio = figures["reslab"]["images_per_second"] / figures["reference"]["images_per_second"]
    print(f"\n{title}")
    print("| loop | images/s (median) | passes |")
    print("|---|---:|---|")
    for name, label in (("reslab", "reslab (--data folder)"), ("reference", "ImageFolder + DataLoader")):
        passes = ", ".join(f"{v:.0f}" for v in figures[name]["passes"])
        print(f"| {label} | {figures[name]['images_per_second']:.0f} | {passes} |")
    print(f"ratio reslab / reference: {ratio:.2f}x")
    return ratio


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=Path, required=True,
                        help="the PNG class folders (fashion_mnist_folders.py; written here if not complete)")
    parser.add_argument("--limit", type=int, default=None, help="folders of the first N images per class and split")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the Fashion-MNIST IDX files")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="worker processes of both loaders (default: reslab's, the CPUs less one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="reslab's training step (the reference's is fp32); auto: bf16 where native")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="reslab in NCHW, as the reference (default: channels-last, as a run)")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--crop-padding", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per pass")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before each pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "folder_throughput.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.folders / FOLDER_MARKER).is_file():
        print(f"writing the PNG class folders into {args.folders} ...", flush=True)
    export = write_folders(args.folders, args.limit, root=args.data_root)
    machine = cpu_flags()
    print(f"machine: {machine}")
    precision = resolve_precision(args.precision, torch.device("cpu"))
    bundle = reslab_loader(args.folders, args)
    reference = reference_loader(args.folders, args)
    try:
        sides = [Side("reslab", endless(bundle.train, bundle.train.set_epoch), reslab_step, args,
                      args.channels_last, precision),
                 Side("reference", endless(reference), reference_step, args)]
        images = len(reference.dataset)
        if images < args.batch_size:
            raise ReslabError(f"{args.folders / 'train'} holds {images} images, fewer than a batch of "
                              f"{args.batch_size}")
        print(f"{images:,} PNGs of {args.folders / 'train'}, batch {args.batch_size}, {args.workers} worker "
              f"process(es) each, {torch.get_num_threads()} threads, {args.model}; reslab in {precision}"
              f"{', channels-last' if args.channels_last else ''}, the reference in fp32; median of {args.repeats} "
              f"passes of {args.steps} batches after {args.warmup} untimed", flush=True)
        loading = measure(sides, False, args.steps, args.warmup, args.repeats)
        loading_ratio = print_table("data loading alone (batches drawn, no model):", loading)
        training = measure(sides, True, args.steps, args.warmup, args.repeats)
        training_ratio = print_table("training (loading + forward, backward, update):", training)
    finally:
        bundle.close()
    goal = 1.5
    print(f"\ngoal: reslab >= {goal}x the reference in training: {'met' if training_ratio >= goal else 'not met'} "
          f"({training_ratio:.2f}x)")
    summary = {
        "machine": machine, "torch": torch.__version__, "threads": torch.get_num_threads(), "workers": args.workers,
        "batch_size": args.batch_size, "model": args.model, "image_size": args.image_size,
        "reslab_precision": precision, "reslab_channels_last": args.channels_last, "reference_precision": "fp32",
        "crop_padding": args.crop_padding, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "images": images, "folders": str(args.folders), "folder_export": export["request"],
        "decoder": bundle.description["decoder"], "reslab_pipeline": bundle.description["pipeline"],
        "reference_transforms": f"RandomCrop({args.image_size}, padding={args.crop_padding}), RandomHorizontalFlip(), "
                                f"ToTensor(), Normalize({MEAN}, {STD})",
        "loading": loading, "training": training, "loading_ratio": loading_ratio, "training_ratio": training_ratio,
        "goal": goal, "goal_met": training_ratio >= goal,
    }
    write_figures(args.json, summary)
    return summary


if __name__ == "__main__":
    run_script(main, "folder_throughput")
