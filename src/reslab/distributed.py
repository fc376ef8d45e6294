"""Distributed data parallel training, detected from torchrun's environment (as nanoGPT
does): the same ``reslab train`` runs alone or as one of many processes.

``train.batch_size`` is always the global batch; each of the N processes takes 1/N of
it, so the optimisation (and the learning rate) does not depend on how many processes
share the work. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import ReslabError


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(), device
    env = DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return env, device


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value, env: DistEnv):
    """Rank 0's ``value`` on every rank (for names that only rank 0 can decide)."""
    if not env.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_gather_rows(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (ranks may hold different counts)."""
    if not env.enabled:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(env.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(env.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if it is true on one (a stop request seen by any process)."""
    if not env.enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of all processes, for CPUs, where PyTorch's
    SyncBatchNorm does not run. Sums and squared sums are all-reduced with PyTorch's
    functional collective, which has a backward (so the gradient is the global batch's too)
    and compiles with ``torch.compile``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed._functional_collectives import all_reduce

        dtype = x.dtype
        x = x.float()  # statistics in fp32 under bf16/fp16 autocast, as PyTorch's batch norm keeps them
        channels = x.shape[1]
        local_count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), x.square().sum((0, 2, 3)), local_count]), "sum",
                           dist.group.WORLD)
        count = stats[-1]
        mean = stats[:channels] / count
        # E[x^2] - E[x]^2 can come out a hair below zero in floating point: clamp it.
        var = (stats[channels : 2 * channels] / count - mean.square()).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        shape = (1, channels, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (out * self.weight.view(shape) + self.bias.view(shape)).to(dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """PyTorch's SyncBatchNorm on GPUs; GlobalBatchNorm2d on the CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(model, name, replacement.to(child.weight.device))
        else:
            convert_sync_batchnorm(child, device)
    return model


def check_batch(batch_size: int, env: DistEnv, accumulate: int = 1) -> None:
    if batch_size % env.world_size:
        raise ReslabError(f"train.batch_size {batch_size} (the global batch) must divide evenly among "
                          f"{env.world_size} processes")
    if (batch_size // env.world_size) % accumulate:
        raise ReslabError(f"train.accumulate={accumulate} must divide each process's share of train.batch_size "
                          f"({batch_size // env.world_size} of {batch_size} over {env.world_size} processes)")
