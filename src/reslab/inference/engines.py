"""A trained model's CPU inference through several engines, compared: ``reslab bench RUN``.

Each engine maps normalized images, float32 (N, C, H, W), to float32 logits (N, classes):

- ``eager``: the PyTorch module in fp32; also in the run's precision where that is bf16 and
  the CPU computes bf16 natively (AVX512_BF16 or AMX), as evaluation would run it;
- ``compiled``: the module through torch.compile (Inductor), fp32, a graph per batch size;
- ``onnxruntime``: the fp32 ONNX export (``reslab export --format onnx``'s, parity-checked)
  on ONNX Runtime's CPU provider;
- ``int8``: that ONNX model quantized statically by ONNX Runtime: QDQ format, int8 weights per
  output channel, activation ranges calibrated on training images prepared the way the run's
  evaluation prepares images, with the settings ONNX Runtime's documentation gives for the CPU.

Speed: images/s at each batch size is the batch over the median seconds of ``repeats`` timed
calls after ``warmup`` untimed ones (``experiments.bench.median_seconds``), on random inputs
(a ResNet's speed does not depend on pixel values), every engine on the same threads.
Accuracy: every engine on the same test images (no test-time flip), with the drop and the
top-1 agreement against eager fp32, so that what int8 costs is stated beside what it gains.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import ArrayDataset, DataBundle, DeviceLoader, FileLoader
from ..device import compile_model
from ..errors import ReslabError
from ..evaluate.runner import LoadedCheckpoint, load_for_evaluation
from ..experiments.bench import busy_warning, cpu_flags, environment, load_average, median_seconds, write_bench
from ..extras import missing_extra
from ..precision import autocast, resolve_precision
from .export import example_inputs, export_onnx

logger = logging.getLogger(__name__)

ENGINES = ("eager", "compiled", "onnxruntime", "int8")
CALIBRATION_IMAGES = 300  # training images int8's activation ranges are calibrated on
CALIBRATION_BATCH = 50
CPU = torch.device("cpu")


@dataclass
class Engine:
    name: str  # one of ENGINES
    precision: str  # "fp32", "bf16" or "int8"
    run: Callable[[torch.Tensor], torch.Tensor]
    # The layout its inputs are timed in: PyTorch's the run's (channels-last where it trained
    # so), ONNX Runtime's the contiguous NCHW it takes without a copy.
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def label(self) -> str:
        return self.name if self.precision in ("fp32", "int8") else f"{self.name} {self.precision}"


# ---------------------------------------------------------------- the engines


def eager_engine(network: nn.Module, precision: str = "fp32",
                 memory_format: torch.memory_format = torch.contiguous_format) -> Engine:
    @torch.inference_mode()
    def run(images: torch.Tensor) -> torch.Tensor:
        with autocast(CPU, precision):
            return network(images).float()

    return Engine("eager", precision, run, memory_format)


def compiled_engine(network: nn.Module, memory_format: torch.memory_format = torch.contiguous_format) -> Engine:
    """One graph per batch size, specialized to it, as a deployment at a fixed batch would
    compile it (Dynamo's default turns the batch axis symbolic once a second size is seen,
    and the symbolic graph then serves batch 1 too, slower)."""
    import torch._dynamo

    compiled = compile_model(network, None)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> torch.Tensor:
        # Past the recompile limit (8 graphs) Dynamo would fall back to eager without a word,
        # and "compiled" would time the eager model; a bench asks for a few sizes at most.
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=64):
            return compiled(images).float()

    return Engine("compiled", "fp32", run, memory_format)


def onnx_session(path: Path):
    """An ONNX Runtime CPU session on as many threads as PyTorch uses, so engines compare fairly."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_engine(name: str, precision: str, path: Path) -> Engine:
    session = onnx_session(path)
    input_name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        feed = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(session.run(None, {input_name: feed})[0])

    return Engine(name, precision, run)


