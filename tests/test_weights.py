"""Weights from elsewhere: Keras applications, torchvision, other PyTorch reproductions, bad files."""

from __future__ import annotations

import urllib.error

import h5py
import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from reslab.config import load
from reslab.data.normalization import Normalizer, normalization_stats
from reslab.errors import ReslabError
from reslab.models import create_model
from reslab.models.preact import resnet101v2, resnet152v2
from reslab.models.weights import (
    load_keras_weights,
    load_state_dict_flexible,
    load_torchvision_weights,
    read_weights_file,
)
from reslab.train.setup import pretrained_normalization

# Keras's torch backend converts tensors with np.array(x), which numpy 2 warns about, thousands of times.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.numerics]  # Keras-parity tolerances: run with both ISAs

# --- Keras applications ----------------------------------------------------------------


def _randomize(keras_model, seed: int = 0) -> None:
    """Non-trivial BN statistics and biases, so that a wrong mapping cannot hide."""
    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        for variable in layer.weights:
            name, shape = variable.path.split("/")[-1], tuple(variable.shape)
            if name in ("gamma", "moving_variance"):
                variable.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif name in ("beta", "moving_mean", "bias"):
                variable.assign(rng.normal(0.0, 0.1, shape).astype("float32"))


def _keras_output(keras_model, x: np.ndarray) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(keras_model(x, training=False))


def _reslab_output(model, x: np.ndarray, features: bool = False) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        images = torch.from_numpy(x).permute(0, 3, 1, 2)  # Keras is channels-last
        if features:
            return model.forward_features(images).permute(0, 2, 3, 1).numpy()
        return model(images).numpy()


@pytest.fixture(scope="module")
def resnet50v2_file(keras, tmp_path_factory):
    """A Keras ResNet50V2 (10 classes, 64x64) with random weights, saved by Keras 3."""
    model = keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    _randomize(model, seed=1)
    path = tmp_path_factory.mktemp("keras") / "resnet50v2.weights.h5"
    model.save_weights(path)
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype("float32")
    return path, x, _keras_output(model, x)


def test_keras3_resnet50v2_weights_give_keras_logits(resnet50v2_file):
    path, x, expected = resnet50v2_file
    model = create_model("resnet50v2", num_classes=10)
    assert load_keras_weights(model, path) == []
    np.testing.assert_allclose(_reslab_output(model, x), expected, atol=1e-4, rtol=1e-4)


def test_keras_resnet152v2_legacy_h5_without_top_gives_keras_features(keras, tmp_path):
    model = keras.applications.ResNet152V2(weights=None, input_shape=(32, 32, 3), include_top=False)
    _randomize(model, seed=3)
    path = tmp_path / "resnet152v2_notop.h5"
    model.save(path)  # the legacy HDF5 layout: model_weights/<layer>/ with weight_names
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = _keras_output(model, x)

    ours = resnet152v2(num_classes=0)
    load_keras_weights(ours, path)
    features = _reslab_output(ours, x, features=True)
    assert features.shape == (2, 1, 1, 2048)
    np.testing.assert_allclose(features, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)

    # The same weights into report 000's model: its backbone gives the same features.
    report = create_model("resnet152v2_report000", num_classes=10)
    notes = load_keras_weights(report, path)
    assert notes == []
    np.testing.assert_allclose(_reslab_output(report, x, features=True), features, atol=1e-6, rtol=0)


def test_keras_applications_h5_layout_at_the_file_root_is_read(resnet50v2_file, keras, tmp_path):
    # keras.applications' downloads keep the layer groups at the root, not under model_weights.
    model = keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    model.load_weights(resnet50v2_file[0])
    full = tmp_path / "full.h5"
    model.save(full)
    root = tmp_path / "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(full, "r") as source, h5py.File(root, "w") as target:
        weights = source["model_weights"]
        for key, value in weights.attrs.items():
            target.attrs[key] = value
        for name in weights:
            weights.copy(name, target)
    ours = create_model("resnet50v2", num_classes=10)
    load_keras_weights(ours, root)
    path, x, expected = resnet50v2_file
    np.testing.assert_allclose(_reslab_output(ours, x), expected, atol=1e-4, rtol=1e-4)


