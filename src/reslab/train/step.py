"""One optimisation step, the same for the training loop and for ``reslab bench``."""

from __future__ import annotations

import torch
from torch import nn

from ..precision import autocast


def train_step(forward: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
               precision: str = "fp32", scheduler=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under the run's precision, backward (scaled for fp16), update, schedule.
    ``forward`` is the model as it is run (DDP- or compile-wrapped). Returns (loss, logits)."""
    with autocast(device, precision):
        logits = forward(images)
        loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    return loss, logits
