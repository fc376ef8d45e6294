"""Shared fixtures: small datasets written in the real file formats, and fast configs."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

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


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    return tmp_path


def quick_config(tmp_path: Path, *overrides: str):
    """A digits run small enough for a unit test (a few seconds on two cores)."""
    return load("demo-digits", [f"output.dir={tmp_path / 'runs'}", "train.epochs=2", "model.name=resnet8",
                                "train.batch_size=128", *overrides])


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the torch backend (no TensorFlow). A test dependency: missing, tests fail."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    assert keras.backend.backend() == "torch"
    return keras
