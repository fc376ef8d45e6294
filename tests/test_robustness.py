"""Corruption robustness and calibration of runs, end to end: ``reslab compare --robustness``
on a tiny digits study writes the report's section; ``reslab evaluate --corruptions`` and
``reslab calibrate`` on its runs; predict and serve use the stored temperature; the paper's
mCE and relative mCE against numbers worked by hand; the report's statements computed from
the numbers, with the noise margin; on a folder of colour images with a file that fails to
decode, each image keeps its own corruption, and the published corrupted sets' formats
(CIFAR-10-C's .npy files, ImageNet-C's folders) give the generated errors back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.cli import main
from reslab.config import from_dict
from reslab.data import load_splits
from reslab.data.corruptions import corrupt
from reslab.errors import ReslabError
from reslab.evaluate import robustness
from reslab.evaluate.calibration import resolve_checkpoint
from reslab.evaluate.robustness import (
    RobustnessSettings,
    choose_images,
    clean_pixels,
    robustness_of_checkpoint,
    robustness_table,
    summarise,
)
from reslab.evaluate.runner import load_for_evaluation
from reslab.inference.predict import load_images, load_model, probabilities
from reslab.inference.server import ModelService
from reslab.report.report import read_run, run_row
from reslab.report.robustness import robustness_section
from reslab.train.loop import train
from test_data_files import write_classes

from conftest import quick_config, run_cli

STUDY = """
name: tiny-robustness
recipe: demo-digits
models: [resnet8, plain8]
overrides: [train.epochs=1, train.batch_size=128]
robustness: {corruptions: [gaussian_noise, contrast], severities: "1,5", images: 60, baseline: plain8}
out: OUT
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two one-epoch digits runs (ResNet-8, Plain-8), their robustness measured and reported."""
    folder = tmp_path_factory.mktemp("robustness")
    spec = folder / "tiny.yaml"
    spec.write_text(STUDY.replace("OUT", str(folder / "study")))
    code = main(["compare", str(spec), "--no-progress"])
    assert code == 0
    return folder / "study"


def test_compare_robustness_writes_the_report_section(study):
    report = (study / "report" / "report.md").read_text()
    section = report[report.index("## Robustness and calibration"):]
    assert "| model | depth | clean error (%) | corruption error (%) | mCE vs plain8 (%)" in section
    assert "depth 8, residual vs plain: corruption error" in section
    for name in ("corruption_heatmap-digits-resnet8.png", "reliability-digits-plain8.png", "ece_vs_depth-digits.png"):
        assert f"figures/{name}" in section and (study / "report" / "figures" / name).is_file()
    html = (study / "report" / "report.html").read_text()
    assert "Robustness and calibration" in html and html.count("data:image/png;base64") >= 10
    data = json.loads((study / "report" / "report.json").read_text())["robustness"]
    baseline = next(net for net in data["nets"] if net["model"] == "plain8")
    assert baseline["mce_mean"] == pytest.approx(1.0)  # the baseline against itself
    for run in ("resnet8-digits-seed0", "plain8-digits-seed0"):
        for name in ("robustness.json", "robustness.md", "robustness.png", "reliability.png"):
            assert (study / run / name).is_file(), (run, name)
        stored = json.loads((study / run / "robustness.json").read_text())
        assert set(stored["errors"]) == {"gaussian_noise", "contrast"} and stored["images"] == 60


def test_a_rerun_reuses_the_stored_errors(study, monkeypatch):
    run = study / "resnet8-digits-seed0"
    before = json.loads((run / "robustness.json").read_text())
    monkeypatch.setattr(robustness, "corruption_errors", lambda *a, **k: pytest.fail("measured again"))
    settings = RobustnessSettings.from_dict({"corruptions": ["contrast"], "severities": [5], "images": 60})
    again = robustness_of_checkpoint(run, settings)
    assert again["errors"] == {"contrast": {"5": before["errors"]["contrast"]["5"]}}


def test_evaluate_with_corruptions_and_a_baseline(study, tmp_path, capsys):
    run, base = study / "resnet8-digits-seed0", study / "plain8-digits-seed0"
    out = tmp_path / "evaluation.json"
    code, printed, _ = run_cli(capsys, "evaluate", run, "--corruptions", "fog,jpeg", "--severities", "2,3",
                               "--corruption-images", "40", "--baseline", base, "--output", out)
    assert code == 0 and "mCE against plain8" in printed and "ECE (15 bins)" in printed
    evaluation = json.loads(out.read_text())
    result, baseline, summary = (evaluation["robustness"][k] for k in ("result", "baseline", "summary"))
    assert result["images"] == 40 and set(result["errors"]) == {"fog", "jpeg_compression"}
    ce = [sum(result["errors"][n].values()) / sum(baseline["errors"][n].values()) for n in result["errors"]]
    assert summary["mce"] == pytest.approx(sum(ce) / 2)
    assert 0.0 <= evaluation["test"]["ece"] <= 1.0 and evaluation["test"]["brier"] > 0
    assert (run / "robustness.png").is_file() and "fog" in (run / "robustness.md").read_text()


def test_corruption_flags_need_corruptions(study, capsys):
    code, _, err = run_cli(capsys, "evaluate", study / "resnet8-digits-seed0", "--severities", "1")
    assert code == 2 and "--severities goes with --corruptions" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "evaluate", study / "resnet8-digits-seed0", "--corruptions", "fgo")
    assert code == 2 and "did you mean fog" in err


def test_calibrate_then_predict_and_serve_use_the_temperature(study, tmp_path, capsys):
    run = study / "resnet8-digits-seed0"
    code, printed, _ = run_cli(capsys, "calibrate", run)
    assert code == 0 and "temperature T =" in printed
    record = json.loads((run / "calibration.json").read_text())
    assert record["after"]["val"]["nll"] <= record["before"]["val"]["nll"] + 1e-9  # T = 1 was a candidate
    assert (run / "calibration.png").is_file()

    model, meta = load_model(run)
    assert meta["temperature"] == pytest.approx(record["temperature"])
    test = load_splits(from_dict(meta["config"]).data).test
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(test.images[index, 0].numpy(), "L").save(paths[-1])
    loaded = load_images([str(p) for p in paths], meta)
    scaled = probabilities(model, meta, loaded.images)
    loose = tmp_path / "loose.pt"  # the same weights outside the run folder: no temperature
    shutil.copy(run / "checkpoints" / "best.pt", loose)
    plain_model, plain_meta = load_model(loose)
    assert "temperature" not in plain_meta
    raw = probabilities(plain_model, plain_meta, loaded.images)
    logits = raw.log()  # up to a constant per row
    assert torch.allclose(scaled, torch.softmax(logits / record["temperature"], 1), atol=1e-5)
    assert torch.equal(scaled.argmax(1), raw.argmax(1)) and not torch.allclose(scaled, raw, atol=1e-3)

    code, printed, err = run_cli(capsys, "predict", run, paths[0], "--format", "json")
    assert code == 0 and json.loads(printed)["temperature"] == pytest.approx(record["temperature"])
    assert "temperature" in err
    service = ModelService(model, meta)
    answer = service.predict(paths[0].read_bytes())
    assert service.info()["temperature"] == pytest.approx(record["temperature"])
    assert answer["predictions"][0]["probability"] == pytest.approx(float(scaled[0].max()), abs=1e-5)


def test_mce_and_relative_mce_by_hand():
    ours = {"model": "a", "images": 100, "clean": {"error": 0.1},
            "errors": {"fog": {"1": 0.2, "2": 0.3}, "snow": {"1": 0.4, "2": 0.5}},
            "ece": {"fog": {"1": 0.1, "2": 0.1}, "snow": {"1": 0.2, "2": 0.2}}}
    base = {"model": "b", "images": 100, "clean": {"error": 0.2},
            "errors": {"fog": {"1": 0.4, "2": 0.6}, "snow": {"1": 0.5, "2": 0.5}}}
    summary = summarise(ours, base)
    # CE: fog 0.5 / 1.0, snow 0.9 / 1.0; relative: fog (0.1 + 0.2) / (0.2 + 0.4), snow (0.3 + 0.4) / (0.3 + 0.3)
    assert summary["ce"] == pytest.approx({"fog": 0.5, "snow": 0.9})
    assert summary["mce"] == pytest.approx(0.7)
    assert summary["relative_ce"] == pytest.approx({"fog": 0.5, "snow": 7 / 6})
    assert summary["relative_mce"] == pytest.approx((0.5 + 7 / 6) / 2)
    assert summary["mean_corruption_error"] == pytest.approx(0.35)
    alone = summarise(ours)
    assert alone["mce"] is None and alone["mean_corruption_error"] == pytest.approx(0.35)
    with pytest.raises(ReslabError, match="same corruptions and images"):
        summarise(ours, {**base, "images": 50})


def test_the_subset_of_images_is_fixed_by_the_seed():
    first = choose_images(1000, 100, seed=0)
    assert torch.equal(first, choose_images(1000, 100, seed=0)) and len(first) == 100
    assert torch.equal(first, first.sort().values) and len(set(first.tolist())) == 100
    assert not torch.equal(first, choose_images(1000, 100, seed=1))
    assert torch.equal(choose_images(50, None, seed=0), torch.arange(50))
    assert torch.equal(choose_images(50, 80, seed=0), torch.arange(50))


@pytest.mark.parametrize("section, message", [({"imags": 10}, "unknown config key 'robustness.imags'"),
                                              ({"images": 0}, "at least 1"), ({"severities": "0-3"}, "1 to 5"),
                                              ({"corruptions": "rain"}, "unknown corruption"), ([1], "mapping")])
def test_bad_robustness_settings_are_one_clear_error(section, message):
    with pytest.raises(ReslabError, match=message):
        RobustnessSettings.from_dict(section)


def fake_net(study: Path, folder: Path, model: str, error: float, ece: float, corruption_error: float) -> Path:
    """A copy of the ResNet-8 run, renamed ``model``, with the test error, ECE and corruption
    errors given (and reliability bins that match the ECE)."""
    source = study / "resnet8-digits-seed0"
    run = folder / f"{model}-digits-seed0"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    samples = test["samples"]
    metrics["model"] = model
    test.update(accuracy=1 - error, error=error, ece=ece)
    confidence = min(0.999, 1 - error + ece)  # every image in one bin: ECE = |accuracy - confidence|
    bins = test["reliability"]["bins"]
    index = min(bins - 1, int(confidence * bins))
    test["reliability"] = {"bins": bins, "count": [samples if m == index else 0 for m in range(bins)],
                           "accuracy": [1 - error if m == index else None for m in range(bins)],
                           "confidence": [confidence if m == index else None for m in range(bins)]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    stored = json.loads((run / "robustness.json").read_text())
    stored.update(model=model, images=2000, baseline_model="plain8", clean={"error": error, "ece": ece})
    stored["errors"] = {name: {s: corruption_error for s in values} for name, values in stored["errors"].items()}
    (run / "robustness.json").write_text(json.dumps(stored))
    return run


def test_report_statements_follow_the_numbers_and_the_noise(study, tmp_path):
    nets = {"plain8": (0.10, 0.02, 0.40), "plain20": (0.11, 0.03, 0.41),  # within the noise of each other
            "resnet8": (0.08, 0.05, 0.30), "resnet20": (0.20, 0.25, 0.29)}  # ECE five times as large
    runs = [read_run(fake_net(study, tmp_path, model, *figures)) for model, figures in nets.items()]
    section = robustness_section(runs, [run_row(run) for run in runs], tmp_path / "figures")
    text = " ".join(section.findings)
    assert ("ECE against depth, residual nets (resnet8 5.00%, resnet20 25.00%): the deeper net is less "
            "calibrated") in text
    assert "ECE against depth, plain nets (plain8 2.00%, plain20 3.00%): no difference beyond the noise" in text
    assert "depth 8, residual vs plain: corruption error 30.00% vs 40.00% (lower for the residual net)" in text
    assert "mCE 75.00% vs 100.00%" in text
    table = section.blocks[1]
    row = dict(zip(table.headers, next(line for line in table.rows if line[0] == "resnet20")))
    assert row["ECE (%)"] == "25.00" and row["corruption error (%)"] == "29.00" and row["mCE vs plain8 (%)"] == "72.5"
    assert all(path.is_file() for path in section.figures)


# ---------------------------------------------------------------- files: decoding failures, published sets


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A one-epoch ResNet-8 on 32x32 colour photographs in class folders; its test split
    lists 11 files, the fourth of which (a/img002b.jpg) does not decode."""
    folder = tmp_path_factory.mktemp("folder-run")
    root = folder / "shapes"
    write_classes(root / "train", {"a": 8, "b": 8})
    write_classes(root / "test", {"a": 5, "b": 5}, start=50)
    (root / "test" / "a" / "img002b.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    config = quick_config(folder, "data.name=folder", f"data.root={root}", "data.image_size=32", "data.workers=0",
                          "data.val_size=0", "train.batch_size=4", "train.eval_batch_size=4", "train.epochs=1")
    return train(config, progress=False).run_dir


