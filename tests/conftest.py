"""Shared fixtures and helpers: small datasets written in the real file formats, fast
configs, and the command line run in this process (``run_cli``, ``assert_one_error_line``)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from reslab.config import load


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_worker():
    """Under pytest-xdist each worker gets one intra-op thread: two workers with two
    threads each on two cores slow every test down several times."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    yield


def write_cifar_archive(path: Path, train_per_batch: int = 20, test: int = 30, seed: int = 0,
                        hundred: bool = False) -> Path:
    """A CIFAR archive in the official python format: pickled dicts with bytes keys
    (as the originals, pickled under Python 2), uint8 data of shape (N, 3072)."""
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10

    def batch(count: int) -> bytes:
        labels = rng.integers(0, classes, count).tolist()
        key = b"fine_labels" if hundred else b"labels"
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        return pickle.dumps({b"batch_label": b"x", key: labels, b"data": data}, protocol=2)

    if hundred:
        folder = "cifar-100-python"
        members = {"train": batch(5 * train_per_batch), "test": batch(test),
                   "meta": pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, protocol=2)}
    else:
        folder = "cifar-10-batches-py"
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        members = {f"data_batch_{i}": batch(train_per_batch) for i in range(1, 6)}
        members["test_batch"] = batch(test)
        members["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
    with tarfile.open(path, "w:gz") as archive:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(folder: Path, train: int = 60, test: int = 20, compress: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, count), compress)
    return folder


def write_cifar_batches(folder: Path, images: int, labels: int, data=None, label_values=None, names=None) -> None:
    """An extracted CIFAR-10 folder whose batches hold what the test asks for (the wrong
    number of labels, pixels out of range, names that are not a list)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (images, 3072)) if data is None else data,
                 b"labels": (rng.integers(0, 10, labels).tolist() if label_values is None else label_values)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": names if names is not None else [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))

@pytest.fixture
def cifar_root(tmp_path) -> Path:
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    return tmp_path


def quick_config(tmp_path: Path, *overrides: str):
    """A digits run small enough for a unit test (a few seconds on two cores)."""
    return load("demo-digits", [f"output.dir={tmp_path / 'runs'}", "train.epochs=2", "model.name=resnet8",
                                "train.batch_size=128", *overrides])


# ---------------------------------------------------------------- the command line, in this process


class Ran(NamedTuple):
    """How ``reslab ARGV`` ended: its exit code, standard output and standard error."""

    code: int
    out: str
    err: str


def run_cli(capsys, *argv) -> Ran:
    """``reslab ARGV`` run in this process (``reslab.cli.main``), its output read through
    capsys. argparse's own refusals end in SystemExit: its code is the exit code."""
    from reslab.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return Ran(code, out, err)


# reslab's own error line, or argparse's ("reslab train: error: argument --seed: ...")
ERROR_LINE = re.compile(r"reslab(?: [\w-]+)*: error: ")
OWN_LINE = re.compile(r"reslab(?: [\w-]+)*: |usage: | ")


def assert_one_error_line(ran: Ran, *fragments: str, alone: bool = False) -> str:
    """``ran`` ended as an error a user caused should: exit 2, no traceback, nothing on
    standard error but reslab's own lines (and argparse's usage), and one short error line
    holding every fragment (a refused value is named, not echoed whole). With ``alone``,
    that line is all standard error holds. Returns the line."""
    code, out, err = ran
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
    assert all(OWN_LINE.match(line) for line in err.splitlines()), err[-2000:]
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1 and len(errors[0]) < 600, err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    if alone:
        assert err == errors[0] + "\n", err
    return errors[0]

def history_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's history.csv, as text."""
    import csv

    with open(run_dir / "history.csv") as file:
        return list(csv.DictReader(file))


