"""A folder of your own images: defaults sized to the data, early stopping, class weights,
classes too small for the split."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from reslab import ReslabError
from reslab.config import RunConfig, default_recipe, load
from reslab.data.files import ImageList
from reslab.data.folders import check_class_counts, read_folder
from reslab.data.sources import folder_defaults
from reslab.data.transforms import ImagePipeline, train_transform
from reslab.train.losses import WeightedCrossEntropy, balanced_weights, build_criterion
from reslab.train.setup import size_to_data

from conftest import quick_config


def write_folder(root, classes: dict[str, int], side: int = 28, seed: int = 0) -> None:
    """Class folders of grey PNGs, each class a different brightness with noise."""
    generator = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(40 + 60 * index + generator.normal(0, 20, (side, side)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")


ONE = SimpleNamespace(world_size=1, is_main=True)


# ---------------------------------------------------------------- sized to the data


@pytest.mark.parametrize("images, epochs, batch", [(2_250, 14, 128), (45_000, 10, 128), (300, 100, 16),
                                                   (60, 100, 8)])
def test_a_run_without_a_length_is_sized_to_its_training_split(images, epochs, batch):
    config = load("scratch")
    assert config.train.epochs is None and config.train.max_iters is None
    capped = size_to_data(config, images, ONE)
    assert (config.train.epochs, config.train.batch_size, capped) == (epochs, batch, batch != 128)
    assert config.schedule.warmup_iters == -(-images // batch)  # one epoch of warm-up
    assert images // config.train.batch_size >= 7  # an epoch has several steps


def test_a_run_with_a_length_is_left_as_it_is():
    for config in (load("scratch", ["train.epochs=3"]), load("demo-digits"), load("paper-cifar10-resnet20")):
        before = config.to_dict()
        assert size_to_data(config, 500, ONE) is False and config.to_dict() == before


def test_the_batch_is_not_capped_below_what_the_processes_share():
    config = load("scratch", ["train.accumulate=32"])
    size_to_data(config, 300, SimpleNamespace(world_size=2, is_main=True))
    assert config.train.batch_size == 128  # 16 would not split into 2 x 32 micro-batches


def test_no_recipe_means_scratch_or_finetune_with_weights():
    assert default_recipe([]) == default_recipe(["model.pretrained=null"]) == "scratch"
    assert default_recipe(["data.name=folder", "model.pretrained=resnet18"]) == "finetune"
    finetune = load("finetune")
    assert finetune.optim.backbone_lr < finetune.optim.lr and finetune.data.normalization == "auto"
    assert finetune.train.epochs is None and finetune.model.unfreeze_epoch == 2


def test_a_folder_of_small_images_gets_the_cifar_treatment(tmp_path):
    write_folder(tmp_path / "small", {"a": 3, "b": 3}, side=28)
    assert folder_defaults(tmp_path / "small") == {"image_size": 32, "center_crop": False,
                                                   "random_resized_crop": 0.0, "crop_padding": 4, "hflip": True}
    write_folder(tmp_path / "photos", {"a": 3, "b": 3}, side=300)
    large = folder_defaults(tmp_path / "photos")
    assert large["image_size"] == 224 and large["random_resized_crop"] == 0.08 and large["center_crop"]
    write_folder(tmp_path / "middle", {"a": 3}, side=100)
    assert folder_defaults(tmp_path / "middle")["image_size"] == 96
    assert folder_defaults(tmp_path / "missing")["image_size"] == 224  # the reader will say what is wrong


def test_padding_and_random_crops_apply_to_files():
    transform = train_transform(ImagePipeline(image_size=32, center_crop=False, random_resized_crop=0.0,
                                              crop_padding=4, hflip=False), [0.5] * 3)
    image = torch.full((3, 28, 28), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    crops = [transform(image) for _ in range(20)]
    assert all(c.shape == (3, 32, 32) for c in crops)
    assert any((c == 0).any() for c in crops)  # the zero padding shows in some crops
    assert len({c.sum().item() for c in crops}) > 1  # at different places


def test_a_bare_folder_run_says_where_and_how_it_trains(tmp_path, monkeypatch, capsys):
    import reslab.train.setup as setup
    from reslab.cli import main

    monkeypatch.setattr(setup, "SIZED_IMAGES", 500)  # 10 epochs here, not 100: a test's length
    write_folder(tmp_path / "data" / "train", {"light": 40, "dark": 40})
    write_folder(tmp_path / "data" / "test", {"light": 8, "dark": 8}, seed=1)
    assert main(["train", "--data", "folder", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
                 "--name", "mine", "--model", "resnet8", "--no-progress"]) == 0
    first = capsys.readouterr().err.splitlines()[:3]
    assert "reslab: sized to 72 training images: 10 epochs, batch 8 (capped), 9 warm-up steps" in first
    start = next(line for line in first if line.startswith("reslab: training "))
    assert str(tmp_path / "runs" / "mine") in start and "device cpu, precision fp32" in start
    assert "72 train, 8 val, 16 test images" in start
    saved = load(str(tmp_path / "runs" / "mine" / "config.yaml"))
    assert (saved.train.epochs, saved.train.batch_size, saved.data.image_size) == (10, 8, 32)
    metrics = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 1.0  # two brightness levels: learnable


# ---------------------------------------------------------------- early stopping


def test_patience_stops_when_validation_stops_improving(tmp_path, monkeypatch):
    import reslab.train.loop as loop

    real = loop.validate_epoch
    scores = iter([0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.9, 0.9])  # best at epoch 2, then no better for 3

    def scripted(*args, **kwargs):
        weights, _ = real(*args, **kwargs)
        return weights, (next(scores),)

    monkeypatch.setattr(loop, "validate_epoch", scripted)
    result = loop.train(quick_config(tmp_path, "train.epochs=8", "train.patience=3"), progress=False)
    assert (result.metrics["epochs"], result.metrics["best_epoch"], result.metrics["stopped_early"]) == (5, 2, True)
    assert len(result.history) == 5


def test_patience_needs_a_validation_split(tmp_path):
    from reslab.train.loop import train

    with pytest.raises(ReslabError, match="train.patience stops on the validation score"):
        train(quick_config(tmp_path, "train.patience=2", "data.val_size=0"), progress=False)


# ---------------------------------------------------------------- class weights


def test_balanced_weights_average_one_over_the_images():
    counts = [900, 90, 10, 0]
    weights = balanced_weights(counts)
    assert weights[3] == 0 and torch.allclose(weights[:3], torch.tensor([1000 / 2700, 1000 / 270, 1000 / 30]))
    assert (weights * torch.tensor(counts)).sum() / sum(counts) == pytest.approx(1.0)


def test_the_weighted_loss_does_not_depend_on_how_a_batch_is_split():
    """PyTorch's weighted mean divides by the batch's summed weights; this one by the count."""
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(64, 4, generator=generator), torch.randint(0, 4, (64,), generator=generator)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ours = WeightedCrossEntropy(weights, label_smoothing=0.1)
    whole, halves = ours(logits, targets), (ours(logits[:32], targets[:32]) + ours(logits[32:], targets[32:])) / 2
    assert whole.item() == pytest.approx(halves.item(), rel=1e-6)
    torchs = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=0.1)
    torch_halves = (torchs(logits[:32], targets[:32]) + torchs(logits[32:], targets[32:])) / 2
    assert abs(torchs(logits, targets).item() - torch_halves.item()) > 1e-4
    soft = torch.nn.functional.one_hot(targets, 4).float()  # mixup's soft targets, here one-hot
    plain = WeightedCrossEntropy(weights)
    assert plain(logits, soft).item() == pytest.approx(plain(logits, targets).item(), rel=1e-6)


def test_class_weights_train_single_label_and_are_refused_for_multi_label(tmp_path):
    from reslab.train.loop import train

    result = train(quick_config(tmp_path, "train.epochs=1", "train.class_weights=balanced"), progress=False)
    assert result.metrics["test"]["accuracy"] > 0
    with pytest.raises(ReslabError, match="class_weights=balanced is for single-label"):
        build_criterion("bce", True, 0.0, torch.ones(3))
    assert RunConfig().train.class_weights == "none"


# ---------------------------------------------------------------- classes too small for the split


def _images(targets) -> ImageList:
    return ImageList.of("/data", [f"{i}.png" for i in range(len(targets))], targets)


def test_a_class_left_without_training_images_is_one_clear_error():
    with pytest.raises(ReslabError, match=r"class 'rare' has 1 image\(s\), too few for the split: none is left"):
        check_class_counts(["common", "rare"], [20, 1], _images([0] * 18), {"test": _images([0, 1])})


def test_a_held_out_split_without_a_class_is_one_warning_line(caplog):
    with caplog.at_level(logging.WARNING, logger="reslab"):
        check_class_counts(["common", "rare"], [20, 2], _images([0] * 17 + [1]), {"validation": _images([0, 1]),
                                                                                "test": _images([0, 0])})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["the test split has no image of class 'rare' (too few images for the split); its test "
                     "figures for it are missing"]


def test_a_folder_with_a_single_image_class_says_so(tmp_path, caplog):
    write_folder(tmp_path / "data", {"common": 30, "rare": 1})
    with caplog.at_level(logging.WARNING, logger="reslab"):
        try:
            read_folder(tmp_path / "data", val_size=0.1, test_size=0.2)
        except ReslabError as error:
            assert "class 'rare' has 1 image(s), too few for the split" in str(error)
        else:
            assert any("no image of class 'rare'" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- the README's section, as written


def readme_commands() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Your own images", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


@pytest.mark.slow
def test_every_command_of_the_readme_section_runs(tmp_path, monkeypatch, capsys):
    """The commands as printed, in a folder holding ``photos/``; only the download of
    ImageNet weights is replaced by a local torchvision file, and runs are one epoch long."""
    import shlex

    import torchvision

    import reslab.train.setup as setup
    from reslab.cli import main

    commands = readme_commands()
    assert commands[0] == "reslab train --data folder --data-root photos --name mine" and len(commands) == 6
    write_folder(tmp_path / "photos", {"cat": 12, "dog": 12})
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "resnet18.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(setup, "SIZED_EPOCHS", (1, 1))
    for command in commands:
        argv = shlex.split(command.replace("model.pretrained=resnet18", "model.pretrained=resnet18.pth"))
        assert argv[0] == "reslab" and main(argv[1:]) == 0, (command, capsys.readouterr().err[-2000:])
    assert (tmp_path / "runs" / "mine" / "report" / "report.html").is_file()
    balanced = load(str(tmp_path / "runs" / "balanced" / "config.yaml"))
    assert (balanced.train.class_weights, balanced.train.patience) == ("balanced", 5)
    tuned = load(str(tmp_path / "runs" / "tuned" / "config.yaml"))
    assert tuned.model.freeze == "backbone" and tuned.data.image_size == 224 and tuned.data.normalization == "auto"


def test_a_study_of_sized_runs_reuses_and_resumes_them(tmp_path, monkeypatch):
    """The study's config leaves the length empty; its runs' config.yaml hold the sizes chosen."""
    import reslab.experiments.study as study_module
    import reslab.train.setup as setup
    from reslab.experiments.study import run_study, study_from_dict

    monkeypatch.setattr(setup, "SIZED_EPOCHS", (2, 2))
    study = {"recipe": "scratch", "models": ["resnet8"], "out": str(tmp_path / "study"),
             "overrides": ["data.name=digits", "output.plots=false"]}
    run_study(study_from_dict(study), progress=False)
    run_dir = next((tmp_path / "study").glob("resnet8-*"))
    assert load(str(run_dir / "config.yaml")).train.epochs == 2
    calls = []
    real = study_module.train
    monkeypatch.setattr(study_module, "train", lambda *a, **k: calls.append(k.get("resume")) or real(*a, **k))
    run_study(study_from_dict(study), progress=False)
    assert calls == []  # finished: reused, not refused as another recipe
    (run_dir / "metrics.json").unlink()  # as if stopped after its last epoch's checkpoint
    run_study(study_from_dict(study), progress=False)
    assert calls == [run_dir] and (run_dir / "metrics.json").is_file()
