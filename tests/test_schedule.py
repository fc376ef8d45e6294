"""Learning-rate schedules, stepped per iteration."""

import pytest
import torch

from reslab.config import ScheduleConfig
from reslab.train.optim import build_optimizer, build_scheduler, lr_factor
from reslab.config import OptimConfig


def test_paper_schedule_divides_by_ten_at_32k_and_48k():
    config = ScheduleConfig()
    assert lr_factor(config, 31999, 352, 64000, 0.1) == 1.0
    assert lr_factor(config, 32000, 352, 64000, 0.1) == pytest.approx(0.1)
    assert lr_factor(config, 48000, 352, 64000, 0.1) == pytest.approx(0.01)


def test_epoch_milestones_scale_by_steps_per_epoch():
    config = ScheduleConfig(milestones=[100, 150], unit="epoch")
    assert lr_factor(config, 100 * 391 - 1, 391, 200 * 391, 0.1) == 1.0
    assert lr_factor(config, 100 * 391, 391, 200 * 391, 0.1) == pytest.approx(0.1)


def test_constant_warmup_of_resnet110():
    config = ScheduleConfig(warmup="constant", warmup_iters=400, warmup_lr=0.01)
    assert lr_factor(config, 0, 352, 64000, 0.1) == pytest.approx(0.1)
    assert lr_factor(config, 399, 352, 64000, 0.1) == pytest.approx(0.1)
    assert lr_factor(config, 400, 352, 64000, 0.1) == 1.0


def test_linear_warmup_then_cosine_to_the_floor():
    config = ScheduleConfig(name="cosine", warmup="linear", warmup_iters=10, warmup_lr=0.01, min_lr=0.001)
    assert lr_factor(config, 0, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(config, 5, 10, 110, 0.1) == pytest.approx(0.55)
    assert lr_factor(config, 10, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(config, 110, 10, 110, 0.1) == pytest.approx(0.01)


def test_scheduler_applies_factors_to_the_optimizer():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=0.1))
    scheduler = build_scheduler(optimizer, ScheduleConfig(milestones=[2]), 10, 10)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_onecycle_peaks_at_the_configured_rate():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=0.4))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="onecycle"), 10, 100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(0.4, rel=1e-3) and rates[0] < 0.05 and rates[-1] < 1e-3


@pytest.mark.parametrize("name,kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_optimizers(name, kind):
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(name=name, nesterov=True))
    assert isinstance(optimizer, kind)
