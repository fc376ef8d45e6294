"""The CUDA paths, on a GPU (issue 22): device-resident data with pinned, non-blocking copies;
a training step that never makes the host wait; fp16 with the GradScaler and fused SGD; bf16
and fp16 reaching fp32's accuracy; channels-last under bf16; torch.compile with CUDA graphs
equal to eager; bit-exact resume; predict and export equal to the CPU; NCCL DDP.

Without CUDA every test here skips with the reason "no CUDA device". `make gpu-check`
(benchmarks/gpu_check.py) runs them on a lent GPU machine, whose torch is 2.11: nothing here
uses a newer API or a package that machine lacks (no onnxruntime: exports are checked
through TorchScript and safetensors).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reslab import create_model, distributed
from reslab.checkpoint import epoch_checkpoints, load_checkpoint
from reslab.config import AugmentConfig, DataConfig, OptimConfig, ScheduleConfig, load
from reslab.data import build_data
from reslab.data.arrays import ArrayDataset
from reslab.data.datasets import load_splits
from reslab.data.loader import BatchAugment, DeviceLoader
from reslab.evaluate.task import Task
from reslab.train.ema import ModelEma
from reslab.train.loop import train
from reslab.train.optim import build_optimizer, build_scheduler
from reslab.train.run_folder import load_run_config
from reslab.train.state import EpochTally
from reslab.train.step import train_step

from conftest import crash_after_epochs, quick_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

CUDA = torch.device("cuda")
MEAN, STD = [0.5] * 3, [0.25] * 3


@pytest.fixture(autouse=True)
def global_modes():
    """The deterministic mode and cuDNN's switches are global: each test leaves them as it found them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]
    torch.cuda.set_sync_debug_mode(0)


def random_images(count: int, channels: int = 3, size: int = 32, seed: int = 0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator),
                        torch.randint(0, 10, (count,), generator=generator))


def channels_last_model(name: str = "resnet8", in_channels: int = 3) -> nn.Module:
    return create_model(name, in_channels=in_channels).to(CUDA).to(memory_format=torch.channels_last)


# ---------------------------------------------------------------- data on the device


def test_the_device_loader_keeps_the_data_on_the_gpu_and_gives_the_cpu_batches():
    data = random_images(200)
    options = dict(train=True, augment=BatchAugment(crop_padding=4, hflip=True), seed=5, channels_last=True)
    gpu = DeviceLoader(data, 32, CUDA, MEAN, STD, **options)
    cpu = DeviceLoader(data, 32, torch.device("cpu"), MEAN, STD, **options)
    assert gpu.images.is_cuda and gpu.labels.is_cuda  # copied once, not per batch
    pairs = list(zip(gpu.iterate(2), cpu.iterate(2)))  # from the third batch: a mid-epoch resume
    assert len(pairs) == len(gpu) - 2 == 4
    for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in pairs:
        assert gpu_images.is_cuda and gpu_images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(gpu_images.cpu(), cpu_images, rtol=0, atol=1e-6)
        assert torch.equal(gpu_labels.cpu(), cpu_labels)


def test_file_batches_arrive_through_pinned_memory_equal_to_the_cpu_ones(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("test", 5)):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8, generator=generator).numpy()
                Image.fromarray(pixels).save(tmp_path / split / label / f"{i}.png")
    config = DataConfig(name="folder", root=str(tmp_path), image_size=16, val_size=0, workers=1)
    bundles = [build_data(config, AugmentConfig(), device=device, batch_size=4, eval_batch_size=4,
                          channels_last=True) for device in (CUDA, torch.device("cpu"))]
    try:
        gpu, cpu = (bundle.test for bundle in bundles)
        assert gpu._loader_options["pin_memory"] and not cpu._loader_options["pin_memory"]
        batches = list(zip(gpu, cpu))
        assert sum(len(labels) for (_, labels), _ in batches) == 10
        for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in batches:
            assert gpu_images.is_cuda and gpu_labels.is_cuda
            torch.testing.assert_close(gpu_images.cpu(), cpu_images, rtol=0, atol=1e-6)
            assert torch.equal(gpu_labels.cpu(), cpu_labels)
    finally:
        for bundle in bundles:
            for loader in bundle.loaders():
                getattr(loader, "close", lambda: None)()


