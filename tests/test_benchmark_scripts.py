"""The real-file benchmarks of issue 21 at a tiny size, on Debian's Fashion-MNIST: the PNG
class folders and the COCO mosaics they train on are what the scripts say they are, and
each script writes the figures and checks it promises (the full-size runs take minutes)."""

import importlib.util
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.config import load
from reslab.data.coco import read_coco
from reslab.data.folders import read_folder
from reslab.data.idx import read_idx_dataset
from reslab.errors import ReslabError

pytestmark = pytest.mark.real_data

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
PER_CLASS = 20
MOSAICS = {"train": 40, "val": 20}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def benchmark(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the scripts import one another by these names
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fashion_mnist():
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST is not in {FASHION_MNIST}: run `make real-data` (apt-get install "
                    "dataset-fashion-mnist)")
    train, test, _, _ = read_idx_dataset(FASHION_MNIST, "fashion-mnist", download=False)
    return {"train": (train.images[:, 0].numpy(), train.labels.numpy()),
            "test": (test.images[:, 0].numpy(), test.labels.numpy())}


@pytest.fixture(scope="module")
def written(tmp_path_factory, fashion_mnist):
    """The first 20 images of each class as PNG folders, and 40 + 20 mosaics, written once."""
    folders = benchmark("fashion_mnist_folders")
    base = tmp_path_factory.mktemp("fashion-mnist-files")
    png = folders.write_folders(base / "png", limit=PER_CLASS, root=FASHION_MNIST)
    coco = folders.write_mosaics(base / "coco", MOSAICS["train"], MOSAICS["val"], seed=0, root=FASHION_MNIST)
    return {"png": base / "png", "coco": base / "coco", "png_result": png, "coco_result": coco}


def assert_machine(machine: dict):
    assert all(isinstance(machine[flag], bool) for flag in CPU_FLAGS), machine


# ---------------------------------------------------------------- fashion_mnist_folders.py


def test_the_png_folders_hold_the_first_images_of_each_class_with_the_idx_pixels(written, fashion_mnist):
    for split in ("train", "test"):
        folder = written["png"] / split
        assert sorted(p.name for p in folder.iterdir()) == sorted(CLASSES)
        images, labels = fashion_mnist[split]
        for label, name in enumerate(CLASSES):
            files = sorted((folder / name).iterdir())
            expected = np.flatnonzero(labels == label)[:PER_CLASS]
            assert [int(f.stem) for f in files] == expected.tolist()
            for file in files[:: PER_CLASS // 2]:
                with Image.open(file) as image:
                    assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
                    assert np.array_equal(np.asarray(image), images[int(file.stem)])  # lossless
    assert written["png_result"]["counts"]["train"] == dict.fromkeys(CLASSES, PER_CLASS)


def test_the_folders_read_as_reslab_reads_a_folder_dataset(written):
    splits = read_folder(written["png"], val_size=30, split_seed=0)
    assert splits.classes == sorted(CLASSES)
    assert splits.sizes() == {"train": 10 * PER_CLASS - 30, "val": 30, "test": 10 * PER_CLASS}
    assert np.bincount(splits.test.targets).tolist() == [PER_CLASS] * 10
    assert splits.problems == []


def test_writing_again_leaves_a_complete_export_and_refuses_another_into_the_same_folder(written):
    folders = benchmark("fashion_mnist_folders")
    some_file = next((written["png"] / "train" / "Bag").iterdir())
    before = some_file.stat().st_mtime_ns
    again = folders.write_folders(written["png"], limit=PER_CLASS, root=FASHION_MNIST)
    assert again["skipped"] and some_file.stat().st_mtime_ns == before
    with pytest.raises(ReslabError, match="holds another"):
        folders.write_folders(written["png"], limit=PER_CLASS + 1, root=FASHION_MNIST)
    assert folders.write_mosaics(written["coco"], MOSAICS["train"], MOSAICS["val"], seed=0,
                                 root=FASHION_MNIST)["skipped"]


def test_the_mosaics_are_coco_files_whose_tiles_are_the_annotated_images(written, fashion_mnist):
    folders = benchmark("fashion_mnist_folders")
    root = written["coco"]
    # the draws the script made: training mosaics first, then the validation ones, from one generator
    rng = np.random.default_rng(0)
    draws = {"train": folders.mosaic_draws(MOSAICS["train"], 60_000, rng),
             "val": folders.mosaic_draws(MOSAICS["val"], 10_000, rng)}
    for split, source in (("train", "train"), ("val", "test")):
        document = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        assert [c["name"] for c in document["categories"]] == CLASSES
        assert len(document["images"]) == MOSAICS[split] and len(document["annotations"]) == 4 * MOSAICS[split]
        images, labels = fashion_mnist[source]
        entry = document["images"][0]
        with Image.open(root / f"{split}2017" / entry["file_name"]) as mosaic:
            assert (mosaic.format, mosaic.size) == ("JPEG", (56, 56))
            pixels = np.asarray(mosaic.convert("L")).astype(np.float64)
        tiles = [a for a in document["annotations"] if a["image_id"] == entry["id"]]
        for tile, index in zip(tiles, draws[split][0]):
            x, y, width, height = tile["bbox"]
            assert tile["category_id"] == labels[index] + 1
            error = np.abs(pixels[y : y + height, x : x + width] - images[index]).mean()
            assert error < 6, (split, tile, error)  # JPEG quality 90: a few grey levels
    splits = read_coco(root, 2017, val_size=0.1)
    assert splits.task == "multi-label" and splits.classes == CLASSES
    assert splits.sizes() == {"train": 36, "val": 4, "test": MOSAICS["val"]}
    per_image = splits.test.targets.sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 4


# ---------------------------------------------------------------- the benchmarks


@pytest.mark.slow
def test_folder_vs_memory_trains_both_paths_alike_and_judges_the_folder_against_the_seeds(written, tmp_path):
    script = benchmark("folder_vs_memory")
    out = tmp_path / "folder_vs_memory.json"
    result = script.main(["--folders", str(written["png"]), "--limit", str(PER_CLASS), "--train-size", "100",
                          "--val-size", "50", "--epochs", "1", "--seeds", "0,1", "--folder-seeds", "0",
                          "--json", str(out), "model.name=resnet8", "train.ema=null", "train.tta=false",
                          "train.batch_size=25"])
    saved = json.loads(out.read_text())
    assert saved["verdict"] == result["verdict"]
    assert_machine(saved["machine"])
    runs = saved["runs"]
    assert [(r["path"], r["seed"]) for r in runs] == [("memory", 0), ("memory", 1), ("folder", 0)]
    assert all(0 <= r["test_accuracy"] <= 1 and r["images_per_second"] > 0 and r["wall_seconds"] > 0 for r in runs)
    # comparable: the same resolved settings and split sizes but the test set (20 per class here)
    assert saved["settings_differ"] == {}
    assert [r["sizes"] for r in runs] == [{"train": 100, "val": 50, "test": 10_000}] * 2 + [
        {"train": 100, "val": 50, "test": 10 * PER_CLASS}]
    folder = runs[2]
    assert folder["loader"] == "files" and folder["bad_files"] == 0
    assert {k: folder["pipeline"][k] for k in ("image_size", "crop_padding", "random_resized_crop", "hflip",
                                                "center_crop")} == {"image_size": 28, "crop_padding": 2,
                                                                    "random_resized_crop": 0.0, "hflip": True,
                                                                    "center_crop": False}
    # the verdict is the band it states
    memory = [r["test_accuracy"] for r in runs[:2]]
    mean, std = statistics.fmean(memory), statistics.stdev(memory)
    verdict = saved["verdict"]
    assert verdict["band"] == pytest.approx([mean - 2 * std, mean + 2 * std])
    assert verdict["within_band"] == (mean - 2 * std <= folder["test_accuracy"] <= mean + 2 * std)
    # each command is one `reslab train` line whose overrides load
    for run, command in zip(runs, saved["commands"]):
        words = shlex.split(command)
        assert words[:4] == ["reslab", "train", "--config", "fast-fashion-mnist-resnet20"]
        config = load(words[3], [w for w in words[4:] if "=" in w])
        assert config.data.name == ("folder" if run["path"] == "folder" else "fashion-mnist")
        assert config.train.seed == run["seed"]


@pytest.mark.slow
def test_folder_throughput_times_both_loops_and_their_batches_agree(written, tmp_path):
    script = benchmark("folder_throughput")
    out = tmp_path / "throughput.json"
    script.main(["--folders", str(written["png"]), "--limit", str(PER_CLASS), "--model", "resnet8",
                 "--batch-size", "16", "--workers", "1", "--steps", "2", "--warmup", "1", "--repeats", "2",
                 "--json", str(out)])
    saved = json.loads(out.read_text())
    assert_machine(saved["machine"])
    assert saved["images"] == 10 * PER_CLASS and saved["workers"] == 1
    for kind in ("loading", "training"):
        rates = {side: saved[kind][side]["images_per_second"] for side in ("reslab", "reference")}
        assert all(rate > 0 for rate in rates.values())
        assert all(len(saved[kind][side]["passes"]) == 2 for side in rates)
        assert saved[f"{kind}_ratio"] == pytest.approx(rates["reslab"] / rates["reference"])
    assert saved["goal_met"] == (saved["training_ratio"] >= 1.5)
    assert saved["reslab_precision"] in ("fp32", "bf16") and saved["reference_precision"] == "fp32"
    assert saved["reslab_pipeline"]["crop_padding"] == 2 and saved["reslab_pipeline"]["random_resized_crop"] == 0

    # Both loops see the same data: same shapes, and the same normalization of the same pixels.
    class Args:
        image_size, crop_padding, batch_size, workers = 28, 2, 100, 0
    bundle = script.reslab_loader(written["png"], Args)
    reslab_batch, reslab_labels = next(iter(bundle.train))
    reference_batch, reference_labels = next(iter(script.reference_loader(written["png"], Args)))
    bundle.close()
    assert reslab_batch.shape == reference_batch.shape == (100, 3, 28, 28)
    assert reslab_batch.dtype == reference_batch.dtype == torch.float32
    assert reslab_batch.min() >= -1 and reslab_batch.max() <= 1 and reference_batch.min() >= -1
    assert reslab_batch.mean().item() == pytest.approx(reference_batch.mean().item(), abs=0.1)


@pytest.mark.slow
def test_coco_mosaics_reports_map_that_scikit_learn_reproduces_on_the_same_outputs(written, tmp_path):
    script = benchmark("coco_mosaics")
    out = tmp_path / "coco.json"
    script.main(["--mosaics", str(written["coco"]), "--train-mosaics", str(MOSAICS["train"]), "--val-mosaics",
                 str(MOSAICS["val"]), "--epochs", "1", "--json", str(out), "model.name=resnet8", "train.ema=null",
                 "train.batch_size=12"])
    saved = json.loads(out.read_text())
    assert_machine(saved["machine"])
    assert saved["mosaic_export"] == written["coco_result"]["request"]  # the written set, reused
    assert saved["test"]["samples"] == MOSAICS["val"] and saved["targets_match_annotations"]
    for key in ("map", "cp", "cr", "cf1", "op", "or", "of1", "subset_accuracy"):
        assert 0 <= saved["test"][key] <= 1
        assert abs(saved["sklearn"][key] - saved["rerun"][key]) <= 1e-6, key
        assert abs(saved["metrics_json_minus_rerun"][key]) <= 1e-6, key  # re-evaluation reproduces the run
    assert saved["sklearn"]["map_classes"] == saved["test"]["map_classes"]
    assert set(saved["per_class_ap"]) == set(CLASSES)
    assert "data.name=coco" in saved["command"] and saved["pipeline"]["image_size"] == 56


# ---------------------------------------------------------------- class_weights.py


@pytest.mark.slow
def test_class_weights_trains_both_ways_on_an_imbalanced_copy_and_reports_every_class(written, tmp_path):
    script = benchmark("class_weights")
    report = script.main(["--folders", str(written["png"]), "--common", "20", "--rare", "4", "--epochs", "1",
                          "--json", str(tmp_path / "class_weights.json"), "model.name=resnet8", "data.workers=0",
                          "train.batch_size=16"])
    assert report["counts"] == {name: 20 if i < 5 else 4 for i, name in enumerate(sorted(CLASSES))}
    for weights in ("none", "balanced"):
        run = report["runs"][weights]
        assert set(run["per_class"]) == set(CLASSES) and 0 <= run["accuracy"] <= 1
        assert f"train.class_weights={weights}" in report["commands"][weights]
    assert set(report["rare_mean_recall"]) == {"none", "balanced"}
    assert json.loads((tmp_path / "class_weights.json").read_text())["counts"] == report["counts"]
    assert_machine(report["cpu"])
