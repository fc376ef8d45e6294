"""Optimizers and learning-rate schedules from the config.

Every schedule is stepped once per iteration, so the paper's "divide by 10 at 32k and
48k iterations" and "at epochs 100 and 150" are the same mechanism with milestones in
different units.
"""

from __future__ import annotations

import math

import torch

from ..config import OptimConfig, ScheduleConfig


def build_optimizer(params, config: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """``params`` is a model's parameters or a list of parameter groups (transfer learning).

    ``fused`` (for CUDA) updates all parameters in one kernel; elsewhere PyTorch's default
    multi-tensor (foreach) implementation is used.
    """
    if config.name == "sgd":
        sgd = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                              weight_decay=config.weight_decay, fused=fused or None)
        if fused and config.momentum:
            zero_momentum_buffers(sgd)
        return sgd
    optimizer = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    beta1, beta2 = config.betas
    return optimizer(params, lr=config.lr, betas=(beta1, beta2), weight_decay=config.weight_decay,
                     fused=fused or None)


def zero_momentum_buffers(sgd: torch.optim.SGD) -> None:
    """Start fused SGD from zero momentum buffers.

    Fused SGD's first step makes its buffers with ``torch.empty_like`` and lets the kernel
    fill them; when the fp16 GradScaler skips that step (an overflow, routine while the
    scale settles) the kernel returns early and the buffers keep whatever the memory held,
    which the next step builds on: NaN weights two steps in. From zeros the first step is
    the same (buffer = momentum * 0 + g = g, no dampening) and a skipped step leaves zeros.
    """
    for group in sgd.param_groups:
        for parameter in group["params"]:
            sgd.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)


def lr_factor(config: ScheduleConfig, step: int, steps_per_epoch: int, total_steps: int, base_lr: float) -> float:
    """The multiple of the base rate at iteration ``step`` (0-based), warm-up included."""
    if config.warmup != "none" and step < config.warmup_iters:
        start = config.warmup_lr / base_lr
        if config.warmup == "constant":  # He et al. §4.2: 0.01 until training gets going, then 0.1
            return start
        return start + (1 - start) * step / config.warmup_iters
    if config.name == "constant":
        return 1.0
    if config.name == "multistep":
        scale = steps_per_epoch if config.unit == "epoch" else 1
        passed = sum(step >= m * scale for m in config.milestones)
        return config.gamma**passed
    # cosine, after the warm-up, down to min_lr at the last step
    begin = config.warmup_iters if config.warmup != "none" else 0
    progress = min(1.0, (step - begin) / max(1, total_steps - begin))
    floor = config.min_lr / base_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.name == "onecycle":
        # Smith & Topin 2019, torch's implementation (it also cycles momentum).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps
        )
    base_lr = optimizer.defaults["lr"]  # optim.lr: warm-up rates are given relative to it
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch, total_steps, base_lr)
    )
