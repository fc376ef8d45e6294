"""Checkpoints: plain dicts of tensors and Python values, written atomically and read
with ``torch.load(weights_only=True)``, so loading one never runs code from it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from .errors import ReslabError
from .runfs import atomic_write
from .torchfiles import safe_torch_load

EPOCH_FILE = re.compile(r"epoch-(\d+)\.pt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


# What runs each export format that reslab writes but does not read back as a checkpoint.
EXPORT_RUNNERS = {".onnx": "run an .onnx with onnxruntime (reslab bench RUN compares it)",
                  ".pt2": "run a .pt2 with torch.export.load(path).module()"}


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = best_or_last(path)
    if not path.is_file():
        raise ReslabError(f"checkpoint {path} does not exist")
    if path.suffix.lower() in EXPORT_RUNNERS:
        raise ReslabError(f"{path} is an export, not a checkpoint: give the run folder, its .pt checkpoint or a hub "
                          f"folder; {EXPORT_RUNNERS[path.suffix.lower()]}")
    state = safe_torch_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise ReslabError(f"{path} is not a reslab checkpoint (no 'model' and 'meta' entries)")
    problem = weights_problem(state["model"]) or meta_problem(state["meta"])
    if problem:
        raise ReslabError(f"{path} is not a usable reslab checkpoint: {problem}")
    return state


# What a checkpoint's meta may ask for: a run's sizes, not a request for gigabytes.
MAX_CLASSES = 100_000
MAX_SIDE = 4096
MAX_CHANNELS = 16


def weights_problem(weights) -> str | None:
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        return "its 'model' entry is not a state_dict (names to tensors)"
    return None


def meta_problem(meta) -> str | None:
    """Why ``meta`` cannot describe a network and its inputs, or None."""
    if not isinstance(meta, dict):
        return "its 'meta' entry is not a mapping"

    def whole(key: str, low: int, high: int) -> bool:
        value = meta.get(key)
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    if not isinstance(meta.get("model"), str) or not 0 < len(meta["model"]) <= 64:
        return "meta 'model' is not a model name"
    if not whole("num_classes", 1, MAX_CLASSES) or not whole("in_channels", 1, MAX_CHANNELS):
        return (f"meta 'num_classes' (1..{MAX_CLASSES:,}) or 'in_channels' (1..{MAX_CHANNELS}) is missing or "
                "out of range")
    classes, size = meta.get("classes"), meta.get("image_size")
    if not isinstance(classes, list) or len(classes) != meta["num_classes"] or not all(isinstance(c, str)
                                                                                           for c in classes):
        return "meta 'classes' is not a list of num_classes names"
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in size)):
        return f"meta 'image_size' is not [height, width] of at most {MAX_SIDE} pixels"
    for key in ("mean", "std"):
        values = meta.get(key)
        if not (isinstance(values, list) and len(values) == meta["in_channels"]
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
            return f"meta {key!r} is not one number per channel"
    if any(v == 0 for v in meta["std"]):
        return "meta 'std' has a zero"
    if not isinstance(meta.get("model_options", {}), dict) or not isinstance(meta.get("config", {}), dict):
        return "meta 'model_options' or 'config' is not a mapping"
    return None


def epoch_checkpoints(run_dir: Path) -> list[Path]:
    """The epoch checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("epoch-*.pt") if (m := EPOCH_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def best_or_last(run_dir: Path) -> Path:
    best = Path(run_dir) / "checkpoints" / "best.pt"
    if best.is_file():
        return best
    epochs = epoch_checkpoints(run_dir)
    if not epochs:
        raise ReslabError(f"{run_dir} holds no checkpoint (checkpoints/best.pt or epoch-*.pt)")
    return epochs[-1]


def prune(run_dir: Path, keep: int) -> None:
    for old in epoch_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
