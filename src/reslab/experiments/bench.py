"""Throughput, latency and memory of models: ``reslab bench``.

For every model x batch size x input size x precision: a training step (forward,
backward, SGD update) and an inference pass (``inference_mode``) are each run
``warmup`` times untimed, then ``repeats`` times timed; the median gives the latency per
batch and the throughput (images/s = batch / median). Random inputs: the speed of a
ResNet does not depend on pixel values. bf16/fp16 use autocast, as training does.

Peak memory: on a GPU, ``torch.cuda.max_memory_allocated`` over the phase (every tensor:
weights, input batch, activations, gradients, optimizer state; not the caching
allocator's unused reserve). On the CPU, how far the process's peak resident set size
rose above its size at the start of the phase, so the weights and the input batch
(allocated before) are not in it, but activations, gradients, optimizer state, kernel
workspaces and allocator slack are. Linux lets the peak (VmHWM) be reset through
/proc/self/clear_refs, so each phase is measured on its own; where it cannot be reset,
the growth of ``getrusage().ru_maxrss`` is reported, a lower bound that reads 0 when an
earlier phase already reached a higher peak.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..device import resolve_device
from ..errors import ReslabError
from ..models import create_model
from ..models.summary import count_macs, count_parameters
from ..precision import autocast
from ..runfs import atomic_write_json
from ..train.step import train_step

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
FIELDS = ("model", "device", "precision", "batch_size", "input_size", "parameters", "macs",
          "train_images_per_second", "train_latency_ms", "inference_images_per_second", "inference_latency_ms",
          "train_peak_memory_bytes", "inference_peak_memory_bytes", "memory_measure", "warmup", "repeats")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- memory


class PeakMemory:
    """The peak memory of the code in a ``with`` block, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None
        self.measure = self.describe(device)

    @staticmethod
    def describe(device: torch.device) -> str:
        if device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        if _reset_peak_rss():
            return "peak RSS growth (VmHWM, reset per phase)"
        return "ru_maxrss growth (a lower bound)"

    def __enter__(self):
        gc.collect()
        _release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = 0  # the GPU figure is the whole peak, weights included
        elif _reset_peak_rss():
            self.start = _status_kb("VmRSS") * 1024
        else:
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RU_MAXRSS_UNIT
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.measure.startswith("peak RSS"):
            peak = _status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RU_MAXRSS_UNIT
        self.bytes = max(0, peak - self.start)
        return False


_RU_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kilobytes on Linux


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so that the next phase's allocations
    show up as RSS growth instead of silently reusing pages an earlier phase left resident."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- timing


