"""Where the data's randomness comes from: streams seeded by (seed, epoch) for an epoch's
shuffle and batch draws, and by (seed, epoch, image) for one image's augmentation, so that
an epoch is the same on any device, with any number of worker processes, and after a
resume."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch); 1_000_003 is prime.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (a 63-bit mix of the three)."""
    mixed = (seed * 1_000_003 + epoch) * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9
    return mixed % (2**63 - 1)


def seeded(function, argument, seed: int):
    """``function(argument)`` with the CPU generator (which torchvision's transforms draw
    from) seeded by ``seed``; in the training process itself (no worker processes) the
    generator's state is restored after, so training's own draws do not change."""
    generator = torch.default_generator  # its manual_seed costs 1 us, torch.manual_seed's 75
    in_worker = get_worker_info() is not None
    state = None if in_worker else generator.get_state()
    generator.manual_seed(seed)
    try:
        return function(argument)
    finally:
        if state is not None:
            generator.set_state(state)
