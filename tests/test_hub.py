"""Model folders in timm's and the Hugging Face hub's layout, both ways, checked against timm
itself: timm's ResNet weights in reslab, reslab's exports in timm, hub folders as
``model.pretrained`` and for ``reslab predict``, and ``hf-hub:`` names without a network."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from reslab.checkpoint import save_checkpoint
from reslab.cli import main
from reslab.config import from_dict
from reslab.data import load_splits
from reslab.errors import ReslabError
from reslab.inference.predict import load_model
from reslab.models import create_model
from reslab.models.weights.hub import create_timm_model, crop_fraction, timm_architecture
from reslab.train.loop import train
from reslab.train.setup import load_pretrained, pretrained_normalization

from conftest import assert_one_error_line, quick_config, run_cli, write_hub_folder

pytestmark = pytest.mark.numerics  # outputs compared across kernels: run with both ISAs

# ResNet-18 is slow for a test on two cores: a few small steps are enough to have a run.
SHORT_RESNET18 = ("model.name=resnet18", "train.epochs=1", "train.max_iters=2", "train.batch_size=16")


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def _randomize_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so that a wrong mapping cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor in (module.weight.data, module.running_var):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            for tensor in (module.bias.data, module.running_mean):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def timm_resnet50():
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=4)
    _randomize_batch_norm(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A reslab run of ResNet-18 (which timm has too) on the 1-channel 8x8 digits, a few steps,
    exported as a hub folder with the command line."""
    folder = tmp_path_factory.mktemp("hub")
    result = train(quick_config(folder, "output.name=r18", *SHORT_RESNET18), progress=False)
    model, meta = load_model(result.run_dir, "cpu")
    hub = folder / "r18-hub"
    assert main(["export", str(result.run_dir), "--format", "hub", "--output", str(hub)]) == 0
    return SimpleNamespace(run_dir=result.run_dir, model=model, meta=meta, hub=hub, folder=folder)


# ---------------------------------------------------------------- timm -> reslab


def test_timm_resnet50_state_dict_loads_into_reslab_resnet50_with_the_same_logits(timm_resnet50):
    ours = create_model("resnet50", num_classes=4)
    ours.load_state_dict(timm_resnet50.state_dict(), strict=True)  # the same key names, every one
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = _logits(timm_resnet50, x)
    torch.testing.assert_close(_logits(ours, x), expected, atol=1e-4, rtol=1e-4)
    assert expected.abs().max() > 1e-2  # logits worth comparing


def test_a_folder_saved_by_timm_is_read_by_reslab(timm_resnet50, tmp_path, capsys):
    # timm's own export (pytorch_model.bin by default), with labels and a 64-pixel evaluation transform.
    folder = tmp_path / "timm-resnet50"
    timm.models.save_for_hf(timm_resnet50, str(folder), model_config={"label_names": ["ant", "bee", "cat", "dog"]},
                            data_config={"input_size": (3, 64, 64), "crop_pct": 0.9})
    assert (folder / "pytorch_model.bin").is_file()
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    model, meta = load_model(folder)
    assert (meta["model"], meta["num_classes"], meta["classes"]) == ("resnet50", 4, ["ant", "bee", "cat", "dog"])
    assert meta["image_size"] == [64, 64] and meta["in_channels"] == 3
    assert meta["mean"] == pytest.approx(cfg["mean"]) and meta["std"] == pytest.approx(cfg["std"])
    preprocess = meta["preprocess"]
    assert (preprocess["resize_size"], preprocess["center_crop"]) == (71, True)  # timm: floor(64 / 0.9), then crop
    assert preprocess["interpolation"] == cfg["interpolation"] == "bicubic"
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(model, x), _logits(timm_resnet50, x), atol=1e-4, rtol=1e-4)

    # reslab predict on the folder names timm's labels
    Image.new("RGB", (90, 80), (200, 40, 90)).save(tmp_path / "photo.png")
    code, out, _ = run_cli(capsys, "predict", folder, tmp_path / "photo.png", "--format", "json", "--device", "cpu")
    assert code == 0
    assert json.loads(out)["results"][0]["predictions"][0]["class"] in ("ant", "bee", "cat", "dog")


