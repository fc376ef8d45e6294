"""Images per second of the file pipeline: JPEG decoding (Pillow, torchvision.io, TorchCodec) and
decode + RandomResizedCrop(224) + flip, in one process and through FileLoader with 0, 1
and 2 worker processes.

The JPEGs are written first: 500x375 crops of scikit-image's sample photographs
(astronaut, coffee, chelsea, rocket, ...; ``pip install scikit-image``), quality 90, or
synthetic gradients with noise where scikit-image is missing. Each figure is the median
of ``--repeats`` timed passes, the variants interleaved so that a noisy machine slows
them alike; FileLoader passes come after one untimed epoch that starts the (persistent)
workers. Prints tables and writes benchmarks/results/data_loading.json.

    python benchmarks/data_loading.py [--images 256] [--repeats 5] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# data.decoder: pil, torchvision (torchvision.io for every format), torchcodec; auto is torchcodec
# where installed, else torchvision-jpeg (torchvision.io for JPEGs: the same figures on JPEGs).
DECODERS = ("pil", "torchvision", "torchcodec")


def photographs() -> list[np.ndarray]:
    try:
        import skimage.data as samples
    except ImportError:
        return []
    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    return [getattr(samples, name)() for name in names]


def write_jpegs(folder: Path, count: int, seed: int = 0) -> tuple[list[Path], str]:
    """``count`` 500x375 JPEGs in ``folder``/photos/ (one class folder, for FileLoader)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = photographs()
    out = folder / "photos"
    out.mkdir(parents=True)
    paths = []
    for i in range(count):
        if sources:
            photo = sources[i % len(sources)]
            height, width = photo.shape[:2]
            crop_h = int(height * rng.uniform(0.6, 1.0))
            crop_w = min(width, int(crop_h * 4 / 3))
            top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
            image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize((500, 375), Image.BICUBIC)
        else:
            ramp = np.linspace(0, 255, 500)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
            noise = rng.normal(0, 20, (375, 500, 3))
            image = Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))
        path = out / f"{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths, "scikit-image sample photographs" if sources else "synthetic images"


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx")))


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def decoder_rates(paths: list[Path], repeats: int) -> dict[str, dict[str, float]]:
    """Images/s per decoder, decoding alone and with the training crop, in this process."""
    from torchvision.transforms import v2

    from reslab.data.files import decode

    crop = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage()])
    names = [str(p) for p in paths]
    variants = {
        (decoder, step): (lambda d=decoder, c=(step == "crop"): [crop(decode(p, d)) if c else decode(p, d)
                                                                 for p in names])
        for decoder in DECODERS for step in ("decode", "crop")
    }
    times = {key: [] for key in variants}
    for _ in range(repeats):  # interleaved, so that a noisy machine slows every variant alike
        for key, run in variants.items():
            times[key].append(timed(run))
    rates = {}
    for (decoder, step), values in times.items():
        rates.setdefault(decoder, {})[step] = len(names) / statistics.median(values)
    return rates


def loader_rates(folder: Path, batch_size: int, repeats: int) -> dict[str, dict[int, float]]:
    """Images/s through FileLoader (training transforms, CPU device) per decoder and
    worker count: one epoch per pass, after an untimed epoch that starts the workers."""
    from reslab.data.files import FileLoader
    from reslab.data.folders import scan_classes
    from reslab.data.normalization import IMAGENET_STATS
    from reslab.data.transforms import ImagePipeline, train_transform

    _, images = scan_classes(folder, "", None, [])
    mean, std = IMAGENET_STATS
    loaders = {(decoder, workers): FileLoader(images, batch_size, "cpu", mean, std, train=True, workers=workers,
                                              decoder=decoder, transform=train_transform(ImagePipeline(), mean))
               for decoder in DECODERS for workers in (0, 1, 2)}

    def epoch(loader, number):
        loader.set_epoch(number)
        for _ in loader:
            pass

    times = {key: [] for key in loaders}
    for number in range(repeats + 1):
        for key, loader in loaders.items():
            seconds = timed(lambda loader=loader, number=number: epoch(loader, number))
            if number > 0:
                times[key].append(seconds)
    rates = {}
    for (decoder, workers), values in times.items():
        rates.setdefault(decoder, {})[workers] = len(loaders[(decoder, workers)]) * batch_size / statistics.median(
            values)
    for loader in loaders.values():
        loader.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "data_loading.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        paths, kind = write_jpegs(folder, args.images)
        size = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{len(paths)} JPEGs of 500x375 from {kind}, {size:.0f} KiB each; median of {args.repeats} passes, "
              f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPUs\n")
        decoding = decoder_rates(paths, args.repeats)
        print("| decoder | decode only (img/s) | decode + RandomResizedCrop(224) + flip (img/s) |")
        print("|---|---:|---:|")
        for decoder, rates in decoding.items():
            print(f"| {decoder} | {rates['decode']:.0f} | {rates['crop']:.0f} |")
        loading = loader_rates(folder, args.batch_size, args.repeats)
        print("\nFileLoader: decode + RandomResizedCrop(224) + flip in the workers, normalization in the "
              f"training process (CPU), batch {args.batch_size}, one epoch per pass:\n")
        print("| workers | " + " | ".join(f"{d} (img/s)" for d in DECODERS) + " |")
        print("|---:|" + "---:|" * len(DECODERS))
        for workers in (0, 1, 2):
            print(f"| {workers} | " + " | ".join(f"{loading[d][workers]:.0f}" for d in DECODERS) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {"images": len(paths), "image_size": [375, 500], "source": kind, "repeats": args.repeats,
              "batch_size": args.batch_size, "decoding_images_per_second": decoding,
              "file_loader_images_per_second": loading, "torch": torch.__version__,
              "platform": platform.platform(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags()}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
