"""How fast the 15 common corruptions are generated, against how fast ResNet-20 classifies
the same images: does corrupting the test set dominate a robustness evaluation?

For 28x28x1 (Fashion-MNIST's shape) and 32x32x3 (CIFAR's) batches of 512 (the evaluation
batch), each corruption at each severity 1..5 once after a warm-up call; images/s per type is
5 x 512 over their time, "all types" the 75 calls together. Inference: ResNet-20 in fp32,
channels-last, inference mode, the median of 5 batches after a warm-up (what ``reslab
evaluate --corruptions`` runs per corrupted batch, without test-time flip). The images are
crops of scikit-learn's two bundled photographs (JPEG's speed depends on the content, so not
noise); the device is the CPU unless a GPU is there.

    python benchmarks/corruption_speed.py [--batch-size 512] [--json benchmarks/results/corruption_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from reslab.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from reslab.models import create_model

SHAPES = ((1, 28, 28), (3, 32, 32))


def photographs(count: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    """``count`` uint8 crops of scikit-learn's sample photographs, resized to ``side``."""
    import numpy as np
    from sklearn.datasets import load_sample_image

    pictures = [torch.from_numpy(np.array(load_sample_image(name))).permute(2, 0, 1).float()
                for name in ("china.jpg", "flower.jpg")]
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for index in range(count):
        picture = pictures[index % 2]
        size = int(torch.randint(96, 400, (1,), generator=generator))
        top = int(torch.randint(0, picture.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, picture.shape[2] - size + 1, (1,), generator=generator))
        crops.append(F.interpolate(picture[None, :, top:top + size, left:left + size], size=(side, side),
                                   mode="area"))
    images = torch.cat(crops)
    if channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return images.round().clamp(0, 255).to(torch.uint8)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def corruption_speed(images: torch.Tensor, device: torch.device) -> dict:
    """Images/s of each corruption over severities 1..5, and of all of them."""
    rows, total_seconds, total_images = {}, 0.0, 0
    indices = list(range(len(images)))
    for name in CORRUPTIONS:
        corrupt(images[:8], name, 3)  # warm-up: kernels, caches
        synchronize(device)
        started = time.perf_counter()
        for severity in SEVERITIES:
            corrupt(images, name, severity, seed=0, indices=indices)
        synchronize(device)
        seconds = time.perf_counter() - started
        count = len(images) * len(SEVERITIES)
        rows[name] = {"seconds": seconds, "images_per_second": count / seconds}
        total_seconds += seconds
        total_images += count
    return {"per_type": rows, "all": {"seconds": total_seconds, "images_per_second": total_images / total_seconds}}


@torch.inference_mode()
def inference_speed(images: torch.Tensor, device: torch.device, repeats: int = 5) -> float:
    model = create_model("resnet20", num_classes=10, in_channels=images.shape[1]).to(device).eval()
    model.to(memory_format=torch.channels_last)
    batch = (images.float() / 255).contiguous(memory_format=torch.channels_last)
    model(batch)
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        model(batch)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return len(images) / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--json", default="benchmarks/results/corruption_speed.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for channels, height, width in SHAPES:
        images = photographs(args.batch_size, channels, height).to(device)
        speed = corruption_speed(images, device)
        inference = inference_speed(images, device)
        results.append({"input": [channels, height, width], "batch_size": args.batch_size, **speed,
                        "inference_images_per_second": inference,
                        # of the time a robustness evaluation spends per image: corrupting vs classifying
                        "corruption_share": (1 / speed["all"]["images_per_second"])
                                            / (1 / speed["all"]["images_per_second"] + 1 / inference)})
    header = f"{'corruption':<20}" + "".join(f"{'x'.join(map(str, r['input'])):>14}" for r in results)
    lines = [f"images/s (batch of {args.batch_size}, severities 1-5)", header]
    for name in CORRUPTIONS:
        lines.append(f"{name:<20}" + "".join(f"{r['per_type'][name]['images_per_second']:>14,.0f}" for r in results))
    lines.append(f"{'all 15 types':<20}" + "".join(f"{r['all']['images_per_second']:>14,.0f}" for r in results))
    lines.append(f"{'resnet20 inference':<20}" + "".join(f"{r['inference_images_per_second']:>14,.0f}"
                                                          for r in results))
    lines.append(f"{'corruption share':<20}" + "".join(f"{100 * r['corruption_share']:>13.0f}%" for r in results))
    print("\n".join(lines))
    environment = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "processor": platform.processor() or platform.machine(),
                   "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                   "cpu_count": os.cpu_count()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"environment": environment, "results": results}, indent=2) + "\n")
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
