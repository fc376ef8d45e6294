"""Parameter counts, multiply-accumulates and a layer table (report 000's Fig. 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import describe_model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameters, and BN moving statistics (mean and variance).

    Papers and torchvision count parameters only; Keras also counts BN moving
    statistics, as "non-trainable params", so its totals are parameters + statistics.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    statistics = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    )
    return {
        "parameters": trainable + frozen,
        "trainable": trainable,
        "frozen": frozen,
        "bn_statistics": statistics,
        "keras_total": trainable + frozen + statistics,
        "keras_non_trainable": frozen + statistics,
    }


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one image (PyTorch's FLOP counter / 2)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


def layer_table(model: nn.Module, input_shape: tuple[int, ...], depth: int | None = None) -> list[LayerRow]:
    """One row per module in call order, with its output shape and parameters: every leaf
    module, or with ``depth`` the modules nested that deep (``depth=2``: ``layer1.0``)
    and shallower leaves, each row counting the parameters below it."""
    rows: list[LayerRow] = []
    names = {module: name for name, module in model.named_modules()}
    hooks = []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            own = sum(p.numel() for p in module.parameters())
            rows.append(LayerRow(names[module], type(module).__name__, tuple(output.shape[1:]), own))

    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        leaf = not list(module.children())
        if (depth is None and leaf) or (depth is not None and (level == depth or (leaf and 0 < level < depth))):
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return rows


def format_summary(model: nn.Module, name: str, input_shape: tuple[int, ...], depth: int | None = None) -> str:
    rows = layer_table(model, input_shape, depth)
    counts = count_parameters(model)
    macs = count_macs(model, input_shape)
    width = max([len(r.name) for r in rows] + [10])
    lines = [f"Model: {name}: {describe_model(name) or type(model).__name__}   input {tuple(input_shape)}", ""]
    lines.append(f"{'layer':<{width}}  {'type':<18} {'output shape':<18} {'params':>12}")
    lines.append("-" * (width + 52))
    for row in rows:
        lines.append(f"{row.name:<{width}}  {row.kind:<18} {str(row.output_shape):<18} {row.parameters:>12,}")
    lines.append("-" * (width + 52))
    lines.append(f"Parameters:        {counts['parameters']:,} (trainable {counts['trainable']:,}, "
                 f"frozen {counts['frozen']:,})")
    lines.append(f"BN moving stats:   {counts['bn_statistics']:,}")
    lines.append(f"Keras-style count: total {counts['keras_total']:,} = trainable {counts['trainable']:,} "
                 f"+ non-trainable {counts['keras_non_trainable']:,} (BN moving statistics and frozen weights)")
    lines.append(f"MACs per image:    {macs:,} ({macs / 1e6:.2f} M)")
    return "\n".join(lines)