def median_seconds(step, repeats: int, warmup: int, device: torch.device) -> float:
    """The median seconds of ``step()`` over ``repeats`` calls, after ``warmup`` untimed ones
    (also the timing of ``reslab bench RUN``'s inference engines)."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        _sync(device)  # GPU kernels are asynchronous: wait before reading the clock
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_one(model_name: str, batch_size: int, input_size: tuple[int, int, int], precision: str,
              device: torch.device, num_classes: int = 10, warmup: int = 3, repeats: int = 10,
              channels_last: bool = False) -> dict:
    """Training and inference speed and memory of one model at one batch size and precision."""
    model = create_model(model_name, num_classes=num_classes, in_channels=input_size[0]).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    parameters = count_parameters(model)["parameters"]
    macs = count_macs(model, input_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, *input_size, generator=generator).to(device, memory_format=memory_format)
    targets = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)

    # Training: the loop's own step (forward, loss, backward, SGD with momentum).
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step():
        train_step(model, images, targets, criterion, optimizer, scaler, device, precision)

    model.train()
    with PeakMemory(device) as train_memory:
        train_seconds = median_seconds(step, repeats, warmup, device)
    optimizer.state.clear()  # free the momentum buffers before measuring inference
    for parameter in model.parameters():
        parameter.grad = None

    @torch.inference_mode()
    def infer_step():
        with autocast(device, precision):
            model(images)

    model.eval()
    with PeakMemory(device) as infer_memory:
        infer_seconds = median_seconds(infer_step, repeats, warmup, device)

    return {
        "model": model_name, "device": str(device), "precision": precision, "batch_size": batch_size,
        "input_size": list(input_size), "parameters": parameters, "macs": macs,
        "train_images_per_second": batch_size / train_seconds, "train_latency_ms": 1000 * train_seconds,
        "inference_images_per_second": batch_size / infer_seconds, "inference_latency_ms": 1000 * infer_seconds,
        "train_peak_memory_bytes": train_memory.bytes, "inference_peak_memory_bytes": infer_memory.bytes,
        "memory_measure": train_memory.measure, "warmup": warmup, "repeats": repeats,
    }


def run_bench(models: list[str], batch_sizes: list[int], input_sizes: list[tuple[int, int, int]],
              precisions: list[str], device: str = "auto", num_classes: int = 10, warmup: int = 3,
              repeats: int = 10, threads: int | None = None, channels_last: bool = False, log=None) -> dict:
    """Every combination, one after the other; a dict ready for JSON (``results`` a list of rows)."""
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ReslabError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if warmup < 0 or repeats < 1:
        raise ReslabError("--warmup must be at least 0 and --repeats at least 1")
    if any(b < 1 for b in batch_sizes):
        raise ReslabError("batch sizes must be at least 1")
    torch_device = resolve_device(device)
    if "fp16" in precisions and torch_device.type != "cuda":
        raise ReslabError("precision fp16 needs a GPU; use bf16 on the CPU")
    if threads is not None:
        torch.set_num_threads(threads)
    log = log or logger.info
    load_before = load_average()
    results = []
    combos = [(m, b, s, p) for m in models for s in input_sizes for p in precisions for b in batch_sizes]
    for index, (model, batch, size, precision) in enumerate(combos, 1):
        log(f"bench {index}/{len(combos)}: {model} batch {batch} input {'x'.join(map(str, size))} {precision}")
        results.append(bench_one(model, batch, size, precision, torch_device, num_classes, warmup, repeats,
                                 channels_last))
    info = environment(torch_device, load_before)
    return {"environment": info, "memory_note": f"Peak memory: {PeakMemory.describe(torch_device)}; "
                                                "see reslab.experiments.bench for what it counts.",
            "results": results}


def environment(device: torch.device, load_before: float | None) -> dict:
    """What the timings depend on: versions, processor and its flags, threads, the load."""
    info = {"reslab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags(), "device": str(device), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_average()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# The x86 flags that pick PyTorch's and ONNX Runtime's CPU kernels: AVX2, AVX-512, native bf16
# (AVX512_BF16, AMX), and the int8 dot products (VNNI) that int8 inference relies on.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Those of ``CPU_FLAGS`` this processor has (read from /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def format_bench(bench: dict) -> str:
    """The bench results as a plain-text table."""
    headers = ["model", "prec", "batch", "input", "params", "MMACs", "train img/s", "train ms",
               "infer img/s", "infer ms", "train MB", "infer MB"]
    rows = []
    for r in bench["results"]:
        rows.append([r["model"], r["precision"], str(r["batch_size"]), "x".join(map(str, r["input_size"])),
                     f"{r['parameters']:,}", f"{r['macs'] / 1e6:,.1f}", f"{r['train_images_per_second']:,.1f}",
                     f"{r['train_latency_ms']:,.2f}", f"{r['inference_images_per_second']:,.1f}",
                     f"{r['inference_latency_ms']:,.2f}", _mb(r["train_peak_memory_bytes"]),
                     _mb(r["inference_peak_memory_bytes"])])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    env = bench["environment"]
    lines.append(f"device {env['device']}, {env['threads']} threads, torch {env['torch']}; "
                 f"median of {bench['results'][0]['repeats'] if bench['results'] else 0} repeats after warm-up. "
                 + bench["memory_note"])
    warning = busy_warning(bench)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def busy_warning(bench: dict) -> str:
    """A warning when other processes were using the CPUs before or while the bench ran: the
    load before it, or the load after it less the bench's own threads (other jobs that start
    mid-bench wreck PyTorch's OpenMP timings as much as those running before)."""
    env = bench["environment"]
    before, after, threads = env.get("load_average_before"), env.get("load_average_after"), env.get("threads") or 1
    others = [value for value in (before, None if after is None else after - threads) if value is not None]
    load = max(others, default=None)
    if load is None or load < 1.0:
        return ""
    advice = "; with fewer free cores than threads, try --threads 1" if threads != 1 else ""
    return (f"warning: other processes were running (1-minute load average of others about {load:.1f}, "
            f"{env.get('cpus')} CPUs): CPU timings are unreliable{advice}")


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _mb(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f}"


def write_bench(bench: dict, path: Path) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(path), bench)
    except OSError as exc:
        raise ReslabError(f"cannot write {path}: {exc.strerror}") from None


def parse_input_sizes(text: str) -> list[tuple[int, int, int]]:
    """``3,32,32`` or several separated by ``;`` or spaces: ``3,32,32;3,224,224``."""
    sizes = []
    for part in text.replace(";", " ").split():
        try:
            size = tuple(int(v) for v in part.split(","))
        except ValueError:
            size = ()
        if len(size) != 3 or min(size) < 1:
            raise ReslabError(f"--input-size must be C,H,W (e.g. 3,32,32), got {part!r}")
        sizes.append(size)
    if not sizes:
        raise ReslabError("--input-size must be C,H,W (e.g. 3,32,32)")
    return sizes
