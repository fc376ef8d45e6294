"""torchvision's published ImageNet weights into reslab's ImageNet ResNets and ResNeXt.

reslab's module names are torchvision's, so the state_dict loads as it is; only a head of
another size is left out (fine-tuning to another number of classes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...errors import ReslabError
from .files import load_state_dict_flexible, read_weights_file

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def _looks_like_path(text: str) -> bool:
    return text.endswith(WEIGHT_SUFFIXES) or "/" in text or "\\" in text or Path(text).exists()


def load_torchvision_weights(model: nn.Module, path_or_name: str | Path) -> list[str]:
    """Load torchvision weights from a file, or by enum name (``IMAGENET1K_V2``, ``DEFAULT``,
    ``ResNet50_Weights.IMAGENET1K_V1``) through torch.hub's download cache.

    Returns notes (a skipped head, say). Offline and not yet cached, a ``ReslabError`` says
    which file to download and to pass its path instead.
    """
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or _looks_like_path(text):
        state_dict = read_weights_file(text)
        source = f"weights file {text}"
    else:
        state_dict, source = _download(model, text)
    return load_state_dict_flexible(model, state_dict, source=source, skip_mismatched_head=True)


def _download(model: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], str]:
    from torchvision.models import get_model_weights

    arch = getattr(model, "torchvision_name", None)
    if arch is None:
        raise ReslabError(
            f"torchvision publishes no weights for {type(model).__name__}; pass the path of a weights file"
        )
    weights_enum = get_model_weights(arch)
    member = name.split(".")[-1]
    if member not in weights_enum.__members__:
        available = ", ".join(weights_enum.__members__)
        raise ReslabError(f"torchvision has no weights {name!r} for {arch}: choose one of {available}")
    weights = weights_enum[member]
    label = f"{weights_enum.__name__}.{weights.name}"
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, weights_only=True
        )
    except Exception as exc:  # urllib, socket and SSL errors differ by platform
        raise ReslabError(
            f"cannot download torchvision weights {label} ({type(exc).__name__}: {str(exc)[:120]}); "
            f"download {weights.url} on a machine with network access and pass the file's path instead"
        ) from None
    return state_dict, f"torchvision weights {label}"
