"""Training and inference speed: reslab's loop against a reference loop in the style of
the common PyTorch CIFAR scripts (per-image PIL transforms through a DataLoader, fp32,
NCHW, a plain SGD step), on the same model, batch and data, in the same run.

    python benchmarks/train_speed.py            # ResNet-20 and ResNet-56, 3 repeats
    python benchmarks/train_speed.py --quick    # ResNet-20 only, 2 repeats
    python benchmarks/train_speed.py --shape fashion --no-inference   # real 28x28x1 Fashion-MNIST
    python benchmarks/train_speed.py --device cuda --compile --images 25600 --json out.json   # a GPU

Every figure is the median of the repeats; the variants are interleaved so that a noisy
machine slows them alike. Prints tables and writes benchmarks/results/train_speed.json
(or --json), after every model, so that a run cut short keeps what it measured.

On a GPU the reference loop is the common scripts' too (kuangliu/pytorch-cifar: DataLoader
with 2 workers and no pinned memory, ``.to(device)`` per batch, ``cudnn.benchmark = True``),
and the clocks stop after ``torch.cuda.synchronize()``. The reslab variants there are fp32
and bf16, NCHW and channels-last, and with --compile bf16 channels-last under
``train.compile_mode=reduce-overhead`` (CUDA graphs); their rate is the second epoch's, so
compilation is excluded and reported apart (``first_epoch_seconds``).
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
from reslab import create_model
from reslab.config import load
from reslab.data.cifar import read_cifar
from reslab.device import resolve_device
from reslab.models.summary import count_macs
from reslab.train.loop import train

from conftest import write_cifar_archive

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


def reference_epoch(model_name: str, images, labels, batch_size: int, workers: int,
                    device: torch.device = torch.device("cpu")) -> float:
    """Images/s of one epoch of the reference loop (model built and warmed first); ``images``
    are (N, H, W, 3) colour or (N, H, W) grey, padded by 4 or 2 pixels as the scripts do."""
    grey = images.ndim == 3
    side, padding = images.shape[1], 2 if grey else 4
    mean, std = ((0.286,), (0.353,)) if grey else (MEAN, STD)
    transform = T.Compose([T.RandomCrop(side, padding=padding), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    loader = DataLoader(PilCifar(images, labels, transform), batch_size=batch_size, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the scripts set it on a GPU
    model = create_model(model_name, in_channels=1 if grey else 3).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, started = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:  # the first batches include worker start-up
            synchronize(device)
            started, seen = time.perf_counter(), 0
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    synchronize(device)
    return seen / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a host clock reads the time it took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reslab_epoch(model_name: str, root: Path, out: Path, batch_size: int, overrides: list[str], tag: str,
                 data: list[str] | None = None, device: str = "auto") -> tuple[float, float]:
    """reslab's own loop (train()): the second epoch's images/s (evaluation excluded) and the
    first epoch's seconds (which hold cuDNN's autotuning and any compilation)."""
    config = load("paper-cifar10-resnet20", [
        f"model.name={model_name}", f"data.root={root}", "data.download=false", "data.val_size=256",
        f"train.batch_size={batch_size}", "train.epochs=2", "train.max_iters=null", "schedule.name=constant",
        f"output.dir={out}", f"output.name={tag}-{time.time_ns()}", "output.plots=false", f"train.device={device}",
        *overrides,
        *(data or [])])
    result = train(config, progress=False)
    return result.history[-1]["images_per_second"], result.history[0]["epoch_seconds"]


def cudagraph_skips() -> int:
    """How often inductor has fallen back from CUDA graphs in this process (reduce-overhead)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("cudagraph_skips", 0))


def matmul_peak(dtype: torch.dtype, device: torch.device = torch.device("cpu"), size: int | None = None,
                repeats: int = 5) -> float:
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - started))
    return statistics.median(rates)


def step_profile(model_name: str, batch_size: int, steps: int = 10, precision: str = "fp32",
                 channels_last: bool = False, fused: bool = False) -> dict[str, float]:
    """Milliseconds per step in data preparation, forward, backward and optimizer, in the
    given precision and memory format (reslab's batch loader and augmentation)."""
    from reslab.data import DeviceLoader
    from reslab.data.arrays import ArrayDataset
    from reslab.data.loader import BatchAugment

    data = ArrayDataset(torch.randint(0, 256, (batch_size * (steps + 2), 3, 32, 32), dtype=torch.uint8),
                        torch.randint(0, 10, (batch_size * (steps + 2),)))
    loader = DeviceLoader(data, batch_size, "cpu", list(MEAN), list(STD), train=True,
                          augment=BatchAugment(crop_padding=4, hflip=True), channels_last=channels_last)
    model = create_model(model_name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused or None)
    criterion = nn.CrossEntropyLoss()
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}
    batches = iter(loader)
    for i in range(steps + 2):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = criterion(model(x), y)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if i >= 2:
            for name, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[name].append(value * 1000)
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