def int8_settings() -> dict:
    """quantize_static's types for this CPU, as ONNX Runtime's documentation gives them: on x86,
    uint8 activations and int8 weights, the weights in 7 bits where the CPU lacks VNNI (its
    int8 dot products would saturate otherwise); on ARM, int8 for both."""
    arm = platform.machine().lower() in ("arm64", "aarch64")
    vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_flags()))
    return {"format": "QDQ", "per_channel": True, "weights": "int8", "activations": "int8" if arm else "uint8",
            "reduce_range": not arm and not vnni, "calibration": "MinMax"}


def quantize_int8(fp32_model: Path, output: Path, calibration: list[np.ndarray], settings: dict) -> Path:
    """``fp32_model`` quantized statically (ONNX Runtime's pre-processing, then quantize_static)."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise missing_extra("int8 quantization", "export", str(exc)) from None

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    # Shape inference and graph optimization (batch norm folded into the convolutions) first,
    # as ONNX Runtime's quantization guide asks.
    prepared = output.with_name(output.stem + "-prepared.onnx")
    quant_pre_process(str(fp32_model), str(prepared))
    quantize_static(str(prepared), str(output), Batches(), quant_format=QuantFormat.QDQ,
                    per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                    activation_type=QuantType.QInt8 if settings["activations"] == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return output


def training_sample(bundle: DataBundle, count: int, seed: int = 0, batch_size: int = CALIBRATION_BATCH):
    """A loader of ``count`` training images picked at random (seeded), prepared exactly as the
    run's evaluation prepares its test images (no augmentation), on the CPU."""
    train = getattr(bundle.train, "loader", bundle.train)  # a MixingLoader wraps the real one
    test = bundle.test
    pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    if isinstance(train, DeviceLoader):
        sample = ArrayDataset(train.images[pick.to(train.images.device)].cpu(),
                              train.labels[pick.to(train.labels.device)].cpu())
        return DeviceLoader(sample, batch_size, CPU, bundle.mean, bundle.std, train=False, resize=test.resize)
    if isinstance(train, FileLoader):
        return FileLoader(train.images.subset(pick.numpy()), batch_size, CPU, bundle.mean, bundle.std, train=False,
                          transform=test.dataset.transform, image_size=test.image_size,
                          decoder=test.dataset.decoder, workers=test.workers, persistent_workers=False)
    raise ReslabError(f"cannot draw calibration images from a {type(train).__name__}")


def build_engines(loaded: LoadedCheckpoint, names: list[str], folder: Path,
                  calibration_images: int = CALIBRATION_IMAGES, log=None) -> tuple[list[Engine], dict]:
    """The engines named, in ENGINES' order (eager fp32 always, the reference), and what
    int8 was quantized with; ONNX files go to ``folder``."""
    log = log or logger.info
    network, meta = loaded.network.float().eval(), loaded.meta
    layout = torch.channels_last if loaded.config.train.channels_last else torch.contiguous_format
    engines = [eager_engine(network, "fp32", layout)]
    run_precision = resolve_precision(loaded.config.train.precision, CPU)
    if "eager" in names and run_precision == "bf16" and resolve_precision("auto", CPU) == "bf16":
        engines.append(eager_engine(network, "bf16", layout))
    if "compiled" in names:
        engines.append(compiled_engine(network, layout))
    int8 = None
    if "onnxruntime" in names or "int8" in names:
        log("exporting to ONNX")
        fp32_model = export_onnx(network, meta, folder / "model.onnx").path
        if "onnxruntime" in names:
            engines.append(session_engine("onnxruntime", "fp32", fp32_model))
        if "int8" in names:
            int8 = {**int8_settings(), "calibration_images": 0}
            calibration = []
            loader = training_sample(loaded.bundle, calibration_images)
            try:
                for images, _ in loader:
                    calibration.append(np.ascontiguousarray(images.float().numpy()))
            finally:
                getattr(loader, "close", lambda: None)()
            int8["calibration_images"] = sum(len(batch) for batch in calibration)
            log(f"quantizing to int8 ({int8['calibration_images']} training images for calibration)")
            engines.append(session_engine("int8", "int8", quantize_int8(fp32_model, folder / "model-int8.onnx",
                                                                         calibration, int8)))
    return engines, int8


