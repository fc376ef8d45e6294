"""Keras users' own whole models opened in reslab: a ResNet nested in a Sequential with a head
of its own (report 000's ResNet152V2 + conv head, a ResNet50 + pooling + Dense), saved as
Keras 3's ``.keras`` archive, as the legacy whole-model ``.h5`` (Keras 3's and Keras 2's
weight names) and as ``.weights.h5``; checked against Keras itself (torch backend) within 1e-4."""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from reslab.errors import ReslabError
from reslab.models import create_model
from reslab.models.weights import load_keras_weights
from reslab.train.setup import load_pretrained
from test_weights import _keras_output as _outputs
from test_weights import _randomize
from test_weights import _reslab_output as _reslab_outputs

from conftest import tiny_resnet_v2, write_keras_archive, write_keras_h5

# Keras's torch backend converts tensors with np.array(x), which numpy 2 warns about, thousands of times.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.numerics]  # Keras-parity tolerances: run with both ISAs


def _zero(model) -> None:
    """Every parameter and statistic to zero: whatever the file does not set shows in the outputs."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.zero_()


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(expected).max() > 1e-3  # outputs worth comparing
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)


def _as_keras2(source: Path, target: Path) -> None:
    """A Keras 3 legacy .h5 rewritten with TF-Keras 2's weight names: ``conv1_conv/kernel:0`` in
    the nested backbone's group, ``dense_1/kernel:0`` (no outer scope) in a head layer's."""
    with h5py.File(source, "r") as original, h5py.File(target, "w") as rewritten:
        weights, out = original["model_weights"], rewritten.create_group("model_weights")
        for key, value in weights.attrs.items():
            out.attrs[key] = value
        for layer in weights.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            group, names = out.create_group(layer), []
            for name in weights[layer].attrs.get("weight_names", []):
                name = name.decode() if isinstance(name, bytes) else name
                owner, variable = name.split("/")[-2:]
                names.append(f"{owner}/{variable}:0")
                group.create_dataset(names[-1], data=weights[layer][name][()])
            group.attrs["weight_names"] = [n.encode() for n in names]


# ---------------------------------------------------------------- report 000's model


@pytest.fixture(scope="module")
def report000_files(keras, tmp_path_factory):
    """Report 000's model as its user built it: ResNet152V2 without top, then the conv head
    (Fig. 2), with random weights, saved both ways Keras saves a whole model."""
    from keras import layers

    def conv(filters):
        return [layers.Conv2D(filters, 3, padding="same"), layers.Activation("relu")]

    base = keras.applications.ResNet152V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Sequential([base, *conv(32), *conv(32), layers.MaxPooling2D(2, padding="same"),
                              *conv(64), *conv(64), layers.MaxPooling2D(2, padding="same"),
                              layers.Flatten(), layers.Dense(512), layers.Dropout(0.5), layers.Dense(10)])
    assert model.count_params() == 59_024_586  # report 000's total, corrected
    _randomize(model, seed=0)
    folder = tmp_path_factory.mktemp("report000")
    model.save(folder / "report000.keras")
    model.save(folder / "report000.h5")  # the legacy whole-model file of the report
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    return SimpleNamespace(folder=folder, x=x, expected=_outputs(model, x))


@pytest.fixture(scope="module")
def report000():
    return create_model("resnet152v2_report000", num_classes=10)  # built once: 60M parameters


@pytest.mark.parametrize("name", ["report000.keras", "report000.h5"])
def test_report000s_whole_model_file_gives_keras_outputs(name, report000_files, report000):
    _zero(report000)
    assert load_keras_weights(report000, report000_files.folder / name) == []  # backbone and head, all of it
    _close(_reslab_outputs(report000, report000_files.x), report000_files.expected)


# ---------------------------------------------------------------- a ResNet50 (V1) in a Sequential


@pytest.fixture(scope="module")
def resnet50_files(keras, tmp_path_factory):
    """Sequential([ResNet50(include_top=False), GlobalAveragePooling2D(), Dense(10)]): the
    usual Keras transfer model, in every file Keras writes, and its bare backbone."""
    from keras import layers

    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Sequential([base, layers.GlobalAveragePooling2D(), layers.Dense(10)])
    _randomize(model, seed=2)
    folder = tmp_path_factory.mktemp("resnet50")
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    model.save_weights(folder / "model.weights.h5")
    base.save(folder / "backbone.keras")
    rgb = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # Keras V1 reads BGR; the loaded reslab model reads RGB
    return SimpleNamespace(folder=folder, x=rgb, expected=_outputs(model, bgr), features=_outputs(base, bgr))


@pytest.fixture(scope="module")
def resnet50():
    return create_model("resnet50", num_classes=10, stride_in="1x1")  # Keras V1 strides in the first 1x1


@pytest.mark.parametrize("name", ["model.keras", "model.weights.h5"])
def test_a_nested_keras_resnet50_gives_keras_outputs(name, resnet50_files, resnet50):
    _zero(resnet50)
    notes = load_pretrained(resnet50, str(resnet50_files.folder / name))  # as model.pretrained=FILE does
    assert any("folded" in note for note in notes)  # Keras V1 conv biases, folded into BN
    _close(_reslab_outputs(resnet50, resnet50_files.x), resnet50_files.expected)


def test_a_legacy_h5_with_keras2_weight_names_gives_keras_outputs(resnet50_files, resnet50, tmp_path):
    _as_keras2(resnet50_files.folder / "model.h5", tmp_path / "keras2.h5")
    with h5py.File(tmp_path / "keras2.h5", "r") as file:  # the layout the report's user had
        names = file["model_weights/resnet50"].attrs["weight_names"]
        assert "conv1_conv/kernel:0" in [n.decode() if isinstance(n, bytes) else n for n in names]
    _zero(resnet50)
    load_keras_weights(resnet50, tmp_path / "keras2.h5")
    _close(_reslab_outputs(resnet50, resnet50_files.x), resnet50_files.expected)


def test_a_keras_archive_of_the_bare_backbone_gives_keras_features(resnet50_files, resnet50):
    _zero(resnet50)
    notes = load_keras_weights(resnet50, resnet50_files.folder / "backbone.keras")
    assert any("no top" in note for note in notes)
    _close(_reslab_outputs(resnet50, resnet50_files.x, features=True), resnet50_files.features)


def test_a_nested_model_with_another_number_of_classes_keeps_the_fresh_head(resnet50_files):
    model = create_model("resnet50", num_classes=3, stride_in="1x1")
    fresh_head = model.fc.weight.detach().clone()
    notes = load_keras_weights(model, resnet50_files.folder / "model.keras")
    assert any("skipped the file's 10-class top" in note for note in notes)
    assert torch.equal(model.fc.weight, fresh_head)


def test_a_nested_model_of_another_depth_is_one_clear_error(resnet50_files):
    with pytest.raises(ReslabError, match="has no layer 'conv4_block7_1_conv'"):
        load_keras_weights(create_model("resnet101", stride_in="1x1"), resnet50_files.folder / "model.keras")


def test_a_truncated_keras_archive_is_one_clear_error(resnet50_files, tmp_path):
    data = (resnet50_files.folder / "model.keras").read_bytes()
    (tmp_path / "broken.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReslabError, match="truncated or not a .keras file"):
        load_keras_weights(create_model("resnet50", stride_in="1x1"), tmp_path / "broken.keras")


# ---------------------------------------------------------------- bad Keras files: one error line each


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    """A narrow ResNetV2 with Keras's layer names, as a legacy whole-model .h5 and a .keras archive."""
    folder = tmp_path_factory.mktemp("tiny-keras")
    model = tiny_resnet_v2()
    return SimpleNamespace(h5=write_keras_h5(folder / "tiny.h5", model),
                           archive=write_keras_archive(folder / "tiny.keras", model))