def reslab_variants(device: torch.device, native_bf16: bool, compiled: bool) -> dict[str, list[str]]:
    """The reslab settings measured on ``device``: name -> config overrides."""
    variants = {
        "reslab fp32": ["train.channels_last=false"],
        "reslab fp32 channels_last": ["train.channels_last=true"],
        "reslab bf16": ["train.precision=bf16", "train.channels_last=false"],
        "reslab bf16 channels_last": ["train.precision=bf16", "train.channels_last=true"],
    }
    if not native_bf16:
        variants = {name: value for name, value in variants.items() if "bf16" not in name}
    if compiled and device.type == "cuda":
        # CUDA graphs replay the whole forward and backward as one launch each: a ResNet-20
        # step at batch 128 is hundreds of small kernels, so the launches are what it waits on.
        variants["reslab bf16 channels_last reduce-overhead"] = [
            "train.precision=bf16", "train.channels_last=true", "train.compile=true",
            "train.compile_mode=reduce-overhead"]
    elif compiled:
        variants["reslab fp32 compiled"] = ["train.compile=true"]
    return variants


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


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
    parser.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu or cuda")
    parser.add_argument("--models", default=None, help="comma-separated (default resnet20, resnet56)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated reslab variants to run (default: all for the device)")
    parser.add_argument("--json", type=Path, default=None, help="where the figures go")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    models = args.models.split(",") if args.models else ["resnet20"] if args.quick else ["resnet20", "resnet56"]
    device = resolve_device(args.device)
    default_name = f"train_speed{'_fashion' if args.shape == 'fashion' else ''}.json"
    out = args.json or Path(__file__).parent / "results" / default_name
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
               "images_per_epoch": args.images, "batch_size": args.batch_size, "repeats": repeats}

    # bf16 only where the device computes it natively: emulated, it takes minutes and tells nothing.
    native_bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    peaks = {"fp32": matmul_peak(torch.float32, device),
             "bf16": matmul_peak(torch.bfloat16, device) if native_bf16 else float("nan")}
    results["matmul_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
    print(f"matmul peak on {results['machine']['device']}: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")

    variants = reslab_variants(device, native_bf16, args.compile)
    if not native_bf16:
        print("bf16 variants skipped: this CPU has no native bf16 (no avx512_bf16 / AMX)")
    if args.variants:
        wanted = args.variants.split(",")
        unknown = [name for name in wanted if name not in variants]
        if unknown:
            parser.error(f"unknown --variants {unknown}; choose from {list(variants)}")
        variants = {name: variants[name] for name in wanted}
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
            first_epochs = {name: [] for name in variants}
            skips_before = cudagraph_skips()
            for _ in range(repeats):
                rates["reference fp32"].append(reference_epoch(model_name, images, labels, args.batch_size,
                                                               args.ref_workers, device))
                for name, overrides in variants.items():
                    rate, first = reslab_epoch(model_name, root, root / "runs", args.batch_size, overrides,
                                               name.replace(" ", "-"), data, str(device))
                    rates[name].append(rate)
                    first_epochs[name].append(first)
                results["training"][model_name] = {"unfinished": True, "repeats": rates}
                write_results(out, results)  # a run cut short keeps the repeats it finished
            medians = {name: statistics.median(values) for name, values in rates.items()}
            base = medians["reference fp32"]
            print(f"\ntraining {model_name} on {'x'.join(map(str, shape[::-1]))}, batch {args.batch_size}, "
                  f"{args.images} images/epoch, "
                  f"median of {repeats}: images/s, x reference, achieved GFLOP/s, share of the matmul "
                  "ceiling of the variant's precision")
            rows = {}
            for name, rate in medians.items():
                precision = "bf16" if "bf16" in name else "fp32"
                achieved = 6 * macs * rate  # forward 2 FLOPs/MAC, backward twice that
                rows[name] = {"images_per_second": rate, "ratio": rate / base, "gflops": achieved / 1e9,
                              "ceiling": precision, "peak_share": achieved / peaks[precision],
                              "repeats": rates[name]}
                if name in first_epochs:
                    rows[name]["first_epoch_seconds"] = first_epochs[name]
                print(f"  {name:<44} {rate:8.0f}  {rate / base:5.2f}x  {achieved / 1e9:7.1f} GFLOP/s  "
                      f"{100 * achieved / peaks[precision]:5.1f}% of {precision}")
            results["training"][model_name] = rows
            if any("reduce-overhead" in name for name in variants):  # 0: the CUDA graphs were replayed
                results.setdefault("cudagraph_skips", {})[model_name] = cudagraph_skips() - skips_before
            write_results(out, results)

    if not args.no_inference and device.type != "cpu":
        print("\ninference and the step profile are measured on the CPU only: skipped")
    elif not args.no_inference:
        print("\nwhere a training step's time goes (ResNet-20, ms per step, median):")
        settings = {"fp32": ("fp32", False, False), "fp32 fused SGD": ("fp32", False, True)}
        if native_bf16:
            settings["bf16 channels_last"] = ("bf16", True, False)
        results["step_profile_ms"] = {}
        for label, (precision, channels_last, fused) in settings.items():
            profile = step_profile("resnet20", args.batch_size, precision=precision, channels_last=channels_last,
                                   fused=fused)
            results["step_profile_ms"][label] = profile
            total = sum(profile.values())
            print(f"  {label:<20} " + "  ".join(f"{name} {value:6.1f} ({100 * value / total:4.1f}%)"
                                                for name, value in profile.items()))

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

    write_results(out, results)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
