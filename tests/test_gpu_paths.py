"""The GPU path's fixes (issue 22), checked on the CPU where the mechanism is the same: fused
SGD after a step the GradScaler skipped, the device loader's one copy per epoch, and logits
kept across micro-batches when a CUDA graph's replay would overwrite them. test_gpu.py checks
the same paths on a GPU."""

import copy

import pytest
import torch
from torch import nn

import reslab.data.loader as loader_module
from reslab.config import OptimConfig
from reslab.data.arrays import ArrayDataset
from reslab.data.loader import BatchAugment, DeviceLoader
from reslab.train.optim import build_optimizer
from reslab.train.step import train_step


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def test_fused_sgd_after_a_skipped_first_step_goes_on_as_plain_sgd():
    """Fused SGD makes its momentum buffers with empty_like at its first step; a first step the
    scaler skips left them holding stale memory, and the weights turned NaN two steps later."""
    fused_net = small_net()
    plain_net = copy.deepcopy(fused_net)
    config = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fused = build_optimizer(fused_net.parameters(), config, fused=True)
    plain = build_optimizer(plain_net.parameters(), config, fused=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**16) for _ in range(2)]
    generator = torch.Generator().manual_seed(1)
    images, targets = torch.randn(32, 64, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    cpu = torch.device("cpu")
    for batch in (images * float("inf"), images, images, images):  # an overflow, then good steps
        stale = [torch.full((256, 64), float("nan")) for _ in range(8)]  # memory an empty_like may reuse
        del stale
        for net, optimizer, scaler in zip((fused_net, plain_net), (fused, plain), scalers):
            train_step(net, batch, targets, nn.CrossEntropyLoss(), optimizer, scaler, cpu)
        if batch is not images:
            assert all(torch.count_nonzero(fused.state[p]["momentum_buffer"]) == 0 for p in fused_net.parameters())
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**15
    for fused_parameter, plain_parameter in zip(fused_net.parameters(), plain_net.parameters()):
        torch.testing.assert_close(fused_parameter, plain_parameter, rtol=1e-5, atol=1e-6)


def test_the_device_loader_sends_an_epoch_of_indices_and_draws_in_one_copy_each(monkeypatch):
    copies = []

    def counted(tensor, device):
        copies.append(tuple(tensor.shape))
        return tensor.to(device)

    monkeypatch.setattr(loader_module, "to_device", counted)
    data = ArrayDataset(torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8), torch.arange(70) % 10)
    loader = DeviceLoader(data, 16, "cpu", [0.0] * 3, [1.0] * 3, train=True,
                          augment=BatchAugment(crop_padding=2, hflip=True))
    batches = list(loader)
    assert len(batches) == 4
    assert sorted(copies) == sorted([(64,), (64, 2), (64,)])  # indices, crop offsets, flips: 4 batches of 16
    copies.clear()
    assert len(list(loader.iterate(3))) == 1 and sorted(copies) == sorted([(16,), (16, 2), (16,)])


class OverwritesItsLastOutput(nn.Module):
    """A forward whose next call overwrites the memory of its last output, as a CUDA graph's
    replay does under torch.compile's reduce-overhead mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 10)
        self.last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.last.data.fill_(float("nan"))
        self.last = self.linear(x)
        return self.last


@pytest.mark.parametrize("accumulate", [2, 4])
def test_every_micro_batch_keeps_its_logits_when_the_next_forward_overwrites_them(accumulate):
    net = OverwritesItsLastOutput()
    reference = nn.Linear(8, 10)
    reference.load_state_dict(net.linear.state_dict())
    images, targets = torch.randn(32, 8), torch.randint(0, 10, (32,))
    expected = reference(images).detach()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    _, logits = train_step(net, images, targets, nn.CrossEntropyLoss(), optimizer,
                           torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), accumulate=accumulate)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected)
