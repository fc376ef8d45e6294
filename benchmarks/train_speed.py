"""Training and inference speed: reslab's loop against a reference loop in the style of
the common PyTorch CIFAR scripts (per-image PIL transforms through a DataLoader, fp32,
NCHW, a plain SGD step), on the same model, batch and data, in the same run.

    python benchmarks/train_speed.py            # ResNet-20 and ResNet-56, 3 repeats
    python benchmarks/train_speed.py --quick    # ResNet-20 only, 2 repeats
    python benchmarks/train_speed.py --shape fashion --no-inference   # real 28x28x1 Fashion-MNIST

Every figure is the median of the repeats; the variants are interleaved so that a noisy
machine slows them alike. Prints tables and writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_cifar_archive  # noqa: E402  (the official archive format, random pixels)

from reslab import create_model  # noqa: E402
from reslab.config import load  # noqa: E402
from reslab.data.cifar import read_cifar  # noqa: E402
from reslab.models.summary import count_macs  # noqa: E402
from reslab.train.loop import train  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION = "/usr/share/datasets/fashion-mnist"


class PilCifar(Dataset):
    """What torchvision.datasets.CIFAR10 does: one PIL image and one transform call per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def reference_epoch(model_name: str, images, labels, batch_size: int, workers: int) -> float:
    """Images/s of one epoch of the reference loop (model built and warmed first); ``images``
    are (N, H, W, 3) colour or (N, H, W) grey, padded by 4 or 2 pixels as the scripts do."""
    grey = images.ndim == 3
    side, padding = images.shape[1], 2 if grey else 4
    mean, std = ((0.286,), (0.353,)) if grey else (MEAN, STD)
    transform = T.Compose([T.RandomCrop(side, padding=padding), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    loader = DataLoader(PilCifar(images, labels, transform), batch_size=batch_size, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    model = create_model(model_name, in_channels=1 if grey else 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, started = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:  # the first batches include worker start-up
            started, seen = time.perf_counter(), 0
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - started)


def reslab_epoch(model_name: str, root: Path, out: Path, batch_size: int, overrides: list[str], tag: str,
                 data: list[str] | None = None) -> float:
    """Images/s of reslab's own loop (train()), from its history: the second epoch, evaluation excluded."""
    config = load("paper-cifar10-resnet20", [
        f"model.name={model_name}", f"data.root={root}", "data.download=false", "data.val_size=256",
        f"train.batch_size={batch_size}", "train.epochs=2", "train.max_iters=null", f"output.dir={out}",
        f"output.name={tag}-{time.time_ns()}", "output.plots=false", *overrides, *(data or [])])
    result = train(config, progress=False)
    return result.history[-1]["images_per_second"]


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - started))
    return statistics.median(rates)


def step_profile(model_name: str, batch_size: int, steps: int = 10) -> dict[str, float]:
    """Milliseconds per step in data preparation, forward, backward and optimizer (reslab defaults)."""
    from reslab.data import DeviceLoader
    from reslab.data.arrays import ArrayDataset
    from reslab.data.loader import BatchAugment

    data = ArrayDataset(torch.randint(0, 256, (batch_size * (steps + 2), 3, 32, 32), dtype=torch.uint8),
                        torch.randint(0, 10, (batch_size * (steps + 2),)))
    loader = DeviceLoader(data, batch_size, "cpu", list(MEAN), list(STD), train=True,
                          augment=BatchAugment(crop_padding=4, hflip=True))
    model = create_model(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    phases = {"data": [], "forward": [], "backward": [], "optimizer": []}
    batches = iter(loader)
    for i in range(steps + 2):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        loss = criterion(model(x), y)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if i >= 2:
            for name, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                value and phases[name].append(value * 1000)
    return {name: statistics.median(values) for name, values in phases.items()}


def inference_rates(model_name: str, shape, batch: int, repeats: int, variants: list[str]) -> dict[str, float]:
    model = create_model(model_name).eval()
    x = torch.randn(batch, *shape)
    runners = {}
    if "eager fp32" in variants:
        runners["eager fp32"] = lambda: model(x)
    if "eager bf16" in variants:
        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        runners["eager bf16"] = bf16
    if "channels_last bf16" in variants:
        cl_model = create_model(model_name).eval().to(memory_format=torch.channels_last)
        cl_model.load_state_dict(model.state_dict())
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def cl_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return cl_model(x_cl)
        runners["channels_last bf16"] = cl_bf16
    if "compiled fp32" in variants:
        compiled = torch.compile(model)
        runners["compiled fp32"] = lambda: compiled(x)
    if "onnxruntime fp32" in variants:
        try:
            import onnxruntime

            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "m.onnx"
                torch.onnx.export(model, (x[:1],), str(path), dynamic_axes={"x": {0: "batch"}}, input_names=["x"],
                                  dynamo=False)
                session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy()}
            runners["onnxruntime fp32"] = lambda: session.run(None, feed)
        except Exception as exc:  # onnx/onnxruntime not installed, or the export failed
            print(f"  (onnxruntime skipped: {type(exc).__name__}: {exc})")
    rates = {name: [] for name in runners}
    with torch.inference_mode():
        for run in runners.values():
            run()  # warm-up (and compilation)
        for _ in range(repeats):
            for name, run in runners.items():
                started = time.perf_counter()
                run()
                rates[name].append(batch / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--images", type=int, default=2560, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ref-workers", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also measure train.compile=true (slow to start)")
    parser.add_argument("--shape", choices=("cifar", "fashion"), default="cifar",
                        help="cifar: 32x32x3 (an archive of random pixels); fashion: 28x28x1, real Fashion-MNIST "
                             f"images from {FASHION}")
    parser.add_argument("--no-inference", action="store_true", help="training only")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    models = ["resnet20"] if args.quick else ["resnet20", "resnet56"]
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "threads": torch.get_num_threads(), "torch": torch.__version__}}

    # bf16 only where the CPU computes it natively: emulated, it takes minutes and tells nothing.
    native_bf16 = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    peaks = {"fp32": matmul_peak(torch.float32),
             "bf16": matmul_peak(torch.bfloat16) if native_bf16 else float("nan")}
    results["matmul_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")

    variants = {
        "reslab fp32": ["train.channels_last=false"],
        "reslab fp32 channels_last": ["train.channels_last=true"],
        "reslab bf16": ["train.precision=bf16", "train.channels_last=false"],
        "reslab bf16 channels_last": ["train.precision=bf16", "train.channels_last=true"],
    }
    if not native_bf16:
        variants = {name: value for name, value in variants.items() if "bf16" not in name}
        print("bf16 variants skipped: this CPU has no native bf16 (no avx512_bf16 / AMX)")
    if args.compile:
        variants["reslab fp32 compiled"] = ["train.compile=true"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if args.shape == "fashion":
            from reslab.data.idx import read_idx_dataset

            train_set = read_idx_dataset(Path(FASHION), "fashion-mnist", download=False)[0]
            images = train_set.images[: args.images, 0].numpy()  # (N, 28, 28)
            data = ["data.name=fashion-mnist", f"data.root={FASHION}", "data.download=false",
                    f"data.train_size={args.images + 256}", "augment.crop_padding=2", "augment.hflip=true"]
            shape = (1, 28, 28)
        else:
            per_batch = (args.images + 256) // 5 + 1
            write_cifar_archive(root / "cifar-10-python.tar.gz", train_per_batch=per_batch, test=256)
            train_set, _, _, _ = read_cifar(root, "cifar10", download=False)
            images = train_set.images[: args.images].permute(0, 2, 3, 1).numpy()
            data, shape = [], (3, 32, 32)
        labels = train_set.labels[: args.images].numpy()
        results["shape"] = list(shape)
        results["training"] = {}
        for model_name in models:
            macs = count_macs(create_model(model_name, in_channels=shape[0]), shape)
            rates = {"reference fp32": [], **{name: [] for name in variants}}
            for repeat in range(repeats):
                rates["reference fp32"].append(reference_epoch(model_name, images, labels, args.batch_size,
                                                               args.ref_workers))
                for name, overrides in variants.items():
                    rates[name].append(reslab_epoch(model_name, root, root / "runs", args.batch_size, overrides,
                                                    name.replace(" ", "-"), data))
            medians = {name: statistics.median(values) for name, values in rates.items()}
            base = medians["reference fp32"]
            print(f"\ntraining {model_name} on {'x'.join(map(str, shape[::-1]))}, batch {args.batch_size}, "
                  f"{args.images} images/epoch, "
                  f"median of {repeats} (images/s; x reference; share of the matmul peak)")
            rows = {}
            for name, rate in medians.items():
                peak = peaks["bf16" if "bf16" in name else "fp32"]
                utilisation = 6 * macs * rate / peak  # forward 2 FLOPs/MAC, backward twice that
                rows[name] = {"images_per_second": rate, "ratio": rate / base, "peak_share": utilisation,
                              "repeats": rates[name]}
                print(f"  {name:<28} {rate:8.0f}  {rate / base:5.2f}x  {100 * utilisation:5.1f}%")
            results["training"][model_name] = rows

    if not args.no_inference:
        print("\nwhere a reslab training step's time goes (ResNet-20, fp32, ms per step, median):")
        profile = step_profile("resnet20", args.batch_size)
        results["step_profile_ms"] = profile
        total = sum(profile.values())
        for name, value in profile.items():
            print(f"  {name:<10} {value:7.1f} ms  {100 * value / total:5.1f}%")

        results["inference"] = {}
        cases = [("resnet20", (3, 32, 32), 1), ("resnet20", (3, 32, 32), 256), ("resnet50", (3, 224, 224), 1)]
        if not args.quick:
            cases.append(("resnet50", (3, 224, 224), 32))
        names = ["eager fp32", "eager bf16", "channels_last bf16", "onnxruntime fp32"]
        if args.compile:
            names.append("compiled fp32")
        print("\ninference images/s (median):")
        for model_name, shape, batch in cases:
            rates = inference_rates(model_name, shape, batch, repeats=max(3, repeats), variants=names)
            key = f"{model_name} {shape[1]}x{shape[2]} batch {batch}"
            results["inference"][key] = rates
            print(f"  {key:<28} " + "  ".join(f"{n}: {r:.0f}" for n, r in rates.items()))

    out = Path(__file__).parent / "results" / f"train_speed{'_fashion' if args.shape == 'fashion' else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