def test_a_timm_folder_of_a_network_reslab_does_not_build_is_one_clear_error(tmp_path, capsys):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 2,
                                                    "pretrained_cfg": {"input_size": [3, 224, 224]}}))
    save_file({"cls_token": torch.zeros(1, 1, 8)}, str(folder / "model.safetensors"))
    code, _, err = run_cli(capsys, "predict", folder, tmp_path, "--device", "cpu")
    assert code == 2
    assert err.count("\n") == 1 and "'vit_base_patch16_224' is a model reslab does not build" in err

    # a timm argument that changes the network (dilation) is refused, not silently ignored
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 2,
                                                    "model_args": {"output_stride": 16}}))
    with pytest.raises(ReslabError, match="output_stride"):
        load_model(folder)


# ---------------------------------------------------------------- reslab -> timm


def test_export_hub_writes_timms_config_layout(run):
    config = json.loads((run.hub / "config.json").read_text())
    assert (run.hub / "model.safetensors").is_file()
    assert config["architecture"] == "resnet18"  # timm's name for the same network
    assert config["num_classes"] == 10 and config["num_features"] == 512
    assert config["label_names"] == run.meta["classes"]
    assert config["model_args"] == {"in_chans": 1}  # timm builds a 1-channel stem
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [1, *run.meta["image_size"]]
    assert cfg["mean"] == pytest.approx(run.meta["mean"]) and cfg["std"] == pytest.approx(run.meta["std"])
    assert (cfg["crop_pct"], cfg["crop_mode"], cfg["interpolation"]) == (1.0, "squash", "bilinear")  # digits squash
    assert cfg["num_classes"] == 10 and cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"
    assert config["reslab"]["model"] == "resnet18" and config["reslab"]["timm"] == "resnet18"
    assert config["reslab"]["preprocess"] == run.meta["preprocess"]


