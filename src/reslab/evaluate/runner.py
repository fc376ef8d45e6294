"""Re-evaluation of a saved checkpoint on a dataset split."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, validate, from_dict
from ..data import DeviceLoader, load_splits
from ..errors import ReslabError
from ..train.checkpoint import load_checkpoint
from ..train.device import resolve_device
from ..train.loop import build_model, predict
from .metrics import classification_metrics


def evaluate_checkpoint(path: Path, data: str | None = None, data_root: str | None = None, split: str = "test",
                        device: str = "auto", model: str | None = None, batch_size: int = 512) -> dict:
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
    splits = load_splits(config.data)
    if splits.num_classes != meta["num_classes"] or splits.in_channels != meta["in_channels"]:
        raise ReslabError(
            f"{path} was trained on {meta['num_classes']} classes of {meta['in_channels']}-channel images; "
            f"{config.data.name} has {splits.num_classes} classes of {splits.in_channels}-channel images"
        )
    target = resolve_device(device)
    network = build_model(meta)
    load_weights(network, state["model"], path)
    network.to(target)
    chosen = splits.test if split == "test" else splits.val
    if chosen is None:
        raise ReslabError(f"{config.data.name} has no {split} split in this configuration")
    loader = DeviceLoader(chosen, batch_size, target, meta["mean"], meta["std"], train=False,
                          resize=config.data.image_size)
    metrics = classification_metrics(*predict(network, loader, target), splits.classes)
    return {"model": meta["model"], "dataset": config.data.name, "split": split, "checkpoint": str(path),
            "test": metrics}


def load_weights(model, state_dict: dict, source) -> None:
    """Load a state dict, naming the first missing, unexpected or mis-shaped key on failure."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong:
        first = (f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}" if unexpected
                 else f"key {wrong[0]!r} has shape {tuple(state_dict[wrong[0]].shape)}, "
                      f"the model wants {tuple(own[wrong[0]].shape)}")
        raise ReslabError(f"{source} does not fit {type(model).__name__}: {first} "
                          f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped)")
    model.load_state_dict(state_dict)