def test_a_training_step_never_makes_the_host_wait_for_the_gpu():
    """The loop's step as train_one_epoch takes it (device data, fp16 with the GradScaler,
    fused SGD, one-cycle, weight averaging, the epoch's running sums): any call that would
    synchronize the host with the GPU raises under the sync debug mode."""
    data = random_images(512)
    loader = DeviceLoader(data, 64, CUDA, MEAN, STD, train=True, augment=BatchAugment(crop_padding=4, hflip=True),
                          channels_last=True)
    model = channels_last_model()
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=0.05, nesterov=True), fused=True)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="onecycle"), len(loader), 3 * len(loader))
    scaler = torch.amp.GradScaler("cuda")
    ema, tally = ModelEma(model, 0.99), EpochTally.zero(CUDA)
    task, criterion = Task("single-label", [str(i) for i in range(10)]), nn.CrossEntropyLoss(label_smoothing=0.1)

    def epoch(number: int) -> None:
        loader.set_epoch(number)
        for images, targets in loader:
            loss, logits = train_step(model, images, targets, criterion, optimizer, scaler, CUDA, "fp16", scheduler)
            ema.update(model)
            tally.add(loss, task.correct(logits.detach(), targets), len(targets))

    epoch(0)  # warm-up: cuDNN's autotuning, the allocator's first blocks, the scaler's first scale
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    epoch(1)
    torch.cuda.set_sync_debug_mode(0)
    assert tally.seen == 2 * len(loader) * 64
    assert torch.isfinite(tally.loss_sum) and 0 <= tally.correct.item() <= tally.seen


# ---------------------------------------------------------------- precision