def test_timm_loads_the_exported_folder_with_the_same_logits(run):
    loaded = timm.create_model(f"local-dir:{run.hub}", pretrained=True)  # what a timm user writes
    assert loaded.num_classes == 10 and loaded.conv1.in_channels == 1
    assert loaded.pretrained_cfg["mean"] == pytest.approx(run.meta["mean"])
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    expected = _logits(run.model, x)
    torch.testing.assert_close(_logits(loaded, x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(create_timm_model(run.hub), x), expected, atol=1e-4, rtol=1e-4)


def test_reslab_predict_on_the_hub_folder_gives_the_runs_predictions(run, tmp_path, capsys):
    test = load_splits(from_dict(run.meta["config"]).data).test
    for i, image in enumerate(test.images[:12]):
        Image.fromarray(image[0].numpy(), "L").save(tmp_path / f"{i:02d}.png")
    answers = []
    for source in (run.run_dir, run.hub):
        code, out, _ = run_cli(capsys, "predict", source, tmp_path, "--format", "json", "--top-k", "2",
                               "--device", "cpu")
        assert code == 0
        answers.append(json.loads(out)["results"])
    from_run, from_hub = answers
    assert [r["predictions"][0]["class"] for r in from_hub] == [r["predictions"][0]["class"] for r in from_run]
    for ours, theirs in zip(from_hub, from_run):
        assert [p["probability"] for p in ours["predictions"]] == pytest.approx(
            [p["probability"] for p in theirs["predictions"]], abs=1e-5)


def test_reslab_evaluate_on_the_hub_folder_gives_the_runs_test_metrics(run, tmp_path, capsys):
    from reslab.evaluate.runner import evaluate_checkpoint

    ours, theirs = (evaluate_checkpoint(source, device="cpu") for source in (run.hub, run.run_dir))
    assert (ours["dataset"], ours["trained_on"]) == ("digits", "digits")  # from the folder's config.json
    assert ours["test"]["confusion_matrix"] == theirs["test"]["confusion_matrix"]
    assert ours["test"]["samples"] == theirs["test"]["samples"] > 300
    assert ours["test"]["loss"] == pytest.approx(theirs["test"]["loss"], abs=1e-5)
    # A folder that does not name its dataset (timm's never do) needs --data; robustness needs a run.
    anonymous = tmp_path / "anonymous"
    shutil.copytree(run.hub, anonymous)
    config = json.loads((anonymous / "config.json").read_text())
    del config["reslab"]["dataset"]
    (anonymous / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "evaluate", anonymous, "--device", "cpu")
    assert code == 2 and "give --data" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(capsys, "evaluate", anonymous, "--data", "digits", "--device", "cpu")
    assert code == 0 and f"{theirs['test']['accuracy']:.4f}" in out
    code, _, err = run_cli(capsys, "evaluate", run.hub, "--corruptions", "fog", "--device", "cpu")
    assert code == 2 and "hub folder" in err and len(err.strip().splitlines()) == 1


def test_fine_tuning_starts_from_the_hub_folder(run, tmp_path):
    # A copy whose normalization differs from the digits' own, to see it taken from the folder.
    hub = tmp_path / "hub"
    shutil.copytree(run.hub, hub)
    config = json.loads((hub / "config.json").read_text())
    config["pretrained_cfg"].update(mean=[0.25], std=[0.5])
    (hub / "config.json").write_text(json.dumps(config))
    settings = quick_config(tmp_path, "output.name=tuned", *SHORT_RESNET18, f"model.pretrained={hub}",
                            "model.freeze=backbone")
    assert pretrained_normalization(settings) == ("dataset", ([0.25], [0.5]))

    result = train(settings, progress=False)
    tuned, meta = load_model(result.run_dir)
    assert (meta["mean"], meta["std"]) == ([0.25], [0.5])
    hub_model, _ = load_model(hub)
    state, start = tuned.state_dict(), hub_model.state_dict()
    backbone = [key for key in start if not key.startswith("fc.")]
    assert all(torch.equal(state[key], start[key]) for key in backbone)  # frozen: the folder's weights
    assert not torch.equal(state["fc.weight"], start["fc.weight"])  # the head trained from the folder's

    # another number of classes keeps a fresh head, with a note
    other = create_model("resnet18", num_classes=3, in_channels=1)
    notes = load_pretrained(other, str(hub))
    assert any("skipped the file's head" in note for note in notes)
    assert torch.equal(other.conv1.weight, start["conv1.weight"])


def test_a_cifar_net_has_no_timm_twin_and_reslab_says_so(tmp_path, capsys):
    torch.manual_seed(5)
    model = create_model("resnet8", num_classes=3)
    meta = {"model": "resnet8", "model_options": {}, "num_classes": 3, "in_channels": 3, "classes": ["a", "b", "c"],
            "image_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "task": "single-label",
            "temperature": 1.5}  # as reslab calibrate fitted it
    save_checkpoint(tmp_path / "r8.pt", {"model": model.state_dict(), "meta": meta})
    code, out, _ = run_cli(capsys, "export", tmp_path / "r8.pt", "--format", "hub", "--output", tmp_path / "r8")
    assert code == 0 and "timm has no twin of reslab's resnet8" in out
    config = json.loads((tmp_path / "r8" / "config.json").read_text())
    assert config["architecture"] == "resnet8" and config["reslab"]["timm"] is None
    with pytest.raises(ReslabError, match="timm has no twin of reslab's resnet8"):
        create_timm_model(tmp_path / "r8")
    with pytest.raises(RuntimeError, match="Unknown model"):  # timm by itself cannot build it either
        timm.create_model(f"local-dir:{tmp_path / 'r8'}", pretrained=True)
    rebuilt, rebuilt_meta = load_model(tmp_path / "r8")  # reslab rebuilds it exactly, calibration included
    assert rebuilt_meta["temperature"] == 1.5
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(_logits(rebuilt, x), _logits(model, x))


def test_only_the_v1_5_imagenet_nets_are_timm_twins():
    assert timm_architecture({"model": "resnet50", "model_options": {}}) == "resnet50"
    assert timm_architecture({"model": "resnext50_32x4d"}) == "resnext50_32x4d"
    assert timm_architecture({"model": "resnet50", "model_options": {"stride_in": "1x1"}}) is None  # the paper's
    assert timm_architecture({"model": "resnet50v2", "model_options": {}}) is None  # Keras's, not timm's resnetv2
    assert timm_architecture({"model": "resnet20", "model_options": {}}) is None


def test_crop_fraction_gives_timm_the_resize_back():
    for image_size, resize in ((224, 256), (32, 37), (299, 342), (8, 9), (384, 438)):
        fraction = crop_fraction(image_size, resize)
        assert int(image_size / fraction) == resize  # timm: floor(image_size / crop_pct)


def test_export_hub_never_writes_into_a_run_folder_or_a_foreign_folder(run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", run.run_dir, "--format", "hub", "--output", run.run_dir)
    assert code == 2 and "is a run folder" in err
    assert not (run.run_dir / "config.json").exists()
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", run.run_dir, "--format", "hub", "--output", foreign)
    assert code == 2 and "holding other files (notes.txt)" in err
    # an earlier export of reslab's is replaced
    code, _, _ = run_cli(capsys, "export", run.run_dir, "--format", "hub", "--output", run.hub)
    assert code == 0 and sorted(p.name for p in run.hub.iterdir()) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------- hf-hub: names


def test_hf_hub_name_is_fetched_with_snapshot_download(run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(run.hub)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    Image.new("L", (8, 8), 128).save(tmp_path / "digit.png")
    code, out, _ = run_cli(capsys, "predict", "hf-hub:someone/digits-r18@v1", tmp_path / "digit.png",
                           "--format", "json", "--device", "cpu")
    assert code == 0 and len(json.loads(out)["results"]) == 1
    assert calls == [("someone/digits-r18", "v1", ["config.json", "model.safetensors"])]


@pytest.mark.parametrize("network", ["offline", "unreachable"])
def test_hf_hub_name_without_a_network_is_one_clear_error_line(network, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))  # nothing cached
    if network == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it
    else:
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    code, _, err = run_cli(capsys, "predict", "hf-hub:someone/model", tmp_path / "x.png")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("reslab: error: cannot download hf-hub:someone/model from the Hugging Face hub")
    assert "hf download someone/model --local-dir DIR" in err

    with pytest.raises(ReslabError, match="cannot download hf-hub:someone/model"):  # model.pretrained=hf-hub:...
        load_pretrained(create_model("resnet18"), "hf-hub:someone/model")


# ---------------------------------------------------------------- bad hub folders: one error line each


@pytest.fixture(scope="module")
def bad_input_folders(tmp_path_factory):
    """A reslab hub folder (ResNet-8, the digits' shape), a timm-layout one (ResNet-18, no
    reslab section) and an image, for config.json cases that must each end in one error line."""
    folder = tmp_path_factory.mktemp("bad-hub")
    own = write_hub_folder(folder / "own")
    timm_layout = write_hub_folder(folder / "timm", "resnet18", channels=3, image_size=32, num_classes=4)
    config = json.loads((timm_layout / "config.json").read_text())
    del config["reslab"]
    (timm_layout / "config.json").write_text(json.dumps(config))
    Image.new("RGB", (20, 16), (90, 140, 200)).save(folder / "image.png")
    return SimpleNamespace(own=own, timm=timm_layout, image=folder / "image.png")


def _mutated(source, tmp_path, changes: dict):
    """A copy of the hub folder ``source`` with ``changes`` ({"a.b.c": value}) made to its config.json."""
    folder = tmp_path / "mutated"
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    for path, value in changes.items():
        *parents, key = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


PRE = "reslab.preprocess"
BAD_OWN_CONFIGS = {
    "preprocess a string": ({PRE: "bilinear"}, "reslab.preprocess"),
    "preprocess a list": ({PRE: [8, 8]}, "reslab.preprocess"),
    "resize a nested mapping": ({f"{PRE}.resize_size": {"size": 9}, f"{PRE}.center_crop": True}, "resize_size"),
    "image size a mapping": ({f"{PRE}.image_size": {"side": 8}}, "image_size"),
    "centre crop a word": ({f"{PRE}.center_crop": "yes"}, "center_crop"),
    "negative resize": ({f"{PRE}.resize_size": -5, f"{PRE}.center_crop": True}, "resize_size"),
    "resize a string": ({f"{PRE}.resize_size": "big", f"{PRE}.center_crop": True}, "resize_size"),
    "huge resize": ({f"{PRE}.resize_size": 10**9, f"{PRE}.center_crop": True}, "resize_size"),
    "unknown interpolation": ({f"{PRE}.interpolation": "lanczos9"}, "interpolation"),
    "integer interpolation": ({f"{PRE}.interpolation": 3}, "interpolation"),
    "unknown decoder": ({f"{PRE}.decoder": "imagemagick"}, "decoder"),
    "input of 4096": ({"reslab.image_size": [4096, 4096], f"{PRE}.image_size": 4096}, "4096"),
    "std near zero": ({"pretrained_cfg.std": [1e-30]}, "std"),
    "negative std": ({"pretrained_cfg.std": [-0.2]}, "std"),
    "model option clashing with a builder argument": ({"reslab.model_options": {"in_channels": 5}}, "in_channels"),
    "model option of an unknown value": ({"reslab.model_options": {"shortcut": "Z"}}, "shortcut"),
    "unknown key in the reslab section": ({"reslab.preprocess.resize": 9}, "did you mean"),
    "unknown task": ({"reslab.task": "regression"}, "task"),
    "threshold a word": ({"reslab.threshold": "half"}, "threshold"),
    "pretrained_cfg a list": ({"pretrained_cfg": [1, 2]}, "pretrained_cfg"),
}
BAD_TIMM_CONFIGS = {
    "crop_pct of 0": ({"pretrained_cfg.crop_pct": 0}, "crop_pct"),
    "negative crop_pct": ({"pretrained_cfg.crop_pct": -0.875}, "crop_pct"),
    "tiny crop_pct": ({"pretrained_cfg.crop_pct": 1e-9}, "crop_pct"),
    "crop_pct a string": ({"pretrained_cfg.crop_pct": "most"}, "crop_pct"),
    "unknown interpolation": ({"pretrained_cfg.interpolation": "lanczos9"}, "interpolation"),
    "integer interpolation": ({"pretrained_cfg.interpolation": 2}, "interpolation"),
    "input_size of 4096": ({"pretrained_cfg.input_size": [3, 4096, 4096]}, "4096"),
    "input_size a string": ({"pretrained_cfg.input_size": "224"}, "input_size"),
    "input_size of two numbers": ({"pretrained_cfg.input_size": [224, 224]}, "input_size"),
    "std near zero": ({"pretrained_cfg.std": [1e-30, 0.2, 0.2]}, "std"),
    "unknown crop mode": ({"pretrained_cfg.crop_mode": "border"}, "crop_mode"),
    "in_chans a word": ({"model_args": {"in_chans": "three"}}, "in_chans"),
}


@pytest.mark.parametrize("case", list(BAD_OWN_CONFIGS), ids=list(BAD_OWN_CONFIGS))
def test_a_bad_reslab_hub_config_is_one_error_line_in_predict_and_as_pretrained(case, bad_input_folders, tmp_path,
                                                                                capsys):
    changes, named = BAD_OWN_CONFIGS[case]
    folder = _mutated(bad_input_folders.own, tmp_path, changes)
    ran = run_cli(capsys, "predict", folder, bad_input_folders.image, "--device", "cpu")
    assert_one_error_line(ran, "config.json", named, alone=True)
    assert ran.out == ""
    with pytest.raises(ReslabError, match="config.json"):  # model.pretrained=DIR
        load_pretrained(create_model("resnet8", num_classes=10, in_channels=1), str(folder))


@pytest.mark.parametrize("case", list(BAD_TIMM_CONFIGS), ids=list(BAD_TIMM_CONFIGS))
def test_a_bad_timm_hub_config_is_one_error_line(case, bad_input_folders, tmp_path, capsys):
    changes, named = BAD_TIMM_CONFIGS[case]
    folder = _mutated(bad_input_folders.timm, tmp_path, changes)
    ran = run_cli(capsys, "predict", folder, bad_input_folders.image, "--device", "cpu")
    assert_one_error_line(ran, "config.json", named, alone=True)


@pytest.mark.parametrize("case", ["preprocess a string", "huge resize", "std near zero", "unknown interpolation"])
def test_a_bad_hub_config_is_one_error_line_in_evaluate(case, bad_input_folders, tmp_path, capsys):
    changes, named = BAD_OWN_CONFIGS[case]
    folder = _mutated(bad_input_folders.own, tmp_path, changes)
    assert_one_error_line(run_cli(capsys, "evaluate", folder, "--device", "cpu"), named, alone=True)


def test_the_untouched_bad_input_folders_are_read(bad_input_folders, capsys):
    """The cases above differ from working folders by their one change only."""
    for folder in (bad_input_folders.own, bad_input_folders.timm):
        code, out, err = run_cli(capsys, "predict", folder, bad_input_folders.image, "--format", "json",
                                 "--device", "cpu")
        assert code == 0, err
        assert len(json.loads(out)["results"]) == 1


def test_an_absurd_architecture_is_refused_before_anything_is_built(bad_input_folders, tmp_path, capsys):
    import time

    folder = _mutated(bad_input_folders.own, tmp_path, {"architecture": "wrn9994_64", "reslab.model": "wrn9994_64"})
    start = time.perf_counter()
    ran = run_cli(capsys, "predict", folder, bad_input_folders.image, "--device", "cpu")
    assert_one_error_line(ran, "config.json", "WRN-9994-64", "parameters", alone=True)
    assert time.perf_counter() - start < 5  # refused from its options, not after allocating them


def test_nan_weights_in_a_hub_folder_are_one_error_line_in_evaluate_and_predict(bad_input_folders, tmp_path,
                                                                               capsys):
    from safetensors.torch import load_file

    folder = _mutated(bad_input_folders.own, tmp_path, {})
    weights = load_file(str(folder / "model.safetensors"))
    weights["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    ran = run_cli(capsys, "evaluate", folder, "--device", "cpu")
    assert_one_error_line(ran, "layer2.0.conv1.weight", "not finite", alone=True)
    ran = run_cli(capsys, "predict", folder, bad_input_folders.image, "--device", "cpu")
    assert_one_error_line(ran, "layer2.0.conv1.weight", "not finite", alone=True)
    assert ran.out == ""


def test_outputs_that_are_not_finite_are_refused_rather_than_printed(bad_input_folders, tmp_path, capsys):
    from safetensors.torch import load_file

    folder = _mutated(bad_input_folders.own, tmp_path, {})
    weights = load_file(str(folder / "model.safetensors"))
    weights["fc.weight"].fill_(3e38)  # finite weights whose logits overflow to infinity
    save_file(weights, str(folder / "model.safetensors"))
    ran = run_cli(capsys, "predict", folder, bad_input_folders.image, "--device", "cpu")
    assert_one_error_line(ran, "not finite", alone=True)
    assert ran.out == ""
    assert_one_error_line(run_cli(capsys, "evaluate", folder, "--device", "cpu"), "not finite", alone=True)


def test_the_hub_schema_reads_every_key_the_writer_writes():
    import dataclasses

    from reslab.models.weights.hub import RESLAB_KEYS
    from reslab.models.weights.hub_schema import ReslabSection

    assert {f.name for f in dataclasses.fields(ReslabSection)} == {*RESLAB_KEYS, "timm"}