def crash_after_epochs(config, epochs: int) -> Path:
    """Train ``config`` until ``epochs`` epochs are saved, then crash as a kill there would;
    returns the run folder left behind."""
    import reslab.train.run_folder as run_folder
    from reslab.train.loop import train

    real = run_folder.write_history

    def crash(path, history):  # written right after the epoch's checkpoint
        real(path, history)
        if len(history) == epochs:
            raise RuntimeError("simulated crash")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_folder, "write_history", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(config, progress=False)
    return Path(config.output.dir) / config.output.name


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the torch backend (no TensorFlow). A test dependency: missing, tests fail."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    assert keras.backend.backend() == "torch"
    return keras


# ---------------------------------------------------------------- small model files for bad-input tests


def write_hub_folder(folder: Path, model_name: str = "resnet8", channels: int = 1, image_size: int = 8,
                     num_classes: int = 10, dataset: str | None = "digits", decoder: str = "pil",
                     seed: int = 0) -> Path:
    """A hub folder as ``reslab export --format hub`` writes it (config.json and model.safetensors),
    of an untrained ``model_name``: by default the digits' shape (1 channel, 8x8, 10 classes), so
    that ``reslab evaluate`` runs on it without files."""
    import json

    from safetensors.torch import save_file

    from reslab.data.sources import preprocessing
    from reslab.models import create_model
    from reslab.models.weights.hub import CONFIG_FILE, WEIGHTS_FILE, hub_config

    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=num_classes, in_channels=channels)
    mean, std = [0.3] * channels, [0.25] * channels
    meta = {"model": model_name, "model_options": {}, "num_classes": num_classes, "in_channels": channels,
            "classes": [str(i) for i in range(num_classes)], "image_size": [image_size] * 2, "mean": mean,
            "std": std, "dataset": dataset, "task": "single-label", "threshold": 0.5,
            "preprocess": preprocessing(image_size, None, False, mean, std, channels, decoder=decoder)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(hub_config(meta, model.num_features), indent=2))
    return folder


def tiny_resnet_v2(num_classes: int = 5):
    """A ``ResNetV2`` with Keras's layer names and order, but narrow (4 to 32 filters) and two
    blocks a stage: Keras files of a few hundred KB, for many bad-input cases."""
    from torch import nn

    from reslab.models.preact import ResNetV2, keras_bn, keras_v2_stage

    class TinyResNetV2(ResNetV2):
        def __init__(self):
            nn.Module.__init__(self)  # ResNetV2's own widths are ImageNet's
            self.blocks, self.num_classes = (2, 2, 2, 2), num_classes
            self.conv1_pad, self.conv1 = nn.ZeroPad2d(3), nn.Conv2d(3, 8, 7, stride=2, bias=True)
            self.pool1_pad, self.pool1 = nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2)
            self.conv2 = keras_v2_stage(8, 4, 2, 2)
            self.conv3 = keras_v2_stage(16, 8, 2, 2)
            self.conv4 = keras_v2_stage(32, 16, 2, 2)
            self.conv5 = keras_v2_stage(64, 32, 2, 1)
            self.num_features = 128
            self.post_bn, self.relu = keras_bn(self.num_features), nn.ReLU(inplace=True)
            self.fc = self._classifier(num_classes)

    return TinyResNetV2()


def _keras_variables(model) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """(Keras layer name, Keras class, {variable: array}) of a ResNetV2 in Keras's layer order,
    laid out as Keras stores them (conv kernels H, W, in, out; dense kernels in, out)."""
    from reslab.models.weights.keras_weights import keras_v2_layers

    state = {key: value.numpy() for key, value in model.state_dict().items()}
    rng = np.random.default_rng(0)
    layers = []
    for layer in keras_v2_layers(model):
        prefix = layer.module
        if layer.kind == "conv":
            variables = {"kernel": state[f"{prefix}.weight"].transpose(2, 3, 1, 0)}
            if f"{prefix}.bias" in state:
                variables["bias"] = state[f"{prefix}.bias"]
            layers.append((layer.name, "Conv2D", variables))
        elif layer.kind == "bn":
            size = state[f"{prefix}.weight"].shape
            layers.append((layer.name, "BatchNormalization", {
                "gamma": rng.uniform(0.5, 1.5, size).astype("float32"),
                "beta": rng.normal(0, 0.1, size).astype("float32"),
                "moving_mean": rng.normal(0, 0.1, size).astype("float32"),
                "moving_variance": rng.uniform(0.5, 1.5, size).astype("float32")}))
        else:
            layers.append((layer.name, "Dense", {"kernel": state[f"{prefix}.weight"].T,
                                                 "bias": state[f"{prefix}.bias"]}))
    return layers