def test_fp16_loss_scaling_skips_an_overflowing_step_and_fused_sgd_stays_with_plain_sgd():
    """The first fp16 steps often overflow while the scale settles. The GradScaler must skip
    such a step, and fused SGD (reslab's optimizer on GPUs) must then go on exactly as PyTorch's
    plain SGD does: its momentum buffers untouched by the skipped step."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False
    fused_model = channels_last_model()
    plain_model = copy.deepcopy(fused_model)
    config = OptimConfig(lr=0.1, nesterov=True, weight_decay=5e-4)
    fused = build_optimizer(fused_model.parameters(), config, fused=True)
    plain = build_optimizer(plain_model.parameters(), config, fused=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**16) for _ in range(2)]
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(32, 3, 32, 32, generator=generator).to(CUDA).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (32,), generator=generator).to(CUDA)
    overflow = images.clone()
    overflow[0, 0, 0, 0] = float("inf")
    before = [p.detach().clone() for p in fused_model.parameters()]

    def step(batch):
        for model, optimizer, scaler in zip((fused_model, plain_model), (fused, plain), scalers):
            train_step(model, batch, targets, nn.CrossEntropyLoss(), optimizer, scaler, CUDA, "fp16")

    step(overflow)
    assert all(torch.equal(p, b) for p, b in zip(fused_model.parameters(), before)), "the overflowing step was taken"
    assert [scaler.get_scale() for scaler in scalers] == [2.0**15, 2.0**15]
    buffers = [fused.state[p]["momentum_buffer"] for p in fused_model.parameters()]
    assert all(torch.count_nonzero(buffer) == 0 for buffer in buffers)
    step(images)
    step(images)
    assert [scaler.get_scale() for scaler in scalers] == [2.0**15, 2.0**15]
    assert not all(torch.equal(p, b) for p, b in zip(fused_model.parameters(), before))
    for fused_parameter, plain_parameter in zip(fused_model.parameters(), plain_model.parameters()):
        assert torch.isfinite(fused_parameter).all()
        torch.testing.assert_close(fused_parameter, plain_parameter, rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory):
    """ResNet-20 on the digits for 15 epochs (the CPU suite's 95% test) in each precision."""
    out = tmp_path_factory.mktemp("precision")
    return {precision: train(load("demo-digits", [f"output.dir={out}", f"output.name={precision}", "train.epochs=15",
                                                  "train.seed=1", "train.device=cuda", f"train.precision={precision}",
                                                  "output.plots=false"]), progress=False).metrics
            for precision in ("fp32", "bf16", "fp16")}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bf16_and_fp16_reach_the_fp32_accuracy_on_digits(precision_runs, precision):
    reference, run = precision_runs["fp32"], precision_runs[precision]
    assert reference["test"]["accuracy"] >= 0.95
    assert run["precision"] == precision and run["device"].startswith("cuda")
    # 3 points is 11 of the 359 test digits: about two standard deviations over seeds (README).
    assert run["test"]["accuracy"] >= reference["test"]["accuracy"] - 0.03


@pytest.mark.parametrize("in_channels", [1, 3])
def test_channels_last_holds_through_the_network_under_bf16(in_channels):
    model = channels_last_model("resnet20", in_channels)
    wrong = []

    def check(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            if not output.is_contiguous(memory_format=torch.channels_last):
                wrong.append(f"{names[module]}: strides {output.stride()}")
            if isinstance(module, nn.Conv2d) and output.dtype != torch.bfloat16:
                wrong.append(f"{names[module]}: {output.dtype}")

    names = {module: name for name, module in model.named_modules()}
    for module in model.modules():
        module.register_forward_hook(check)
    images = torch.randn(8, in_channels, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(images).float().logsumexp(1).mean()
    loss.backward()
    assert not wrong, wrong[:5]
    for name, parameter in model.named_parameters():
        if parameter.dim() == 4:  # conv weights: their gradients in the weights' own layout
            assert parameter.grad.is_contiguous(memory_format=torch.channels_last), name


# ---------------------------------------------------------------- torch.compile and CUDA graphs


def test_compiled_training_with_cuda_graphs_follows_eager_training():
    from torch._dynamo.utils import counters

    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions both ways: differences from fusion only
    counters.clear()
    torch.manual_seed(0)
    eager = channels_last_model(in_channels=1)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, mode="reduce-overhead")
    # A small rate: training on random labels is chaotic at 0.05, where a rounding difference
    # in the first step grows to 0.03 in the logits by the sixth (seen on the CPU's inductor).
    config = OptimConfig(lr=1e-3, nesterov=True)
    optimizers = [build_optimizer(model.parameters(), config, fused=True) for model in (eager, twin)]
    scaler, criterion = torch.amp.GradScaler("cuda", enabled=False), nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):  # warm-up, recording, then replays
        images = torch.randn(64, 1, 8, 8, generator=generator).to(CUDA).contiguous(memory_format=torch.channels_last)
        targets = torch.randint(0, 10, (64,), generator=generator).to(CUDA)
        eager_loss, eager_logits = train_step(eager, images, targets, criterion, optimizers[0], scaler, CUDA)
        graph_loss, graph_logits = train_step(compiled, images, targets, criterion, optimizers[1], scaler, CUDA)
        torch.testing.assert_close(graph_logits, eager_logits, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(graph_loss, eager_loss, rtol=1e-3, atol=1e-4)
    for name, parameter in twin.named_parameters():
        torch.testing.assert_close(parameter, dict(eager.named_parameters())[name], rtol=1e-3, atol=1e-4)
    eager.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), eager(images), rtol=1e-3, atol=1e-3)
    assert counters["inductor"]["cudagraph_skips"] == 0, "reduce-overhead fell back from CUDA graphs"


def test_a_run_compiled_with_cuda_graphs_and_accumulation_trains(tmp_path):
    """Micro-batches replay the same graph: each one's logits must be kept before the next
    replay overwrites them (train_step copies them)."""
    result = train(quick_config(tmp_path, "train.device=cuda", "train.compile=true",
                                "train.compile_mode=reduce-overhead", "train.accumulate=2", "train.epochs=3",
                                "output.plots=false"), progress=False)
    assert result.metrics["test"]["accuracy"] > 0.5  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# ---------------------------------------------------------------- resume, predict, export


