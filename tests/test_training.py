"""The training loop end to end on the embedded digits: run folders, resume, EMA, gradient
accumulation and clipping, compile modes, re-evaluation in the run's precision."""

import json
import os
import signal

import pytest
import torch
from torch import nn

from reslab import ReslabError
from reslab.checkpoint import epoch_checkpoints, load_checkpoint
from reslab.config import load
from reslab.errors import Interrupted
from reslab.evaluate.runner import evaluate_checkpoint
from reslab.train.loop import train
from reslab.train.observers import Observer
from reslab.train.run_folder import load_run_config
from reslab.train.step import train_step

from conftest import crash_after_epochs, history_rows, quick_config

pytestmark = pytest.mark.numerics  # outputs compared across kernels: run with both ISAs


def test_resnet20_reaches_95_percent_on_digits(tmp_path):
    config = load("demo-digits", [f"output.dir={tmp_path}", "train.epochs=15", "train.seed=1"])
    result = train(config, progress=False)
    test = result.metrics["test"]
    assert test["accuracy"] >= 0.95
    assert test["error"] == pytest.approx(1 - test["accuracy"])
    assert result.metrics["selected_on"] == "validation"
    assert result.metrics["parameters"] == 269_434  # 1 input channel: 16*9 fewer conv1 weights than 269,722