def _refused(path: Path, *words: str) -> str:
    """The one-line error of loading ``path`` into the tiny ResNetV2, checked for ``words``."""
    with pytest.raises(ReslabError) as caught:
        load_keras_weights(tiny_resnet_v2(), path)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message
    return message


def _edited_h5(tiny_keras, tmp_path: Path, edit) -> Path:
    path = tmp_path / "edited.h5"
    shutil.copy(tiny_keras.h5, path)
    with h5py.File(path, "r+") as file:
        edit(file["model_weights"])
    return path


BN = "conv3_block1_1_bn"


def test_the_tiny_keras_files_load(tiny_keras):
    for path in (tiny_keras.h5, tiny_keras.archive):
        assert load_keras_weights(tiny_resnet_v2(), path) == []


def test_a_batch_norm_layer_without_moving_variance_is_one_line_naming_it(tiny_keras, tmp_path):
    def edit(root):
        group = root[BN]
        del group[f"{BN}/moving_variance:0"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = [n.encode() for n in names if "moving_variance" not in n]

    _refused(_edited_h5(tiny_keras, tmp_path, edit), BN, "moving_variance")


@pytest.mark.parametrize("value", [float("nan"), -0.5, float("inf")])
def test_a_batch_norm_variance_that_is_nan_or_negative_is_one_line_naming_the_layer(value, tiny_keras, tmp_path):
    def edit(root):
        root[BN][f"{BN}/moving_variance:0"][3] = value

    _refused(_edited_h5(tiny_keras, tmp_path, edit), BN, "moving_variance")


def test_a_nan_in_a_kernel_is_one_line_naming_the_layer(tiny_keras, tmp_path):
    def edit(root):
        root["conv2_block2_2_conv"]["conv2_block2_2_conv/kernel:0"][0, 0, 0, 0] = float("nan")

    _refused(_edited_h5(tiny_keras, tmp_path, edit), "conv2_block2_2_conv", "not finite")


@pytest.mark.parametrize("shape", [(4, 4), (3, 3, 16, 4, 1), ()])
def test_a_kernel_of_the_wrong_rank_is_one_line_naming_the_layer(shape, tiny_keras, tmp_path):
    def edit(root):
        group = root["conv2_block1_2_conv"]
        del group["conv2_block1_2_conv/kernel:0"]
        group.create_dataset("conv2_block1_2_conv/kernel:0", data=np.ones(shape, np.float32))

    _refused(_edited_h5(tiny_keras, tmp_path, edit), "conv2_block1_2_conv", "kernel")


def test_an_hdf5_external_link_is_refused_not_followed(tiny_keras, tmp_path):
    """The link points at the very data the layer needs: followed, the file would load."""
    name = "conv1_conv/conv1_conv/kernel:0"
    with h5py.File(tiny_keras.h5, "r") as source, h5py.File(tmp_path / "elsewhere.h5", "w") as other:
        other.create_dataset("kernel", data=source["model_weights"][name][()])

    def edit(root):
        del root[name]
        root[name] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "kernel")

    _refused(_edited_h5(tiny_keras, tmp_path, edit), "external link", "conv1_conv")