def test_a_crashed_fp16_run_resumes_bit_exactly_on_the_gpu(tmp_path):
    overrides = ("train.device=cuda", "train.precision=fp16", "train.deterministic=true", "train.epochs=3",
                 "augment.rotation=10", "train.ema=0.9", "output.plots=false")
    whole = train(quick_config(tmp_path, *overrides, "output.name=whole"), progress=False)

    crashed = crash_after_epochs(quick_config(tmp_path, *overrides, "output.name=crashed"), 2)
    resumed = train(load_run_config(crashed), resume=crashed, progress=False)

    finals = [load_checkpoint(epoch_checkpoints(run)[-1], map_location="cpu") for run in (whole.run_dir, crashed)]
    for key, value in finals[0]["model"].items():
        assert torch.equal(value, finals[1]["model"][key]), key
    for key, value in finals[0]["ema"]["module"].items():
        assert torch.equal(value, finals[1]["ema"]["module"][key]), key
    assert finals[0]["scaler"] == finals[1]["scaler"]
    assert resumed.metrics["test"]["loss"] == whole.metrics["test"]["loss"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load: TorchScript is deprecated from 2.14
def test_predict_and_exports_on_the_gpu_agree_with_the_cpu(tmp_path):
    from safetensors.torch import load_file

    from reslab.inference.export import export_checkpoint
    from reslab.inference.predict import load_model, normalize, probabilities
    from reslab.models import model_from_meta

    result = train(quick_config(tmp_path, "train.device=cuda", "output.plots=false"), progress=False)
    best = result.run_dir / "checkpoints" / "best.pt"
    images = load_splits(load("demo-digits").data).test.images[:64]
    cpu_model, meta = load_model(best, "cpu")
    gpu_model, _ = load_model(best, "cuda")
    assert next(gpu_model.parameters()).is_cuda
    cpu_probabilities, gpu_probabilities = (probabilities(m, meta, images) for m in (cpu_model, gpu_model))
    # cuDNN convolves fp32 in TF32 by default: agreement to a few thousandths
    torch.testing.assert_close(gpu_probabilities, cpu_probabilities, rtol=0, atol=5e-3)
    assert (gpu_probabilities.argmax(1) == cpu_probabilities.argmax(1)).float().mean() >= 0.98

    inputs = normalize(images, meta)
    with torch.no_grad():
        expected = cpu_model(inputs)
        traced = torch.jit.load(str(export_checkpoint(best, "torchscript", tmp_path / "model.pt").path),
                                map_location="cuda")
        torch.testing.assert_close(traced(inputs.to(CUDA)).cpu(), expected, rtol=1e-2, atol=1e-2)
        weights = export_checkpoint(best, "safetensors", tmp_path / "model.safetensors").path
        rebuilt = model_from_meta(meta).to(CUDA).eval()
        rebuilt.load_state_dict(load_file(str(weights), device="cuda"))
        torch.testing.assert_close(rebuilt(inputs.to(CUDA)).cpu(), expected, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- NCCL


class OneProcessGroup(distributed.DistEnv):
    """Rank 0 of a one-process NCCL group, run down the distributed path (DDP, collectives).
    The machine has one GPU, and NCCL refuses two ranks on one GPU."""

    enabled = True


def test_nccl_ddp_of_one_process_trains_exactly_as_without_it(tmp_path, monkeypatch):
    common = ("train.device=cuda", "train.deterministic=true", "train.epochs=2", "output.plots=false")
    alone = train(quick_config(tmp_path, *common, "output.name=alone"), progress=False)

    def nccl_setup(device):
        torch.cuda.set_device(0)
        torch.distributed.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                                             world_size=1)
        return OneProcessGroup(0, 0, 1), torch.device("cuda", 0)

    monkeypatch.setattr(distributed, "setup", nccl_setup)
    ddp = train(quick_config(tmp_path, *common, "output.name=ddp"), progress=False)
    assert not torch.distributed.is_initialized()  # the run tore its group down
    assert torch.distributed.is_nccl_available() and ddp.metrics["device"] == "cuda:0"
    finals = [load_checkpoint(epoch_checkpoints(run)[-1], map_location="cpu")["model"] for run in (alone.run_dir,
                                                                                                   ddp.run_dir)]
    for key, value in finals[0].items():
        assert torch.equal(value, finals[1][key]), key
    assert ddp.metrics["test"]["accuracy"] == alone.metrics["test"]["accuracy"]
