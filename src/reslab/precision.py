"""Numeric precision of a forward pass: which one ``auto`` means on a device, and the
autocast context that applies it. Shared by training, evaluation and the benchmarks, so
that all three compute the same way."""

from __future__ import annotations

import contextlib
import typing
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the config (which names these choices) loads without it,
# so a command with a bad config fails in a fraction of a second.
Precision = Literal["fp32", "bf16", "fp16", "auto"]


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto``: bf16 where the device computes it natively, fp16 on older GPUs, else fp32."""
    if precision != "auto":
        return typing.cast(Precision, precision)
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass (bf16 or fp16); fp32 is a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