def test_a_dataset_stored_in_an_external_file_is_refused(tiny_keras, tmp_path):
    name = "conv1_conv/conv1_conv/bias:0"
    (tmp_path / "raw.bin").write_bytes(np.ones(8, np.float32).tobytes())

    def edit(root):
        del root[name]
        root.create_dataset(name, shape=(8,), dtype=np.float32, external=[(str(tmp_path / "raw.bin"), 0, 32)])

    _refused(_edited_h5(tiny_keras, tmp_path, edit), "outside the file", "conv1_conv")


def test_an_unwritten_dataset_declaring_a_huge_shape_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as file:
        root = file.create_group("model_weights")
        root.attrs["layer_names"] = [b"conv1_conv"]
        group = root.create_group("conv1_conv")
        group.attrs["weight_names"] = [b"conv1_conv/kernel:0"]
        group.create_dataset("conv1_conv/kernel:0", shape=(2**20, 2**20, 16, 16), dtype=np.float32,
                             chunks=(1, 1, 16, 16))  # 1 PB declared, nothing written
    assert path.stat().st_size < 16_000
    start = time.perf_counter()
    _refused(path, "conv1_conv", "declares")
    assert time.perf_counter() - start < 5


def test_a_keras_archive_that_inflates_to_gigabytes_is_refused_before_extracting(tiny_keras, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the archive would be extracted
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(tiny_keras.archive) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        target.writestr("config.json", source.read("config.json"))
        with target.open("model.weights.h5", "w", force_zip64=True) as member:
            zeros = bytes(1 << 24)
            for _ in range(16):  # 256 MiB of zeros, a quarter of a MB deflated
                member.write(zeros)
    assert bomb.stat().st_size < 3_000_000
    _refused(bomb, "model.weights.h5", "GB")
    assert sum(path.stat().st_size for path in scratch.rglob("*") if path.is_file()) == 0
