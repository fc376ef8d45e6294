"""Reading PyTorch files without ever running code from them: ``torch.load`` with
``weights_only=True`` (tensors and plain containers only), every failure a user can cause
mapped to one ``ReslabError`` line. Checkpoints and foreign weights files both read
through here."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import ReslabError


def safe_torch_load(path: Path, what: str = "PyTorch file", map_location: str | torch.device = "cpu") -> Any:
    """The content of ``path``; ``what`` names the kind of file in the error message."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if "global" in text:  # the weights-only unpickler met a class or function ("GLOBAL print was not ...")
            raise ReslabError(f"refusing to load {path}: it holds objects other than tensors and plain values "
                              "(loading it could run code); save model.state_dict() instead") from None
        raise ReslabError(f"{path} is not a readable {what} ({first_line(exc)})") from None
    except Exception as exc:  # zip, EOF, OS and format errors all mean "not a readable file"
        raise ReslabError(f"{path} is not a readable {what}: truncated or not a PyTorch file "
                          f"({type(exc).__name__}: {first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
