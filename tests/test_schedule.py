"""Learning-rate schedules, stepped per iteration, and a run resumed for longer under them;
the optimizer's parameter groups (rates scaled with the batch, decay of norms and biases)."""

import pytest
import torch

from reslab import ReslabError, create_model
from reslab.config import OptimConfig, ScheduleConfig, load
from reslab.train.loop import train
from reslab.train.optim import build_optimizer, build_scheduler, lr_factor
from reslab.train.run_folder import load_run_config

from conftest import quick_config


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


# ---------------------------------------------------------------- a schedule on the clock


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_the_schedule_under_a_time_limit_is_the_schedule_at_the_share_of_time_spent(name):
    from reslab.train.loop import _follow_clock

    def schedule():
        model = torch.nn.Linear(2, 2)
        optimizer = build_optimizer(model.parameters(), OptimConfig(lr=0.1))
        return optimizer, build_scheduler(optimizer, ScheduleConfig(name=name, warmup="none"), 10, 1000)

    stepped, stepped_scheduler = schedule()
    for _ in range(400):  # the step count's schedule, 400 of 1000 steps in
        stepped.step()
        stepped_scheduler.step()
    clocked, clocked_scheduler = schedule()
    _follow_clock(clocked_scheduler, 1000, 0.4)  # 40% of the time spent
    assert clocked.param_groups[0]["lr"] == pytest.approx(stepped.param_groups[0]["lr"])
    _follow_clock(clocked_scheduler, 1000, 1.7)  # past the end: the last step's rate, no error
    assert clocked.param_groups[0]["lr"] < 0.01 * 0.1


def test_a_time_limited_run_ends_when_its_time_is_spent_with_the_schedule_annealed(tmp_path):
    from reslab.train.loop import train

    from conftest import quick_config

    result = train(quick_config(tmp_path, "train.epochs=1000", "train.time_limit=4", "data.val_size=0.1",
                                "schedule.name=cosine", "output.plots=false"), progress=False)
    history = result.history
    seconds = sum(row["epoch_seconds"] for row in history)
    step_seconds = max(row["epoch_seconds"] / max(1, row["step"] - previous["step"])
                       for previous, row in zip([{"step": 0}, *history], history))
    assert 4 - 3 * step_seconds <= seconds <= 4.25  # the last step that ends within the limit, give or take jitter
    assert len(history) < 1000
    assert history[-1]["lr"] < 0.05 * 0.1  # the cosine ran to its end on the clock, not on 1000 epochs


def test_a_time_limited_run_begins_no_step_with_less_than_two_steps_of_time_left():
    """A step takes some percent more or less than the one before it: one that began with
    just its predecessor's time left ended a benchmark 2 ms past its budget."""
    from types import SimpleNamespace

    from reslab.train.loop import _time_spent

    config = load("demo-digits", ["train.time_limit=100"])
    history = [{"epoch": 1, "step": 10, "epoch_seconds": 90.0}]  # 9 s a step
    assert _time_spent(SimpleNamespace(history=history), config)  # 10 s left: more than one step, under two
    history = [{"epoch": 1, "step": 10, "epoch_seconds": 80.0}]  # 8 s a step, 20 s left: two steps
    assert not _time_spent(SimpleNamespace(history=history), config)


def test_a_time_limit_is_validated():
    from reslab import ReslabError
    from reslab.config import load

    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(ReslabError, match="train.time_limit"):
            load("demo-digits", [f"train.time_limit={bad}"])


# ---------------------------------------------------------------- a run resumed for longer


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_schedule_planned_over_the_run_refuses_a_longer_resume(tmp_path, schedule):
    first = train(quick_config(tmp_path, "train.epochs=1", f"schedule.name={schedule}", "schedule.warmup=none"),
                  progress=False)
    (first.run_dir / "metrics.json").unlink()
    with pytest.raises(ReslabError, match=f"schedule.name={schedule}.*train.epochs cannot change"):
        train(load_run_config(first.run_dir, ["train.epochs=3"]), resume=first.run_dir, progress=False)
    assert "epochs: 1" in (first.run_dir / "config.yaml").read_text()  # nothing saved by the refusal


def test_a_step_schedule_continues_exactly_when_resumed_longer(tmp_path):
    steps = ("schedule.name=multistep", "schedule.unit=epoch", "schedule.milestones=[1]")
    whole = train(quick_config(tmp_path, "train.epochs=2", "output.name=whole", *steps), progress=False)
    first = train(quick_config(tmp_path, "train.epochs=1", "output.name=part", *steps), progress=False)
    (first.run_dir / "metrics.json").unlink()
    longer = train(load_run_config(first.run_dir, ["train.epochs=2"]), resume=first.run_dir, progress=False)
    assert [row["lr"] for row in longer.history] == pytest.approx([row["lr"] for row in whole.history])


# ---------------------------------------------------------------- the optimizer's parameter groups


def test_the_backbone_rate_scales_with_the_reference_batch_like_the_head_rate():
    from reslab.train.setup import build_optimization

    config = load("demo-digits", ["optim.lr=0.1", "optim.backbone_lr=0.01", "optim.lr_reference_batch=64",
                                  "train.batch_size=128", "train.epochs=1"])
    optimizer, _, _ = build_optimization(config, create_model("resnet8", in_channels=1), torch.device("cpu"), 10)
    rates = {group["name"]: group["initial_lr"] for group in optimizer.param_groups}
    assert rates["head"] == pytest.approx(0.2) and rates["backbone"] == pytest.approx(0.02)


@pytest.mark.parametrize("decay", [True, False])
def test_decay_of_norms_and_biases_is_a_config_key(decay):
    from reslab.train.setup import build_optimization

    config = load("demo-digits", [f"optim.decay_norm_and_bias={str(decay).lower()}", "train.epochs=1"])
    optimizer, _, _ = build_optimization(config, create_model("resnet8", in_channels=1), torch.device("cpu"), 10)
    decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert ("backbone_no_decay" not in decays) == decay
    assert decays["backbone"] == config.optim.weight_decay
