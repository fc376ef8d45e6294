"""Issue 14: the habits users bring from the reference scripts, timm, Lightning and Keras -
experiment trackers, gradient clipping and accumulation, the resize filter, compile modes,
and the image decoders with one EXIF policy."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reslab.config import load
from reslab.errors import Interrupted, ReslabError
from reslab.train.loop import train
from reslab.train.observers import Observer
from reslab.train.step import train_step

from conftest import quick_config

pytestmark = pytest.mark.numerics  # outputs compared across kernels: run with both ISAs


def history_rows(run_dir) -> list[dict]:
    with open(run_dir / "history.csv") as file:
        return list(csv.DictReader(file))


# ---------------------------------------------------------------- experiment trackers


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    config = quick_config(tmp_path_factory.mktemp("tb"), "output.logger=tensorboard", "output.log_every=1")
    return train(config, progress=False)


def test_tensorboard_shows_what_the_run_wrote(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_run.run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    steps = tensorboard_run.metrics["steps"]
    assert [e.step for e in events.Scalars("step/loss")] == list(range(1, steps + 1))  # log_every=1
    assert {"step/lr", "step/images_per_second", "train/loss", "val/accuracy", "test/accuracy"} <= set(scalars)
    rows = history_rows(tensorboard_run.run_dir)
    logged = [e.value for e in events.Scalars("val/accuracy")]
    assert logged == pytest.approx([float(r["val_accuracy"]) for r in rows], abs=1e-6)
    assert [e.step for e in events.Scalars("val/accuracy")] == [int(r["step"]) for r in rows]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(tensorboard_run.metrics["test"]["accuracy"])
    images = events.Tags()["images"]
    assert {"figures/curves", "figures/confusion_matrix"} <= set(images)
    curves = events.Images("figures/curves")[-1]
    assert curves.width > 100 and curves.height > 100
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: resnet8" in config_text and "logger: tensorboard" in config_text


def test_tensorboard_logs_ema_figures_beside_the_live_ones(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = quick_config(tmp_path, "output.logger=tensorboard", "train.ema=0.9", "train.epochs=1",
                          "output.plots=false")
    result = train(config, progress=False)
    events = EventAccumulator(str(result.run_dir))
    events.Reload()
    assert {"ema_val/accuracy", "ema_val/loss", "val/accuracy"} <= set(events.Tags()["scalars"])


def test_a_missing_tracker_package_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    expected = r"output.logger=wandb needs wandb: pip install -e '\.\[wandb\]' in the reslab clone"
    with pytest.raises(ReslabError, match=expected):
        train(quick_config(tmp_path, "output.logger=wandb", "train.epochs=1"), progress=False)


def test_mlflow_keeps_params_metrics_and_figures(tmp_path):
    from mlflow.tracking import MlflowClient

    config = quick_config(tmp_path, "output.logger=mlflow", "output.project=digits-study")
    result = train(config, progress=False)
    uri = f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    run_id = (result.run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == result.run_dir.name
    assert run.data.params["model.name"] == "resnet8" and run.data.params["output.logger"] == "mlflow"
    history = client.get_metric_history(run_id, "val/accuracy")
    rows = history_rows(result.run_dir)
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [float(r["val_accuracy"]) for r in rows])
    assert run.data.metrics["test/accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "metrics.json"} <= artifacts
    assert (tmp_path / "runs" / "mlruns").is_dir()  # beside the store, not in the working directory
    assert not (Path.cwd() / "mlruns").exists()


def wandb_records(path):
    """The records of an offline ``.wandb`` file: W&B's 7-byte header, then LevelDB's log
    format (32 KiB blocks of records with a 7-byte header: CRC, length, kind), each record
    a ``wandb_internal_pb2.Record`` - what ``wandb sync`` would upload."""
    from wandb.proto import wandb_internal_pb2

    raw, position, pieces = path.read_bytes(), 7, b""
    while position + 7 <= len(raw):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(raw[position + 4 : position + 6], "little"), raw[position + 6]
        data = raw[position + 7 : position + 7 + length]
        position += 7 + length
        pieces = data if kind in (1, 2) else pieces + data  # full, first / middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def test_wandb_offline_keeps_every_figure_for_wandb_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = quick_config(tmp_path, "output.logger=wandb", "output.log_every=5")
    result = train(config, progress=False)
    files = list((result.run_dir / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1
    history, summary = {}, {}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[items["_step"]] = items
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update})
    rows = history_rows(result.run_dir)
    assert [history[int(r["step"])]["val/accuracy"] for r in rows] == pytest.approx([float(r["val_accuracy"])
                                                                                    for r in rows])
    assert sorted(s for s, items in history.items() if "step/loss" in items) == list(
        range(5, result.metrics["steps"] + 1, 5))
    assert json.loads(summary["test/accuracy"]) == pytest.approx(result.metrics["test"]["accuracy"])
    assert history[result.metrics["steps"]]["figures/curves/_type"] == "image-file"


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


# ---------------------------------------------------------------- resize filter and decoders


def png(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 30)[None, :, None] + np.linspace(0, 50, 20)[:, None, None]
    return np.clip(ramp + rng.normal(0, 10, (20, 30, 3)), 0, 255).astype(np.uint8)


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")  # asked for
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_decoder_applies_the_exif_orientation_as_pillow_shows_the_photo(photo, orientation, tmp_path):
    from PIL import Image, ImageOps

    from reslab.data.decode import decode

    data = png(photo, orientation)
    with Image.open(io.BytesIO(data)) as image:
        shown = torch.from_numpy(np.asarray(ImageOps.exif_transpose(image).convert("RGB"))).permute(2, 0, 1)
    if orientation in (5, 6, 7, 8):
        assert shown.shape[1:] == (30, 20)  # rotated a quarter turn
    (tmp_path / "photo.png").write_bytes(data)
    for decoder in ("pil", "torchcodec", "torchvision", "auto"):
        for source in (data, str(tmp_path / "photo.png")):
            assert torch.equal(decode(source, decoder), shown), (decoder, type(source))


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")  # asked for
def test_jpeg_decoders_agree_to_a_rounding_step(photo):
    from reslab.data.decode import decode

    data = jpeg(photo, orientation=6)
    reference = decode(data, "pil").int()
    for decoder in ("torchcodec", "torchvision", "auto"):
        decoded = decode(data, decoder).int()
        assert decoded.shape == reference.shape == (3, 30, 20)
        assert (decoded - reference).abs().max().item() <= 2, decoder


def test_auto_prefers_torchcodec_and_torchvision_never_decodes_pngs_under_auto(monkeypatch):
    import importlib.util

    from reslab.data import decode as decoding

    assert decoding.resolve_decoder("auto") == "torchcodec"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchcodec" else real(name, *a))
    decoding._resolved.cache_clear()  # decode() looks TorchCodec up once per process
    assert decoding.resolve_decoder("auto") == "torchvision-jpeg"
    with pytest.raises(ReslabError, match=r"pip install -e '\.\[torchcodec\]'"):
        decoding.resolve_decoder("torchcodec")
    assert decoding.resolve_decoder("torchcodec", strict=False) == "torchvision-jpeg"
    calls = []
    monkeypatch.setattr(decoding, "_decode_torchvision", lambda *a: calls.append(a) or torch.zeros(3, 1, 1))
    decoding.decode(png(np.zeros((4, 4, 3), np.uint8)), "auto")
    assert calls == []  # a PNG went to Pillow
    decoding.decode(jpeg(np.zeros((4, 4, 3), np.uint8)), "auto")
    assert len(calls) == 1
    decoding._resolved.cache_clear()


def test_torchcodec_reports_a_png_shorter_than_its_header_as_damaged():
    import zlib

    from reslab.data.decode import BadImage, decode
    from test_seams import png_bytes

    with pytest.raises(BadImage, match="damaged image data"):
        decode(png_bytes(40, 40, zlib.compress(b"\x00" * 100)), "torchcodec")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_resize_filter_is_the_configured_one_in_evaluation_and_prediction(interpolation, photo):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional

    from reslab.data.sources import preprocessing
    from reslab.data.transforms import ImagePipeline, eval_transform
    from reslab.inference.predict import prepare

    image = torch.from_numpy(photo).permute(2, 0, 1).contiguous()
    pipeline = ImagePipeline(image_size=16, center_crop=True, interpolation=interpolation)
    out = eval_transform(pipeline)(image).as_subclass(torch.Tensor)
    expected = functional.center_crop(functional.resize(image, 18, InterpolationMode(interpolation), antialias=True),
                                      16)
    assert torch.equal(out, expected)
    spec = preprocessing(16, 18, True, [0.5] * 3, [0.5] * 3, 3, interpolation, "pil")
    assert torch.equal(prepare(image, {"image_size": [16, 16], "preprocess": spec}), expected)
    other = "bicubic" if interpolation == "bilinear" else "bilinear"
    assert not torch.equal(eval_transform(ImagePipeline(image_size=16, interpolation=other))(image), out)