# ---------------------------------------------------------------- accuracy and speed


def predictions(logits: torch.Tensor, multi_label: bool, threshold: float) -> torch.Tensor:
    return logits > torch.logit(torch.tensor(threshold)) if multi_label else logits.argmax(1)


def score_engines(engines: list[Engine], loaded: LoadedCheckpoint, images: int | None = None) -> list[dict]:
    """Each engine's accuracy on the first ``images`` test images (all by default), and how it
    agrees with the first engine (eager fp32): the share of images with the same prediction
    and the largest logit difference."""
    logits = [[] for _ in engines]
    targets, seen = [], 0
    for batch, labels in loaded.loader("test"):
        if images is not None:
            batch, labels = batch[: images - seen], labels[: images - seen]
        batch = batch.to(CPU).float()
        for engine, outputs in zip(engines, logits):
            outputs.append(engine.run(batch).float())
        targets.append(labels.cpu())
        seen += len(labels)
        if images is not None and seen >= images:
            break
    if not seen:
        raise ReslabError("the test split holds no images")
    targets = torch.cat(targets)
    task = loaded.task
    reference = torch.cat(logits[0])
    expected = predictions(reference, task.multi_label, task.threshold)
    scores = []
    for outputs in logits:
        outputs = torch.cat(outputs)
        same = predictions(outputs, task.multi_label, task.threshold) == expected
        scores.append({"accuracy": float(task.correct(outputs, targets)) / seen,
                       "agreement_with_eager": float((same.all(1) if same.ndim == 2 else same).float().mean()),
                       "max_abs_logit_difference": float((outputs - reference).abs().max()),
                       "test_images": seen})
    return scores


def images_per_second(engine: Engine, meta: dict, batch_size: int, warmup: int, repeats: int) -> tuple[float, float]:
    """Throughput (images/s) and latency (ms per batch) of ``engine`` at ``batch_size``."""
    inputs = example_inputs(meta, batch_size, seed=0).contiguous(memory_format=engine.memory_format)
    seconds = median_seconds(lambda: engine.run(inputs), repeats, warmup, CPU)
    return batch_size / seconds, 1000 * seconds