def write_keras_h5(path: Path, model) -> Path:
    """``model`` (a ResNetV2) as Keras's legacy whole-model ``.h5`` (``model.save("x.h5")``):
    model_weights/<layer>/<layer>/<variable>:0, listed in layer_names and weight_names."""
    import h5py

    layers = _keras_variables(model)
    with h5py.File(path, "w") as file:
        root = file.create_group("model_weights")
        root.attrs["layer_names"] = [name.encode() for name, _, _ in layers]
        for name, _, variables in layers:
            group = root.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{key}:0".encode() for key in variables]
            for key, array in variables.items():
                group.create_dataset(f"{name}/{key}:0", data=array)
    return path


def write_keras_archive(path: Path, model) -> Path:
    """``model`` (a ResNetV2) as Keras 3's ``.keras`` archive: config.json naming the layers in
    order, model.weights.h5 with layers/<class in snake case>[_<n>]/vars/<i>."""
    import json
    import zipfile

    import h5py

    from reslab.models.weights.keras_files import snake_case

    layers = _keras_variables(model)
    config = {"class_name": "Functional", "config": {"name": "resnet50v2", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_layer"}},
        *({"class_name": kind, "config": {"name": name, "use_bias": "bias" in variables}}
          for name, kind, variables in layers)]}}
    weights = path.with_name(path.name + ".weights.h5")
    counts: dict[str, int] = {}
    with h5py.File(weights, "w") as file:
        group = file.create_group("layers")
        for _, kind, variables in layers:
            key = snake_case(kind)
            index = counts.get(key, 0)
            counts[key] = index + 1
            stored = group.create_group(key if index == 0 else f"{key}_{index}").create_group("vars")
            for i, array in enumerate(variables.values()):
                stored.create_dataset(str(i), data=array)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.write(weights, "model.weights.h5")
    weights.unlink()
    return path


# ---------------------------------------------------------------- images for the decoders and folders


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A PNG made by hand: its header may promise more pixels than its data holds."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_photos(folder: Path, count: int, seed: int) -> None:
    """Two class folders (a, b) of ``count`` photos each, of random sizes; every third a JPEG
    stored sideways with the EXIF orientation that shows it upright, as a phone writes it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            height, width = int(rng.integers(30, 60)), int(rng.integers(30, 60))
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            pixels[:, : width // 2] //= 2 if label == "a" else 1
            image = Image.fromarray(pixels)
            if i % 3 == 0:  # a phone photo: stored sideways, EXIF says how to show it
                exif = Image.Exif()
                exif[0x0112] = 6
                image.save(folder / label / f"{i}.jpg", exif=exif, quality=95)
            else:
                image.save(folder / label / f"{i}.png")

def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each chunk of a PNG file."""
    chunks, position = [], 8
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        chunks.append((data[position + 4:position + 8], data[position + 8:position + 8 + length]))
        position += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG file of these chunks, each with a correct CRC (so that only what they hold is wrong)."""
    import zlib

    body = b"".join(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
                    for kind, data in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def png_with_a_bad_data_check(width: int = 24, height: int = 16) -> bytes:
    """An RGB PNG whose IDAT zlib stream ends in a wrong Adler-32 ("incorrect data check"), the
    chunk CRC correct: libpng reports it through longjmp, and torchvision.io's PNG decoder
    crashes the process (SIGSEGV) on it."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    chunks = [(kind, data[:-4] + bytes(b ^ 0xFF for b in data[-4:]) if kind == b"IDAT" else data)
              for kind, data in png_chunks(buffer.getvalue())]
    return png_from_chunks(chunks)
