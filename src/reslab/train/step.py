"""One optimisation step, the same for the training loop and for ``reslab bench``."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..precision import autocast


def train_step(forward: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
               precision: str = "fp32", scheduler=None, accumulate: int = 1,
               clip_grad_norm: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under the run's precision, backward (scaled for fp16), update, schedule.
    ``forward`` is the model as it is run (DDP- or compile-wrapped). Returns (loss, logits).

    ``accumulate`` splits the batch into that many micro-batches, each forward and backward on
    its own, the gradients summed, then one update: the gradient of the batch's mean loss,
    in the activation memory of one micro-batch (batch-norm statistics are per micro-batch,
    as in every framework). Under DDP only the last backward all-reduces.
    """
    optimizer.zero_grad(set_to_none=True)
    parts = ([(images, targets)] if accumulate == 1 else  # the usual step: no splitting on the hot path
             [(x, y) for x, y in zip(images.tensor_split(accumulate), targets.tensor_split(accumulate)) if len(x)])
    losses, outputs = [], []
    for index, (part, part_targets) in enumerate(parts):
        syncing = index == len(parts) - 1
        with (contextlib.nullcontext() if syncing else _no_sync(forward)):
            with autocast(device, precision):
                logits = forward(part)
                loss = criterion(logits, part_targets)
            share = len(part) / len(images)  # each micro-batch's mean loss weighs by its images
            scaler.scale(loss * share if len(parts) > 1 else loss).backward()
        losses.append(loss.detach() * share)
        # Copied when there is a next micro-batch: under compile's reduce-overhead mode the
        # logits live in a CUDA graph's output memory, which its next replay overwrites.
        outputs.append(logits.detach().clone() if not syncing else logits.detach())
    if clip_grad_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not fp16-scaled ones
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                       clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    if len(parts) == 1:
        return loss, logits
    return torch.stack(losses).sum(), torch.cat(outputs)


def _no_sync(forward: nn.Module):
    """DDP's ``no_sync`` (skip the gradient all-reduce), through a ``torch.compile`` wrapper too."""
    ddp = getattr(forward, "_orig_mod", forward)
    return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else contextlib.nullcontext()