def test_a_file_that_fails_to_decode_shifts_no_other_images_corruption(folder_run):
    path, _ = resolve_checkpoint(folder_run)
    with load_for_evaluation(path, device="cpu") as loaded:
        loader = loaded.loader("test")
        images, targets, indices = clean_pixels(loader, loaded.meta["mean"], loaded.meta["std"],
                                                choose_images(len(loader.images), None, 0))
        assert any(p.endswith("img002b.jpg") for p in loader.bad_files)
        later = loader.images.path(4)  # img003.jpg, after the broken file
    assert indices.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]  # image 4 is still image 4 (not 3)
    assert targets.tolist() == [0] * 5 + [1] * 5
    assert later.endswith("img003.jpg")
    # the corruption the evaluation gives the image after the broken file is that of its own index
    wanted = RobustnessSettings.from_dict({"corruptions": ["gaussian_noise"], "severities": [3]})
    batches = robustness._batches(images, targets, indices, "gaussian_noise", 3, 0, lambda x: x, False, 4,
                                  robustness._Clock(torch.device("cpu")))
    served = torch.cat([batch for batch, _ in batches])
    assert torch.equal(served[3:4], corrupt(images[3:4], "gaussian_noise", 3, seed=wanted.seed, indices=[4]))
    assert not torch.equal(served[3:4], corrupt(images[3:4], "gaussian_noise", 3, seed=wanted.seed, indices=[3]))


