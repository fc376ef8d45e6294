"""A model's logits over a whole loader: the one evaluation pass of training, of
``reslab evaluate`` and of the benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..precision import autocast


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, precision: str = "fp32", env=None, flip: bool = False):
    """All logits and targets of ``loader`` (gathered from every process when distributed);
    with ``flip`` each image's logits are averaged with its mirror image's."""
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        with autocast(device, precision):
            logits = model(images).float()
            if flip:
                logits = (logits + model(images.flip(3)).float()) / 2
        outputs.append(logits)
        targets.append(labels)
    logits, labels = torch.cat(outputs), torch.cat(targets)
    if env is not None and env.enabled:
        logits, labels = distributed.all_gather_rows(logits, env), distributed.all_gather_rows(labels, env)
    return logits.cpu(), labels.cpu()
