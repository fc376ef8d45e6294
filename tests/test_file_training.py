"""File datasets through the training loop and the command line: an image folder, and
MS COCO as multi-label classification, with a broken image in each."""

import json
import os
import subprocess
import sys

import pytest

from reslab.checkpoint import load_checkpoint
from reslab.train.loop import train
from test_data_files import write_classes, write_coco

from conftest import quick_config


def _file_config(tmp_path, data_name, root, *overrides):
    return quick_config(tmp_path, f"data.name={data_name}", f"data.root={root}", "data.image_size=32",
                        "data.workers=0", "train.batch_size=4", "train.eval_batch_size=8", "train.epochs=2", *overrides)


def test_folder_dataset_trains_and_skips_a_broken_image(tmp_path):
    root = tmp_path / "flowers"
    write_classes(root / "train", {"daisy": 12, "tulip": 12})
    write_classes(root / "test", {"daisy": 4, "tulip": 4}, start=100)
    (root / "train" / "daisy" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = train(_file_config(tmp_path, "folder", root, "data.val_size=4"), progress=False)
    assert result.metrics["task"] == "single-label"
    assert result.metrics["test"]["samples"] == 8
    assert [row["class"] for row in result.metrics["test"]["per_class"]] == ["daisy", "tulip"]
    assert result.metrics["bad_files"] == 1
    assert "broken.jpg" in (result.run_dir / "bad_files.txt").read_text()
    dataset = json.loads((result.run_dir / "dataset.json").read_text())
    assert dataset["loader"] == "files" and dataset["classes"] == ["daisy", "tulip"]


@pytest.mark.parametrize("loss", ["bce", "asymmetric"])
def test_coco_multilabel_run_end_to_end(tmp_path, loss):
    train_images = {f"t{i}.jpg": [[1], [3], [1, 18], [3, 18], [1, 3]][i % 5] for i in range(20)}
    write_coco(tmp_path / "coco", train=train_images, val={"v1.jpg": [1], "v2.jpg": [3, 18], "v3.jpg": [18, 1]})
    config = _file_config(tmp_path, "coco", tmp_path / "coco", "data.val_size=4", f"train.loss={loss}",
                          "augment.mixup=0.2", "optim.lr=0.05")
    result = train(config, progress=False)
    test = result.metrics["test"]
    assert result.metrics["task"] == "multi-label" and test["samples"] == 3
    for key in ("map", "cp", "cr", "cf1", "op", "or", "of1", "cf1_top3", "subset_accuracy", "hamming_loss"):
        assert 0.0 <= test[key] <= 1.0, key
    assert [row["class"] for row in test["per_class"]] == ["person", "car", "dog"]
    meta = load_checkpoint(result.run_dir)["meta"]
    assert meta["task"] == "multi-label" and meta["threshold"] == 0.5
    assert "val_map" in (result.run_dir / "history.csv").read_text().splitlines()[0]
    assert test["macro_precision"] == test["cp"] and test["error"] == pytest.approx(1 - test["subset_accuracy"])

    from reslab.report.report import build_report

    report = build_report([result.run_dir], tmp_path / "report", title="coco")
    assert (report.out / "report.html").stat().st_size > 1000


def test_cross_entropy_is_refused_for_multilabel_data(tmp_path):
    from reslab import ReslabError

    write_coco(tmp_path / "coco")
    with pytest.raises(ReslabError, match="cannot train multi-label"):
        train(_file_config(tmp_path, "coco", tmp_path / "coco", "train.loss=cross_entropy", "data.val_size=0"),
              progress=False)


def test_evaluate_cli_on_a_folder_run(tmp_path):
    root = tmp_path / "shapes"
    write_classes(root / "train", {"a": 8, "b": 8})
    write_classes(root / "test", {"a": 3, "b": 3}, start=50)
    result = train(_file_config(tmp_path, "folder", root, "data.val_size=0", "train.epochs=1"), progress=False)
    process = subprocess.run([sys.executable, "-m", "reslab", "evaluate", str(result.run_dir), "--output",
                              str(tmp_path / "e.json")], capture_output=True, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert process.returncode == 0, process.stderr
    evaluated = json.loads((tmp_path / "e.json").read_text())["test"]
    assert evaluated["confusion_matrix"] == result.metrics["test"]["confusion_matrix"]