def published_sets(run: Path, folder: Path, names: list[str]) -> tuple[Path, Path]:
    """The run's decodable test images corrupted by reslab, written as CIFAR-10-C (one .npy
    per corruption, severities 1..5 stacked, labels.npy) and as ImageNet-C (PNG files in
    <corruption>/<severity>/<class>/, named as the originals)."""
    path, _ = resolve_checkpoint(run)
    with load_for_evaluation(path, device="cpu") as loaded:
        loader = loaded.loader("test")
        images, targets, indices = clean_pixels(loader, loaded.meta["mean"], loaded.meta["std"],
                                                choose_images(len(loader.images), None, 0))
        files = [Path(loader.images.path(int(i))) for i in indices]
        classes = loaded.meta["classes"]
    cifar, imagenet = folder / "CIFAR-10-C", folder / "ImageNet-C"
    cifar.mkdir()
    for name in names:
        stack = []
        for severity in range(1, 6):
            corrupted = corrupt(images, name, severity, seed=0, indices=indices)
            stack.append(corrupted.permute(0, 2, 3, 1).numpy())
            for image, target, file in zip(corrupted, targets, files):
                out = imagenet / name / str(severity) / classes[int(target)] / f"{file.stem}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(out)
        np.save(cifar / f"{name}.npy", np.concatenate(stack))
    np.save(cifar / "labels.npy", np.tile(targets.numpy().astype(np.uint8), 5))
    return cifar, imagenet


