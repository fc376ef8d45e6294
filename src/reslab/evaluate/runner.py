"""Re-evaluation of a saved checkpoint on a dataset split."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..config import from_dict, validate
from ..data import build_data
from ..device import resolve_device
from ..errors import ReslabError
from ..models import model_from_meta
from ..precision import resolve_precision
from .predict import predict
from .task import Task


def evaluate_checkpoint(path: Path, data: str | None = None, data_root: str | None = None, split: str = "test",
                        device: str = "auto", model: str | None = None, batch_size: int | None = None,
                        weights: str = "live") -> dict:
    """Metrics of a checkpoint on a split, computed as the run computed its own: in its
    precision, memory format, test-time augmentation and evaluation batch size, so that
    re-evaluating a run on the device it trained on reproduces its metrics.json. A precision
    the device cannot run (fp16 on a CPU) falls back to fp32, and the result says so.
    ``weights="ema"`` evaluates the averaged weights an epoch checkpoint of a run with
    ``train.ema`` holds beside the live ones."""
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
    batch_size = batch_size or config.train.eval_batch_size
    channels_last = config.train.channels_last
    bundle = build_data(config.data, config.augment, device=target, batch_size=batch_size, eval_batch_size=batch_size,
                        mean_std=(meta["mean"], meta["std"]), channels_last=channels_last)
    try:
        if bundle.num_classes != meta["num_classes"] or bundle.in_channels != meta["in_channels"]:
            raise ReslabError(
                f"{path} was trained on {meta['num_classes']} classes of {meta['in_channels']}-channel images; "
                f"{config.data.name} has {bundle.num_classes} classes of {bundle.in_channels}-channel images"
            )
        network = model_from_meta(meta)
        load_weights(network, _weights(state, weights, path), path)
        network.to(target)
        if channels_last:
            network.to(memory_format=torch.channels_last)
        loader = bundle.test if split == "test" else bundle.val
        if loader is None:
            raise ReslabError(f"{config.data.name} has no {split} split in this configuration")
        task = Task(bundle.task, bundle.classes, config.train.threshold)
        metrics = task.metrics(*predict(network, loader, target, precision, flip=config.train.tta))
    finally:
        for each in bundle.loaders():
            getattr(each, "close", lambda: None)()
    result = {"model": meta["model"], "dataset": config.data.name, "split": split, "checkpoint": str(path),
              "precision": precision, split: metrics}
    if note:
        result["precision_note"] = note
    return result


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
