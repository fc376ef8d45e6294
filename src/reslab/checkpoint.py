"""Checkpoints: plain dicts of tensors and Python values, written atomically and read
with ``torch.load(weights_only=True)``, so loading one never runs code from it."""

from __future__ import annotations

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


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = best_or_last(path)
    if not path.is_file():
        raise ReslabError(f"checkpoint {path} does not exist")
    state = safe_torch_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise ReslabError(f"{path} is not a reslab checkpoint (no 'model' and 'meta' entries)")
    return state


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