def test_keras_v1_resnet50_loads_into_the_paper_stride_resnet50(keras, tmp_path):
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    _randomize(model, seed=5)
    path = tmp_path / "resnet50.weights.h5"
    model.save_weights(path)
    ours = create_model("resnet50", num_classes=10, stride_in="1x1")
    notes = load_keras_weights(ours, path)
    assert any("folded" in note for note in notes)  # Keras V1 conv biases, folded into BN
    # The same pixels through each library's own preprocessing: Keras's caffe mode (BGR, means off on
    # 0-255) and reslab's RGB pipeline with the normalization data.normalization=auto picks.
    def auto(name):
        return pretrained_normalization(load("demo-digits", [f"model.pretrained={path}", f"model.name={name}"]))[0]

    assert (auto("resnet50"), auto("resnet50v2"), auto("resnet152v2_report000")) == ("caffe", "inception", "inception")
    pixels = np.random.default_rng(6).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    keras_input = keras.applications.resnet50.preprocess_input(pixels.astype("float32"))
    mean, std = normalization_stats("caffe", 3)
    ours_input = Normalizer(mean, std)(torch.from_numpy(pixels).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    expected = _keras_output(model, keras_input)
    np.testing.assert_allclose(_reslab_output(ours, ours_input), expected, atol=1e-4 * np.abs(expected).max(),
                               rtol=1e-4)
    with pytest.raises(ReslabError, match="stride_in='1x1'"):
        load_keras_weights(create_model("resnet50"), path)


def test_keras_weights_of_another_depth_are_a_reslab_error(resnet50v2_file):
    with pytest.raises(ReslabError, match="another architecture"):
        load_keras_weights(resnet101v2(num_classes=10), resnet50v2_file[0])


def test_keras_top_of_another_size_is_skipped_with_a_note(resnet50v2_file):
    model = create_model("resnet50v2", num_classes=3)
    fresh_head = model.fc.weight.detach().clone()
    notes = load_keras_weights(model, resnet50v2_file[0])
    assert any("skipped" in note for note in notes)
    assert torch.equal(model.fc.weight, fresh_head)


def test_truncated_keras_file_is_a_reslab_error_naming_the_problem(resnet50v2_file, tmp_path):
    data = resnet50v2_file[0].read_bytes()
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(ReslabError, match="truncated or not an HDF5 file"):
        load_keras_weights(create_model("resnet50v2"), broken)


# --- torchvision -----------------------------------------------------------------------


def test_torchvision_weights_file_loads_and_a_head_of_another_size_is_skipped(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)  # 1000 classes
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", num_classes=10)
    notes = load_torchvision_weights(model, path)
    assert any("head" in note for note in notes)
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 10
    reference.fc = torch.nn.Identity()  # compare the pooled features: the heads differ
    reference.eval()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), reference(x))


def test_torchvision_weights_by_name_offline_say_to_download_and_pass_a_path(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ReslabError, match=r"download https://\S+resnet50-11ad3fa6\.pth .*pass the file's path"):
        load_torchvision_weights(create_model("resnet50"), "IMAGENET1K_V2")


def test_unknown_torchvision_weights_name_lists_the_known_ones():
    with pytest.raises(ReslabError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        load_torchvision_weights(create_model("resnet50"), "IMAGENET22K")


# --- state_dicts from other reproductions, wrong and damaged files ---------------------


def test_dataparallel_akamaster_checkpoint_loads_into_the_cifar_resnet(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", num_classes=10).eval()
    # akamaster/pytorch_resnet_cifar10: DataParallel prefixes, "linear" classifier, nested dict.
    foreign = {
        "module." + key.replace("fc.", "linear.") if key.startswith("fc.") else "module." + key: value
        for key, value in source.state_dict().items()
    }
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": foreign, "best_prec1": 91.7}, path)
    model = create_model("resnet20", num_classes=10)
    notes = load_state_dict_flexible(model, read_weights_file(path))
    assert any("linear.weight -> fc.weight" in note for note in notes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x))


def test_safetensors_files_load(tmp_path):
    source = create_model("wrn16_8")
    path = tmp_path / "wrn.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_model("wrn16_8")
    load_state_dict_flexible(model, read_weights_file(path))
    torch.testing.assert_close(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)


def test_weights_of_another_number_of_classes_name_the_first_mismatched_key():
    state = create_model("resnet20", num_classes=100).state_dict()
    with pytest.raises(ReslabError, match=r"shape of 'fc\.weight' is \(100, 64\) in the file but \(10, 64\)"):
        load_state_dict_flexible(create_model("resnet20", num_classes=10), state)


def test_weights_of_another_model_name_the_first_missing_key(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    with pytest.raises(ReslabError, match=r"keys missing from the file \(first 'layer1\.2\.conv1\.weight'\)"):
        load_torchvision_weights(create_model("resnet34"), path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_weights_file_is_a_reslab_error_naming_the_file_problem(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    state = create_model("resnet20").state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReslabError, match=rf"model{suffix} is not a readable weights file: truncated"):
        read_weights_file(path)


def test_missing_weights_file_is_a_reslab_error():
    with pytest.raises(ReslabError, match="no weights file at"):
        read_weights_file("/nonexistent/weights.pth")


def test_pickled_model_is_refused_without_unpickling_it(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(create_model("resnet20"), path)
    with pytest.raises(ReslabError, match="save model.state_dict"):
        read_weights_file(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_naming_the_key(value, tmp_path):
    state = create_model("resnet20").state_dict()
    state["layer2.1.bn1.weight"][4] = value
    torch.save(state, tmp_path / "diverged.pth")
    model = create_model("resnet20")
    before = model.layer2[1].bn1.weight.detach().clone()
    with pytest.raises(ReslabError, match=r"'layer2.1.bn1.weight' holds values that are not finite \(NaN or inf"):
        load_torchvision_weights(model, tmp_path / "diverged.pth")
    assert torch.equal(model.layer2[1].bn1.weight, before)  # nothing loaded


def test_weights_that_overflow_the_models_dtype_are_refused(tmp_path):
    state = {key: value.double() if value.is_floating_point() else value
             for key, value in create_model("resnet20").state_dict().items()}
    state["fc.weight"][0, 0] = 1e300  # finite in the file's float64, infinite in the model's float32
    torch.save(state, tmp_path / "float64.pth")
    with pytest.raises(ReslabError, match=r"'fc.weight' holds values that are not finite"):
        load_torchvision_weights(create_model("resnet20"), tmp_path / "float64.pth")