def test_run_folder_holds_everything(tmp_path):
    result = train(quick_config(tmp_path), progress=False)
    folder = result.run_dir
    for name in ("config.yaml", "environment.json", "dataset.json", "history.csv", "metrics.json",
                 "curves.png", "confusion_matrix.png", "checkpoints/best.pt"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert sum(sum(row) for row in metrics["test"]["confusion_matrix"]) == metrics["test"]["samples"] == 359
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["sizes"] == {"train": 1294, "val": 144, "test": 359}
    assert len(dataset["mean"]) == 1 and 0 < dataset["mean"][0] < 1
    environment = json.loads((folder / "environment.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["device"] == "cpu"
    header = (folder / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,step,lr,train_loss,train_accuracy,val_loss")
    assert len((folder / "history.csv").read_text().splitlines()) == 3


def test_checkpoints_load_safely_and_carry_what_resume_needs(tmp_path):
    result = train(quick_config(tmp_path, "output.keep_last=1"), progress=False)
    kept = epoch_checkpoints(result.run_dir)
    assert [p.name for p in kept] == ["epoch-0002.pt"]
    state = load_checkpoint(kept[0])
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "best", "rng", "meta", "history"):
        assert key in state
    assert state["meta"]["classes"] == [str(i) for i in range(10)]


def _final_weights(run_dir):
    return load_checkpoint(epoch_checkpoints(run_dir)[-1])["model"]


def test_resume_after_a_crash_gives_the_same_result(tmp_path):
    overrides = ("train.epochs=3", "train.deterministic=true", "augment.rotation=10")
    whole = train(quick_config(tmp_path, *overrides, "output.name=whole"), progress=False)

    crashed = crash_after_epochs(quick_config(tmp_path, *overrides, "output.name=crashed"), 2)
    assert not (crashed / "metrics.json").exists()

    resumed = train(load_run_config(crashed), resume=crashed, progress=False)
    for key, value in _final_weights(whole.run_dir).items():
        assert torch.equal(value, _final_weights(resumed.run_dir)[key]), key
    assert resumed.metrics["test"]["accuracy"] == whole.metrics["test"]["accuracy"]
    assert [row["train_loss"] for row in resumed.history] == pytest.approx([row["train_loss"] for row in whole.history])


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    first = train(quick_config(tmp_path), progress=False)
    again = train(load_run_config(first.run_dir), resume=first.run_dir, progress=False)
    assert again.metrics == first.metrics


def test_resume_refuses_another_model(tmp_path):
    first = train(quick_config(tmp_path), progress=False)
    (first.run_dir / "metrics.json").unlink()
    config = load_run_config(first.run_dir, ["model.name=resnet14"])
    with pytest.raises(ReslabError, match="trained with model.name=resnet8, not resnet14"):
        train(config, resume=first.run_dir, progress=False)


def test_an_existing_run_folder_is_never_overwritten(tmp_path):
    first = train(quick_config(tmp_path, "output.name=mine"), progress=False)
    before = (first.run_dir / "metrics.json").read_bytes()
    with pytest.raises(ReslabError, match="already exists"):
        train(quick_config(tmp_path, "output.name=mine"), progress=False)
    assert (first.run_dir / "metrics.json").read_bytes() == before


def test_a_diverging_loss_stops_with_the_step(tmp_path):
    with pytest.raises(ReslabError, match=r"loss became (nan|inf).* at step \d+ .*lower optim.lr"):
        train(quick_config(tmp_path, "optim.lr=1e12", "schedule.warmup=none", "train.epochs=3"), progress=False)


def test_same_seed_same_result_different_seed_different(tmp_path):
    a = train(quick_config(tmp_path, "output.name=a", "train.epochs=1"), progress=False)
    b = train(quick_config(tmp_path, "output.name=b", "train.epochs=1"), progress=False)
    c = train(quick_config(tmp_path, "output.name=c", "train.epochs=1", "train.seed=5"), progress=False)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]


@pytest.mark.parametrize("overrides", [
    ("optim.name=adam", "optim.lr=1e-3", "schedule.name=onecycle", "schedule.warmup=none"),
    ("optim.name=adamw", "optim.lr=1e-3", "train.label_smoothing=0.1", "schedule.name=constant"),
    ("train.precision=bf16", "train.channels_last=true"),
    ("model.shortcut=B", "model.grad_checkpointing=true", "schedule.name=multistep",
     "schedule.milestones=[1]", "schedule.unit=epoch"),
    ("data.val_size=0",),
    ("train.ema=0.9", "train.tta=true", "train.label_smoothing=0.1"),
])
def test_training_variants_learn(tmp_path, overrides):
    result = train(quick_config(tmp_path, "train.epochs=3", *overrides), progress=False)
    assert result.metrics["test"]["accuracy"] > 0.5  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_ema_and_live_weights_are_both_validated_and_the_better_is_kept(tmp_path):
    result = train(quick_config(tmp_path, "train.ema=0.5", "train.epochs=2"), progress=False)
    state = load_checkpoint(epoch_checkpoints(result.run_dir)[-1])
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    averaged, live = state["ema"]["module"], state["model"]
    assert state["ema"]["updates"] == result.metrics["steps"]
    assert not torch.equal(averaged["fc.weight"], live["fc.weight"])
    for row in result.history:
        assert row["val_accuracy"] is not None and row["ema_val_accuracy"] is not None
    row = result.history[best["epoch"] - 1]
    chosen = "ema" if row["ema_val_accuracy"] > row["val_accuracy"] else "live"
    if row["ema_val_accuracy"] == row["val_accuracy"]:
        chosen = "ema" if row["ema_val_loss"] < row["val_loss"] else "live"
    assert best["weights"] == result.metrics["best_weights"] == chosen
    if best["epoch"] == 2:
        assert torch.equal(best["model"]["fc.weight"], (averaged if chosen == "ema" else live)["fc.weight"])


def test_ema_decay_warms_up_and_batchnorm_statistics_belong_to_the_averaged_weights():
    from reslab.data import DeviceLoader
    from reslab.data.arrays import ArrayDataset
    from reslab.models import create_model
    from reslab.train.ema import ModelEma

    model = create_model("resnet8", in_channels=1)
    ema = ModelEma(model, 0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the first update mostly copies
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    before = next(ema.module.parameters()).clone()
    ema.update(model)
    assert torch.allclose(next(ema.module.parameters()), before + 0.9)
    for _ in range(20_000):
        ema.updates += 1
    assert ema.current_decay() == 0.999

    data = ArrayDataset(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.arange(64) % 10)
    loader = DeviceLoader(data, 16, "cpu", [0.5], [0.25], train=True, seed=3)
    loader.set_epoch(7)
    ema.recompute_batchnorm(loader, batches=2)
    assert loader.epoch == 7  # the training loader's own epoch is left as it was
    first = ema.module.bn1.running_mean.clone()
    assert not torch.equal(first, torch.zeros_like(first))
    ema.recompute_batchnorm(loader, batches=2)
    assert torch.equal(ema.module.bn1.running_mean, first)  # the same fixed batches every time
    assert not ema.module.training


def test_flip_tta_averages_an_image_and_its_mirror():
    from reslab.data import DeviceLoader
    from reslab.data.arrays import ArrayDataset
    from reslab.evaluate.predict import predict
    from reslab.models import create_model

    model = create_model("resnet8", in_channels=1).eval()
    data = ArrayDataset(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), torch.arange(6))
    loader = DeviceLoader(data, 4, "cpu", [0.5], [0.25], train=False)
    plain, _ = predict(model, loader, torch.device("cpu"))
    mirrored = DeviceLoader(ArrayDataset(data.images.flip(3), data.labels), 4, "cpu", [0.5], [0.25], train=False)
    flipped, _ = predict(model, mirrored, torch.device("cpu"))
    both, _ = predict(model, loader, torch.device("cpu"), flip=True)
    assert torch.allclose(both, (plain + flipped) / 2, atol=1e-5)


def test_a_resumed_run_may_train_longer_but_not_change_what_it_learns(tmp_path):
    step_schedule = ("schedule.name=multistep", "schedule.unit=epoch", "schedule.milestones=[1]")
    first = train(quick_config(tmp_path, "train.epochs=1", *step_schedule), progress=False)
    (first.run_dir / "metrics.json").unlink()
    with pytest.raises(ReslabError, match="data.split_seed=0, not 3"):
        train(load_run_config(first.run_dir, ["data.split_seed=3"]), resume=first.run_dir, progress=False)
    longer = train(load_run_config(first.run_dir, ["train.epochs=2"]), resume=first.run_dir, progress=False)
    assert longer.metrics["epochs"] == 2
    assert "epochs: 2" in (first.run_dir / "config.yaml").read_text()
    with pytest.raises(ReslabError, match="finished run"):
        train(load_run_config(first.run_dir, ["train.epochs=3"]), resume=first.run_dir, progress=False)


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path):
    with pytest.raises(ReslabError, match="larger than the 1294 training images"):
        train(quick_config(tmp_path, "train.batch_size=5000", "output.name=big"), progress=False)
    assert not (tmp_path / "runs" / "big").exists()


# ---------------------------------------------------------------- re-evaluation


def test_reevaluation_reproduces_the_recorded_figures_in_the_runs_precision(tmp_path):
    result = train(quick_config(tmp_path, "train.precision=bf16", "train.epochs=1"), progress=False)
    again = evaluate_checkpoint(result.run_dir, device="cpu")
    assert again["precision"] == "bf16"
    assert again["test"]["loss"] == result.metrics["test"]["loss"]
    assert again["test"]["confusion_matrix"] == result.metrics["test"]["confusion_matrix"]


# ---------------------------------------------------------------- clipping and accumulation


def small_net(seed: int = 0) -> nn.Module:
    """No batch norm: the one layer whose result depends on how a batch is split."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def one_step(accumulate: int, clip: float | None = None, label_smoothing: float = 0.1):
    model = small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(1)
    images, targets = torch.randn(128, 1, 8, 8, generator=generator), torch.randint(0, 10, (128,), generator=generator)
    before = [p.detach().clone() for p in model.parameters()]
    loss, logits = train_step(model, images, targets, nn.CrossEntropyLoss(label_smoothing=label_smoothing),
                              optimizer, scaler, torch.device("cpu"), accumulate=accumulate, clip_grad_norm=clip)
    return model, before, loss, logits


def test_accumulating_two_halves_gives_the_weights_of_one_step_at_the_whole_batch():
    whole, _, loss_whole, logits_whole = one_step(1)
    halves, _, loss_halves, logits_halves = one_step(2)
    quarters, _, _, _ = one_step(4)
    for a, b, c in zip(whole.parameters(), halves.parameters(), quarters.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
        torch.testing.assert_close(a, c, rtol=0, atol=2e-6)
    assert loss_halves.item() == pytest.approx(loss_whole.item(), abs=1e-6)
    assert logits_halves.shape == logits_whole.shape == (128, 10)


def test_clipping_bounds_the_update_by_the_gradient_norm():
    lr = 0.5
    model, before, _, _ = one_step(1, clip=None)
    free = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())]).norm() / lr
    clip = float(free) / 4  # a bound the gradient exceeds
    clipped, before, _, _ = one_step(1, clip=clip)
    # First SGD step: momentum buffer = gradient (+ weight decay), so the step is lr x gradient.
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, clipped.parameters())])
    decay = torch.cat([b.flatten() for b in before]) * 1e-4
    assert (step / lr - decay).norm().item() == pytest.approx(clip, rel=1e-4)
    loose, before, _, _ = one_step(1, clip=float(free) * 10)  # a bound above the norm changes nothing
    torch.testing.assert_close(list(loose.parameters()), list(model.parameters()))


class StopAtStep(Observer):
    """Sends this process SIGTERM at a step, as a cluster's pre-emption would."""

    def __init__(self, step: int):
        self.at = step

    def step(self, step: int, values: dict) -> None:
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_an_accumulated_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    common = ["train.accumulate=4", "optim.clip_grad_norm=1.0", "train.batch_size=64", "output.plots=false",
              "output.log_every=1", "output.name=run"]
    whole = train(quick_config(tmp_path / "whole", *common), progress=False)
    config = quick_config(tmp_path / "split", *common)
    with pytest.raises(Interrupted):
        train(config, progress=False, observers=[StopAtStep(7)])
    resumed = train(quick_config(tmp_path / "split", *common), progress=False)  # output.name: continued
    assert resumed.run_dir == tmp_path / "split" / "runs" / "run"
    assert resumed.metrics["steps"] == whole.metrics["steps"]
    assert [r["train_loss"] for r in history_rows(resumed.run_dir)] == \
           [r["train_loss"] for r in history_rows(whole.run_dir)]
    assert resumed.metrics["test"]["loss"] == whole.metrics["test"]["loss"]


def test_accumulation_and_clipping_are_checked():
    with pytest.raises(ReslabError, match="train.accumulate' must divide train.batch_size"):
        load("demo-digits", ["train.batch_size=64", "train.accumulate=3"])
    with pytest.raises(ReslabError, match="optim.clip_grad_norm' must be positive"):
        load("demo-digits", ["optim.clip_grad_norm=0"])
    with pytest.raises(ReslabError, match="compile_mode=max-autotune applies only with train.compile=true"):
        load("demo-digits", ["train.compile_mode=max-autotune"])


# ---------------------------------------------------------------- compile modes


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    seen = []

    def fake_compile(module, mode=None, **kwargs):
        seen.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    train(quick_config(tmp_path, "train.compile=true", "train.compile_mode=reduce-overhead", "train.epochs=1",
                       "output.plots=false"), progress=False)
    assert seen and set(seen) == {"reduce-overhead"}


def test_a_forced_cpu_capability_compiles_into_its_own_kernel_cache(monkeypatch, tmp_path):
    # Kernels cached under the CPU's own capability and reused under ATEN_CPU_CAPABILITY=avx2
    # crashed a compiled run (SIGSEGV). Importing torch._dynamo writes the default folder into
    # the environment first, so that is the state compile_model starts from.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from reslab.device import compile_model

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    compile_model(torch.nn.Linear(2, 2), None)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir() + "_avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # the user's own folder stays
    compile_model(torch.nn.Linear(2, 2), None)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
