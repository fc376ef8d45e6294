"""Re-evaluation of a saved checkpoint on a dataset split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import best_or_last, load_checkpoint
from ..config import RunConfig, from_dict, validate
from ..data import DataBundle, build_data
from ..device import resolve_device
from ..errors import ReslabError
from ..models import model_from_meta
from ..models.weights.hub import is_hub_source, load_hub_model
from ..precision import resolve_precision
from .calibration import calibration_metrics, plot_reliability, read_calibration, resolve_checkpoint
from .predict import predict
from .task import Task

logger = logging.getLogger(__name__)

# Input pixels in one batch a default batch size may hold (256 images of 224x224): the largest
# inputs a family takes (models/registry.py) go in smaller batches, so memory stays as at 224.
MAX_BATCH_PIXELS = 256 * 224 * 224


def batch_for(batch_size: int, image_size) -> int:
    """``batch_size`` lowered to hold at most ``MAX_BATCH_PIXELS`` input pixels (one image at least)."""
    height, width = image_size
    return max(1, min(batch_size, MAX_BATCH_PIXELS // (height * width)))


@dataclass
class LoadedCheckpoint:
    """A checkpoint's network on its device with the run's data loaders, and how the run
    evaluated (precision, test-time flip): what ``evaluate``, ``calibrate`` and the
    robustness evaluation share. Close it (or use ``with``) to stop file-loader workers."""

    path: Path  # the checkpoint file
    meta: dict
    config: RunConfig
    network: nn.Module
    bundle: DataBundle
    task: Task
    device: torch.device
    precision: str
    note: str | None  # why the precision differs from the run's, if it does

    def loader(self, split: str):
        loader = self.bundle.test if split == "test" else self.bundle.val
        if loader is None:
            raise ReslabError(f"{self.config.data.name} has no {split} split in this configuration")
        return loader

    def logits(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        logits, targets = predict(self.network, loader, self.device, self.precision, flip=self.config.train.tta)
        check_finite_logits(logits, self.path)
        return logits, targets

    def close(self) -> None:
        for each in self.bundle.loaders():
            getattr(each, "close", lambda: None)()

    def __enter__(self) -> LoadedCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_for_evaluation(path: Path, data: str | None = None, data_root: str | None = None, device: str = "auto",
                        model: str | None = None, batch_size: int | None = None,
                        weights: str = "live") -> LoadedCheckpoint:
    """A checkpoint ready to evaluate as its run evaluated: in its precision, memory format,
    test-time augmentation and evaluation batch size. A precision the device cannot run
    (fp16 on a CPU) falls back to fp32, and ``note`` says so. ``weights="ema"`` takes the
    averaged weights an epoch checkpoint of a run with ``train.ema`` holds. A hub folder
    (``reslab export --format hub``, timm's, ``hf-hub:``) has no run config: its data
    settings come from its preprocessing, in fp32, and ``data`` is needed unless the
    folder names the dataset it was trained on."""
    if is_hub_source(str(path)):
        return _load_hub_for_evaluation(str(path), data, data_root, device, model, batch_size)
    path = Path(path)
    state = load_checkpoint(path)
    meta = state["meta"]
    if model is not None and meta["model"] != model:
        raise ReslabError(f"{path} is a checkpoint of {meta['model']}, not {model}")
    config = from_dict(meta["config"])
    if data is not None:
        config.data.name = data
    if data_root is not None:
        config.data.root = data_root
    validate(config)
    target = resolve_device(device)
    precision = resolve_precision(config.train.precision, target)
    note = None
    if precision == "fp16" and target.type == "cpu":
        precision, note = "fp32", "trained in fp16, which the CPU does not run: evaluated in fp32"

    def network():
        built = model_from_meta(meta)
        load_weights(built, _weights(state, weights, path), path)
        return built

    file = best_or_last(path) if path.is_dir() else path
    return _assemble(file, meta, config, network, target, precision, note, batch_size)


def _load_hub_for_evaluation(source: str, data: str | None, data_root: str | None, device: str,
                             model: str | None, batch_size: int | None) -> LoadedCheckpoint:
    network, meta = load_hub_model(source)
    if model is not None and meta["model"] != model:
        raise ReslabError(f"{source} holds {meta['model']}, not {model}")
    dataset = data or meta.get("dataset")
    if not dataset:
        raise ReslabError(f"{source} does not say which dataset it was trained on: give --data (and --data-root)")
    config = RunConfig()
    config.data.name = dataset
    if data_root is not None:
        config.data.root = data_root
    preprocess = meta.get("preprocess") or {}
    config.data.channels = meta["in_channels"]
    config.data.image_size = preprocess.get("image_size") or meta["image_size"][0]
    for key in ("resize_size", "center_crop", "interpolation"):
        if preprocess.get(key) is not None:
            setattr(config.data, key, preprocess[key])
    config.train.precision = "fp32"
    config.train.eval_batch_size = batch_for(config.train.eval_batch_size, meta["image_size"])
    try:
        validate(config)
    except ReslabError as exc:
        raise ReslabError(f"{source} on {dataset}: {exc}") from None
    return _assemble(Path(source), meta, config, lambda: network, resolve_device(device), "fp32", None, batch_size)


def _assemble(file: Path, meta: dict, config: RunConfig, network, target: torch.device, precision: str,
              note: str | None, batch_size: int | None) -> LoadedCheckpoint:
    """The data loaders of ``config`` in the checkpoint's normalization, checked against the
    network's classes and channels, and ``network()`` on the device."""
    batch_size = batch_size or config.train.eval_batch_size
    channels_last = config.train.channels_last
    bundle = build_data(config.data, config.augment, device=target, batch_size=batch_size, eval_batch_size=batch_size,
                        mean_std=(meta["mean"], meta["std"]), channels_last=channels_last)
    try:
        if bundle.num_classes != meta["num_classes"] or bundle.in_channels != meta["in_channels"]:
            raise ReslabError(
                f"{file} was trained on {meta['num_classes']} classes of {meta['in_channels']}-channel images; "
                f"{config.data.name} has {bundle.num_classes} classes of {bundle.in_channels}-channel images"
            )
        built = network()
        built.to(target)
        if channels_last:
            built.to(memory_format=torch.channels_last)
    except BaseException:
        for each in bundle.loaders():
            getattr(each, "close", lambda: None)()
        raise
    task = Task(bundle.task, bundle.classes, config.train.threshold)
    return LoadedCheckpoint(file, meta, config, built, bundle, task, target, precision, note)


def check_finite_logits(logits: torch.Tensor, source) -> None:
    """Refuse outputs holding NaN or infinity rather than report figures computed from them."""
    finite = torch.isfinite(logits).all(dim=1) if logits.dim() > 1 else torch.isfinite(logits)
    if not bool(finite.all()):
        raise ReslabError(f"{source}: the model's outputs are not finite (NaN or infinity) for "
                          f"{int((~finite).sum()):,} of {finite.numel():,} images; its weights or its normalization "
                          "(mean and std) are broken")


def trained_on(meta: dict) -> str | None:
    """The dataset a checkpoint's model was trained on (a hub folder may not say)."""
    return (meta.get("config") or {}).get("data", {}).get("name") or meta.get("dataset")


def evaluate_checkpoint(path: Path, data: str | None = None, data_root: str | None = None, split: str = "test",
                        device: str = "auto", model: str | None = None, batch_size: int | None = None,
                        weights: str = "live") -> dict:
    """Metrics of a checkpoint on a split, computed as the run computed its own (see
    ``load_for_evaluation``), so that re-evaluating a run on the device it trained on
    reproduces its metrics.json. Single-label metrics include calibration (ECE, MCE, NLL,
    Brier); where ``reslab calibrate`` stored a temperature for this checkpoint, the same
    figures after temperature scaling are under ``calibrated``."""
    with load_for_evaluation(path, data, data_root, device, model, batch_size, weights) as loaded:
        logits, targets = loaded.logits(loaded.loader(split))
        metrics = loaded.task.metrics(logits, targets)
        stored = None if loaded.task.multi_label else read_calibration(Path(path))
    result = {"model": loaded.meta["model"], "dataset": loaded.config.data.name, "split": split,
              "checkpoint": str(path), "checkpoint_file": str(loaded.path),
              "trained_on": trained_on(loaded.meta), "precision": loaded.precision,
              split: metrics}
    if stored is not None:
        calibrated = calibration_metrics(logits, targets, stored["temperature"])
        result["calibrated"] = {"temperature": stored["temperature"],
                                **{key: calibrated[key] for key in ("ece", "mce", "nll", "brier")}}
    if loaded.note:
        result["precision_note"] = loaded.note
    return result


def write_reliability(checkpoint: Path, result: dict) -> Path | None:
    """The reliability diagram of an evaluation, into the checkpoint's run folder:
    reliability.png for the run's own checkpoint and test split (what training drew), else
    reliability-<checkpoint>-<dataset>-<split>.png. None outside a run folder or multi-label,
    and where it cannot be written (an archived, read-only run): the metrics are complete
    without it, so a warning says so rather than an error."""
    metrics = result[result["split"]]
    path, run_dir = resolve_checkpoint(Path(checkpoint))
    if "reliability" not in metrics or run_dir is None:
        return None
    own = path == best_or_last(run_dir) and result["split"] == "test" and result["dataset"] == result["trained_on"]
    name = "reliability.png" if own else f"reliability-{path.stem}-{result['dataset']}-{result['split']}.png"
    try:
        plot_reliability(metrics["reliability"], run_dir / name,
                         title=f"{result['model']} on {result['dataset']} ({result['split']}): ECE "
                               f"{100 * metrics['ece']:.2f}%")
    except OSError as exc:
        logger.warning("reliability diagram not written: cannot write %s (%s); the metrics are complete",
                       run_dir / name, exc.strerror or exc)
        return None
    return run_dir / name


def load_weights(model, state_dict: dict, source) -> None:
    """Load a state dict, naming the first missing, unexpected or mis-shaped key on failure."""
    from ..models.weights import load_state_dict_flexible

    load_state_dict_flexible(model, state_dict, source=str(source))


def _weights(state: dict, weights: str, path) -> dict:
    if weights == "live":
        return state["model"]
    if not state.get("ema"):
        raise ReslabError(f"{path} holds no averaged weights (a best.pt, or a run without train.ema)")
    return state["ema"]["module"]