def bench_engines(source: Path | str, engines: list[str] | tuple[str, ...] = ENGINES,
                  batch_sizes: list[int] | tuple[int, ...] = (1, 128), images: int | None = None,
                  data_root: str | None = None, warmup: int = 3, repeats: int = 10, threads: int | None = None,
                  calibration_images: int = CALIBRATION_IMAGES, log=None) -> dict:
    """Images/s of each engine at each batch size and its accuracy on the run's test split
    (the first ``images`` of it); a dict ready for JSON, ``results`` a row per engine x batch."""
    unknown = [name for name in engines if name not in ENGINES]
    if unknown or not engines:
        raise ReslabError(f"--engines must be some of {', '.join(ENGINES)}, got {','.join(engines) or 'none'}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ReslabError("--batch-sizes must be numbers of at least 1")
    if images is not None and images < 1:
        raise ReslabError(f"--images must be at least 1, got {images}")
    if warmup < 0 or repeats < 1:
        raise ReslabError("--warmup must be at least 0 and --repeats at least 1")
    if calibration_images < 1:
        raise ReslabError(f"calibration images must be at least 1, got {calibration_images}")
    if threads is not None:
        torch.set_num_threads(threads)
    log = log or logger.info
    load_before = load_average()
    with (load_for_evaluation(Path(source), data_root=data_root, device="cpu") as loaded,
          tempfile.TemporaryDirectory(prefix="reslab-engines-") as folder):
        built, int8 = build_engines(loaded, list(engines), Path(folder), calibration_images, log)
        log("scoring every engine on the test split")
        scores = score_engines(built, loaded, images)
        results = []
        for engine, score in zip(built, scores):
            for batch in batch_sizes:
                log(f"timing {engine.label} at batch {batch}")
                speed, latency = images_per_second(engine, loaded.meta, batch, warmup, repeats)
                results.append({"engine": engine.name, "precision": engine.precision, "batch_size": batch,
                                "images_per_second": speed, "latency_ms": latency, **score})
        meta, checkpoint = loaded.meta, str(loaded.path)
        dataset = loaded.config.data.name
    for row in results:
        reference = next(r for r in results if r["engine"] == "eager" and r["precision"] == "fp32"
                         and r["batch_size"] == row["batch_size"])
        row["speedup_vs_eager"] = row["images_per_second"] / reference["images_per_second"]
        row["accuracy_drop_vs_eager"] = reference["accuracy"] - row["accuracy"]
    return {"kind": "inference-engines", "checkpoint": str(source), "checkpoint_file": checkpoint,
            "model": meta["model"], "dataset": dataset, "input_size": [meta["in_channels"], *meta["image_size"]],
            "warmup": warmup, "repeats": repeats,
            "int8": int8, "environment": environment(CPU, load_before),
            "note": "accuracy on the test split without test-time flips; speed on random inputs",
            "results": results}


def format_engine_bench(bench: dict) -> str:
    """The engine comparison as a plain-text table."""
    headers = ["engine", "batch", "images/s", "x eager", "accuracy", "drop vs eager fp32", "same top-1"]
    rows = [[r["engine"] + ("" if r["precision"] in ("fp32", "int8") else f" {r['precision']}"),
             str(r["batch_size"]), f"{r['images_per_second']:,.1f}", f"{r['speedup_vs_eager']:.2f}",
             f"{100 * r['accuracy']:.2f}%", f"{100 * r['accuracy_drop_vs_eager']:.2f} pts",
             f"{100 * r['agreement_with_eager']:.2f}%"] for r in bench["results"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [headers, *rows]]
    env, first = bench["environment"], bench["results"][0]
    lines.append(f"{bench['model']} on {bench['dataset']}: accuracy over {first['test_images']:,} test images; "
                 f"CPU {env['processor']} ({', '.join(env['cpu_flags']) or 'flags unknown'}), {env['threads']} "
                 f"thread{'s' if env['threads'] != 1 else ''}, torch {env['torch']}; median of {bench['repeats']} "
                 f"repeats after {bench['warmup']} warm-up calls")
    if bench.get("int8"):
        int8 = bench["int8"]
        lines.append(f"int8: ONNX Runtime static quantization, {int8['format']}, per-channel int8 weights"
                     f"{' (7-bit: no VNNI)' if int8['reduce_range'] else ''}, {int8['activations']} activations "
                     f"calibrated ({int8['calibration']}) on {int8['calibration_images']} training images")
    warning = busy_warning(bench)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def _numbers(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ReslabError(f"{flag} must be numbers separated by commas, got {text!r}") from None


def cmd_bench_engines(args) -> int:
    """``reslab bench RUN``: the command line's entry (commands/bench.py parses, this runs and prints)."""
    if getattr(args, "models", None):
        raise ReslabError("give a run folder or checkpoint (to compare inference engines) or --models, not both")
    if getattr(args, "device", "auto") not in ("auto", "cpu"):
        raise ReslabError("reslab bench RUN measures CPU inference; --device applies to --models")
    bench = bench_engines(args.run, [e.strip() for e in args.engines.split(",") if e.strip()],
                          _numbers(args.batch_sizes, "--batch-sizes"), images=args.images,
                          data_root=args.data_root, warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    print(format_engine_bench(bench))
    if args.json:
        write_bench(bench, Path(args.json))
        print(f"written: {args.json}")
    return 0