def test_published_corrupted_sets_give_the_generated_errors(folder_run, tmp_path):
    names = ["gaussian_noise", "contrast"]
    cifar, imagenet = published_sets(folder_run, tmp_path, names)
    generated = robustness_of_checkpoint(folder_run, RobustnessSettings.from_dict({"corruptions": names}),
                                         device="cpu", write=False)
    assert generated["source"] == "generated" and generated["parameters"] == "CIFAR-10-C"
    for folder, layout in ((cifar, "CIFAR-C .npy files"), (imagenet, "ImageNet-C folders")):
        settings = RobustnessSettings.from_dict({"corruptions": names, "corruptions_from": str(folder)})
        read = robustness_of_checkpoint(folder_run, settings, device="cpu", write=False)
        assert read["errors"] == generated["errors"] and read["ece"] == generated["ece"], layout
        assert read["clean"] == generated["clean"] and read["images"] == 10
        assert read["source"].startswith(layout) and read["settings"]["source"] == str(folder.resolve())
        summary = summarise(read, baseline=generated)
        assert summary["mce"] == pytest.approx(1.0)  # the same report and mCE
        assert f"read from the published files ({layout}" in robustness_table(read, summary)


def test_published_sets_in_a_wrong_shape_are_one_clear_error(folder_run, tmp_path):
    def read(folder, corruptions=("gaussian_noise",)):
        settings = RobustnessSettings.from_dict({"corruptions": list(corruptions), "corruptions_from": str(folder)})
        return robustness_of_checkpoint(folder_run, settings, device="cpu", write=False)

    with pytest.raises(ReslabError, match="neither CIFAR-C files"):
        read(tmp_path)
    np.save(tmp_path / "gaussian_noise.npy", np.zeros((50, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.full(50, 7, np.uint8))
    with pytest.raises(ReslabError, match="holds no contrast"):
        read(tmp_path, ["contrast"])
    with pytest.raises(ReslabError, match="not those of the test split"):  # 10 images, as the split, other labels
        read(tmp_path)
    np.save(tmp_path / "gaussian_noise.npy", np.zeros((50, 32, 32), np.uint8))
    with pytest.raises(ReslabError, match="not a CIFAR-C file"):
        read(tmp_path)
