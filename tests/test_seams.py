"""Where reslab's behaviour met what the README promises (issue 12): resume with another
length, defaults of the model names, a line per epoch without a terminal, losses and rates
under the global-batch rule, settings that would be silently ignored, re-evaluation in the
run's precision, elastic restarts and the global batch norm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

import reslab.train.loop as loop
from reslab import ReslabError, create_model
from reslab.config import load
from reslab.evaluate.runner import evaluate_checkpoint
from reslab.models import describe_model
from reslab.models.summary import count_parameters
from reslab.train.loop import train
from reslab.train.losses import build_criterion
from reslab.train.run_folder import load_run_config

from conftest import quick_config


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "reslab", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


# ---------------------------------------------------------------- 1. resume with another length


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_schedule_planned_over_the_run_refuses_a_longer_resume(tmp_path, schedule):
    first = train(quick_config(tmp_path, "train.epochs=1", f"schedule.name={schedule}", "schedule.warmup=none"),
                  progress=False)
    (first.run_dir / "metrics.json").unlink()
    with pytest.raises(ReslabError, match=f"schedule.name={schedule}.*train.epochs cannot change"):
        train(load_run_config(first.run_dir, ["train.epochs=3"]), resume=first.run_dir, progress=False)
    assert "epochs: 1" in (first.run_dir / "config.yaml").read_text()  # nothing saved by the refusal


def test_a_step_schedule_continues_exactly_when_resumed_longer(tmp_path):
    steps = ("schedule.name=multistep", "schedule.unit=epoch", "schedule.milestones=[1]")
    whole = train(quick_config(tmp_path, "train.epochs=2", "output.name=whole", *steps), progress=False)
    first = train(quick_config(tmp_path, "train.epochs=1", "output.name=part", *steps), progress=False)
    (first.run_dir / "metrics.json").unlink()
    longer = train(load_run_config(first.run_dir, ["train.epochs=2"]), resume=first.run_dir, progress=False)
    assert [row["lr"] for row in longer.history] == pytest.approx([row["lr"] for row in whole.history])


# ---------------------------------------------------------------- 2, 3. model names


def test_imagenet_names_default_to_1000_classes_and_cifar_names_to_10():
    assert count_parameters(create_model("resnet50"))["parameters"] == 25_557_032
    assert create_model("resnet20").fc.out_features == 10


@pytest.mark.parametrize("name", ["resnet26", "resnet200"])
def test_names_that_mean_an_imagenet_net_in_timm_are_not_quietly_cifar_nets(name):
    with pytest.raises(ReslabError, match=f"timm's ImageNet.*cifar_{name}"):
        create_model(name)
    depth = int(name.removeprefix("resnet"))
    assert describe_model(f"cifar_{name}") == f"CIFAR ResNet, depth {depth} = 6*{(depth - 2) // 6}+2"
    assert create_model(f"cifar_{name}").fc.out_features == 10


def test_summary_says_which_family_a_name_builds():
    process = cli("summary", "cifar_resnet26", "--depth", "1")
    assert process.returncode == 0, process.stderr
    assert "cifar_resnet26: CIFAR ResNet, depth 26" in process.stdout.splitlines()[0]


@pytest.mark.parametrize("name, message", [
    ("resnet600002", "more than 4 digits"), ("resnet" + "9" * 5000, "at most 64 characters"),
    ("resnet\N{FULLWIDTH DIGIT TWO}\N{FULLWIDTH DIGIT ZERO}", "unknown model"),
])
def test_model_names_that_ask_too_much_or_are_not_ascii_are_refused(name, message):
    with pytest.raises(ReslabError, match=message):
        create_model(name)


def test_a_plain_net_refuses_a_shortcut_option():
    with pytest.raises(ReslabError, match="plain20 has no shortcuts"):
        create_model("plain20", shortcut="B")


# ---------------------------------------------------------------- 4. a line per epoch without a terminal


def test_without_a_terminal_every_epoch_is_a_log_line(tmp_path):
    process = cli("train", "--config", "demo-digits", "--model", "resnet8", "--epochs", "2", "--out",
                  str(tmp_path), "--name", "logged")
    assert process.returncode == 0, process.stderr
    lines = [line for line in process.stderr.splitlines() if line.startswith("reslab: epoch ")]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"], process.stderr
    assert "val loss" in lines[0] and "img/s" in lines[0]


# ---------------------------------------------------------------- 6. the global-batch rule


def test_the_asymmetric_loss_is_a_mean_so_a_split_batch_gives_the_same_gradient_scale():
    criterion = build_criterion("asymmetric", multi_label=True)
    logits = torch.randn(8, 5)
    targets = (torch.rand(8, 5) > 0.7).float()
    halves = (criterion(logits[:4], targets[:4]) + criterion(logits[4:], targets[4:])) / 2
    assert criterion(logits, targets) == pytest.approx(halves.item(), rel=1e-5)


def test_the_backbone_rate_scales_with_the_reference_batch_like_the_head_rate():
    from reslab.train.setup import build_optimization

    config = load("demo-digits", ["optim.lr=0.1", "optim.backbone_lr=0.01", "optim.lr_reference_batch=64",
                                  "train.batch_size=128", "train.epochs=1"])
    optimizer, _, _ = build_optimization(config, create_model("resnet8", in_channels=1), torch.device("cpu"), 10)
    rates = {group["name"]: group["initial_lr"] for group in optimizer.param_groups}
    assert rates["head"] == pytest.approx(0.2) and rates["backbone"] == pytest.approx(0.02)


# ---------------------------------------------------------------- 9. weight decay on norms and biases


@pytest.mark.parametrize("decay", [True, False])
def test_decay_of_norms_and_biases_is_a_config_key(decay):
    from reslab.train.setup import build_optimization

    config = load("demo-digits", [f"optim.decay_norm_and_bias={str(decay).lower()}", "train.epochs=1"])
    optimizer, _, _ = build_optimization(config, create_model("resnet8", in_channels=1), torch.device("cpu"), 10)
    decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert ("backbone_no_decay" not in decays) == decay
    assert decays["backbone"] == config.optim.weight_decay


# ---------------------------------------------------------------- 10. settings that would be ignored


def test_settings_that_would_be_silently_ignored_are_refused(tmp_path):
    with pytest.raises(ReslabError, match="warms up by itself"):
        load("demo-digits", ["schedule.name=onecycle", "schedule.warmup=linear", "schedule.warmup_iters=10"])
    with pytest.raises(ReslabError, match="label_smoothing is for cross-entropy"):
        build_criterion("bce", multi_label=True, label_smoothing=0.1)
    first = cli("train", "--config", "demo-digits", "--model", "resnet8", "--epochs", "1", "--out", str(tmp_path),
                "--name", "once")
    assert first.returncode == 0, first.stderr
    again = cli("train", "--resume", str(tmp_path / "once"), "--config", "demo-digits")
    assert again.returncode == 2 and "--config cannot be combined with --resume" in again.stderr


# ---------------------------------------------------------------- 8. re-evaluation


def test_reevaluation_reproduces_the_recorded_figures_in_the_runs_precision(tmp_path):
    result = train(quick_config(tmp_path, "train.precision=bf16", "train.epochs=1"), progress=False)
    again = evaluate_checkpoint(result.run_dir, device="cpu")
    assert again["precision"] == "bf16"
    assert again["test"]["loss"] == result.metrics["test"]["loss"]
    assert again["test"]["confusion_matrix"] == result.metrics["test"]["confusion_matrix"]


# ---------------------------------------------------------------- 11. the interrupt message


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGUSR1])  # SIGUSR1: SLURM's --signal=USR1@90
def test_a_stop_at_an_epoch_boundary_names_the_epoch_it_finished(tmp_path, monkeypatch, number):
    real = loop.validate_epoch

    def stop_after_validation(*args, **kwargs):
        answer = real(*args, **kwargs)
        os.kill(os.getpid(), number)  # arrives between the epoch's last step and the next
        return answer

    monkeypatch.setattr(loop, "validate_epoch", stop_after_validation)
    with pytest.raises(ReslabError, match=rf"stopped by {signal.Signals(number).name} at step \d+ \(epoch 1\); its "
                                          "state is saved"):
        train(quick_config(tmp_path, "train.epochs=3", "output.name=stopped"), progress=False)
    monkeypatch.setattr(loop, "validate_epoch", real)
    resumed = train(load_run_config(tmp_path / "runs" / "stopped"), resume=tmp_path / "runs" / "stopped",
                    progress=False)
    assert resumed.metrics["epochs"] == 3


# ---------------------------------------------------------------- 12. elastic restarts


def test_an_elastic_restart_continues_the_run_named_after_torchruns_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    real = loop.validate_epoch
    calls = []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the node went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "validate_epoch", crash_in_second_epoch)
    with pytest.raises(RuntimeError):
        train(quick_config(tmp_path, "train.epochs=2"), progress=False)
    monkeypatch.setattr(loop, "validate_epoch", real)
    restarted = train(quick_config(tmp_path, "train.epochs=2"), progress=False)  # what torchrun runs again
    assert restarted.run_dir.name == "resnet8-digits-job-7"
    assert len(restarted.history) == 2 and restarted.metrics["epochs"] == 2


# ---------------------------------------------------------------- 14. matplotlib's state


def test_training_leaves_matplotlibs_backend_alone(tmp_path):
    import reslab

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's own choice (Agg is what reslab once forced)
    try:
        train(quick_config(tmp_path, "train.epochs=1"), progress=False)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    # Importing a module is not enough to switch a backend once it is cached: read the source too.
    # The one exception: Optuna's matplotlib plots are pyplot figures, which the tuning report
    # must close through pyplot (it never chooses a backend either).
    for path in Path(reslab.__file__).parent.rglob("*.py"):
        if path.relative_to(Path(reslab.__file__).parent).as_posix() == "report/tune.py":
            assert "matplotlib.use(" not in path.read_text()
            continue
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import pyplot" not in text and "matplotlib.pyplot" not in text, path


# ---------------------------------------------------------------- 5. prediction prepares images as evaluation


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A PNG made by hand: its header may promise more pixels than its data holds."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_photos(folder, count: int, seed: int) -> None:
    import numpy as np
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


def test_predict_gives_the_top1_that_evaluation_gives_on_the_same_files(tmp_path):
    from reslab.data import build_data
    from reslab.evaluate.predict import predict
    from reslab.inference.predict import load_images, load_model, predict_images

    write_photos(tmp_path / "data" / "train", 8, seed=0)
    write_photos(tmp_path / "data" / "test", 5, seed=1)
    config = load("demo-digits", ["data.name=folder", f"data.root={tmp_path / 'data'}", "data.image_size=24",
                                  "data.center_crop=true", "data.workers=0", "data.val_size=0", "model.name=resnet8",
                                  "train.epochs=1", "train.batch_size=4", f"output.dir={tmp_path / 'runs'}",
                                  "output.plots=false"])
    result = train(config, progress=False)
    model, meta = load_model(result.run_dir, "cpu")
    assert meta["preprocess"]["center_crop"] and meta["preprocess"]["resize_size"] == round(24 / 0.875)

    bundle = build_data(config.data, config.augment, batch_size=4, eval_batch_size=4, mean_std=(meta["mean"],
                                                                                                 meta["std"]))
    logits, _ = predict(model, bundle.test, torch.device("cpu"))
    paths = [bundle.test.dataset.images.path(i) for i in range(len(bundle.test.dataset))]
    predicted = predict_images(model, meta, load_images(paths, meta), top_k=1)
    assert [row["predictions"][0]["class"] for row in predicted] == [meta["classes"][i] for i in logits.argmax(1)]
    scores = torch.tensor([row["predictions"][0]["probability"] for row in predicted])
    assert torch.allclose(scores, logits.softmax(1).max(1).values, atol=1e-5)


# ---------------------------------------------------------------- 15. files that would crash the decoder


def test_a_png_shorter_than_its_header_is_a_bad_file_not_a_crash(tmp_path):
    import zlib

    from reslab.data.decode import BadImage, decode

    broken = png_bytes(40, 40, zlib.compress(b"\x00" * 100))  # 40 rows of 121 bytes promised
    (tmp_path / "broken.png").write_bytes(broken)
    code = ("import sys\nfrom reslab.data.decode import decode, BadImage\n"
            "try:\n    decode(sys.argv[1])\nexcept BadImage as e:\n    print('bad:', e)\n")
    process = subprocess.run([sys.executable, "-c", code, str(tmp_path / "broken.png")], capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0 and process.stdout.startswith("bad:"), (process.returncode, process.stderr)
    with pytest.raises(BadImage):
        decode(broken)


def test_an_image_declaring_a_huge_canvas_is_refused_before_it_is_decoded(tmp_path):
    import zlib

    from reslab.data.decode import BadImage, decode

    bomb = png_bytes(16000, 16000, zlib.compress(b"\x00" * 1000))  # 256 million pixels declared
    (tmp_path / "big.png").write_bytes(png_bytes(8000, 8000, zlib.compress(b"\x00" * 1000)))  # under Pillow's limit
    with pytest.raises(BadImage, match="8000x8000 pixels is larger than the 50,000,000"):
        decode(str(tmp_path / "big.png"))
    (tmp_path / "bomb.png").write_bytes(bomb)
    for decoder in ("pil", "torchvision", "torchcodec", "auto"):
        with pytest.raises(BadImage, match="larger than the 50,000,000 pixels accepted"):
            decode(str(tmp_path / "bomb.png"), decoder)


# ---------------------------------------------------------------- 16-20. bad input: one line, exit 2


def one_error_line(process, fragment: str) -> None:
    assert process.returncode == 2, (process.returncode, process.stderr[-2000:])
    assert "Traceback" not in process.stderr
    lines = [line for line in process.stderr.splitlines() if line.startswith("reslab: error:")]
    assert len(lines) == 1 and fragment in lines[0] and len(lines[0]) < 600, process.stderr[-2000:]


def write_cifar_batches(folder, images: int, labels: int, data=None, label_values=None, names=None):
    import pickle

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (images, 3072)) if data is None else data,
                 b"labels": (rng.integers(0, 10, labels).tolist() if label_values is None else label_values)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": names if names is not None else [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize("case, fragment", [
    ({"images": 30, "labels": 29}, "30 images but 29 labels"),
    ({"images": 4, "labels": 4, "data": [[300] * 3072] * 4}, "outside 0..255"),
    ({"images": 4, "labels": 4, "label_values": ["a", "b", "c", "d"]}, "not an array of integers"),
    ({"images": 4, "labels": 4, "data": "pixels"}, "not an array of integers"),
    ({"images": 4, "labels": 4, "names": "airplane"}, "not a list of class names"),
])
def test_a_malformed_cifar_batch_is_one_error_line(tmp_path, case, fragment):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", **case)
    one_error_line(cli("train", "--data", "cifar10", "--data-root", str(tmp_path), "--epochs", "1",
                       "--out", str(tmp_path / "runs"), "data.download=false"), fragment)


def test_idx_files_with_bad_test_labels_no_images_or_a_corrupt_stream_are_refused_before_training(tmp_path):
    import numpy as np

    from reslab.config import DataConfig
    from reslab.data import load_splits

    from conftest import write_idx, write_mnist

    root = write_mnist(tmp_path / "bad-labels")
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(20, 12))
    one_error_line(cli("train", "--data", "mnist", "--data-root", str(root), "--epochs", "1", "--out",
                       str(tmp_path / "runs"), "data.download=false"), "test labels go up to 12")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    empty = write_mnist(tmp_path / "empty", train=0)
    with pytest.raises(ReslabError, match="hold no images"):
        load_splits(DataConfig(name="mnist", root=str(empty), download=False))
    corrupt = write_mnist(tmp_path / "corrupt", compress=True)
    raw = bytearray((corrupt / "train-images-idx3-ubyte.gz").read_bytes())
    raw[20:40] = bytes(20)  # inside the deflate stream
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(ReslabError, match="cannot read IDX file"):
        load_splits(DataConfig(name="mnist", root=str(corrupt), download=False))


@pytest.mark.parametrize("meta, fragment", [
    ({}, "meta 'model'"), ("resnet8", "not a mapping"),
    ({"model": "9" * 5000}, "not a model name"),
    ({"model": "resnet8", "num_classes": 10, "in_channels": 1, "classes": [str(i) for i in range(10)],
      "image_size": [100_000, 100_000], "mean": [0.5], "std": [0.25]}, "image_size"),
])
def test_a_safe_checkpoint_with_unusable_contents_is_refused_before_anything_is_built(tmp_path, meta, fragment):
    from reslab.checkpoint import load_checkpoint

    torch.save({"model": {"w": torch.ones(1)}, "meta": meta}, tmp_path / "odd.pt")
    with pytest.raises(ReslabError, match=fragment):
        load_checkpoint(tmp_path / "odd.pt")
    torch.save({"model": {"w": 3}, "meta": meta}, tmp_path / "ints.pt")
    with pytest.raises(ReslabError, match="not a state_dict"):
        load_checkpoint(tmp_path / "ints.pt")


def test_commands_given_an_unusable_checkpoint_say_so_in_one_line(tmp_path):
    meta = {"model": "resnet8", "num_classes": 10, "in_channels": 1, "classes": [str(i) for i in range(10)],
            "image_size": [100_000, 100_000], "mean": [0.5], "std": [0.25]}
    torch.save({"model": {"w": torch.ones(1)}, "meta": meta}, tmp_path / "odd.pt")
    for command in (("evaluate", str(tmp_path / "odd.pt")), ("predict", str(tmp_path / "odd.pt"), str(tmp_path))):
        one_error_line(cli(*command), "image_size")


@pytest.mark.parametrize("override, fragment", [
    ("data.val_size=inf", "finite"), ("data.test_size=.inf", "finite"), ("augment.mixup=inf", "finite"),
    ("schedule.min_lr=nan", "finite"), ("output.name=" + "x" * 300, "at most 200 bytes"),
    ("optim.lr=" + "[" * 5000 + "]" * 5000, "optim.lr"),
])
def test_config_values_no_run_could_use_are_one_error_line(tmp_path, override, fragment):
    one_error_line(cli("train", "--config", "demo-digits", "--out", str(tmp_path), override), fragment)


def test_yaml_aliases_and_deep_nesting_are_refused_in_a_config_file(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)) + "train: {epochs: *i}\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    one_error_line(cli("train", "--config", str(tmp_path / "bomb.yaml")), "aliases")
    (tmp_path / "deep.yaml").write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    one_error_line(cli("train", "--config", str(tmp_path / "deep.yaml")), "nested more than")


def test_a_report_of_a_run_with_damaged_files_is_one_error_line(tmp_path):
    result = train(quick_config(tmp_path, "train.epochs=1"), progress=False)
    (result.run_dir / "history.csv").write_text("epoch,step\n1,abc\n")
    one_error_line(cli("report", str(result.run_dir), "--out", str(tmp_path / "report")), "history")
    (result.run_dir / "metrics.json").write_text("{not json")
    one_error_line(cli("report", str(result.run_dir), "--out", str(tmp_path / "report")), "not readable JSON")


def test_a_huge_class_index_is_one_error_line(tmp_path):
    from PIL import Image

    result = train(quick_config(tmp_path, "train.epochs=1"), progress=False)
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    one_error_line(cli("predict", str(result.run_dir), str(tmp_path / "digit.png"), "--explain",
                       str(tmp_path / "cams"), "--class", "9" * 5000), "unknown class")


# ---------------------------------------------------------------- 18. links and pipes in image folders


def test_a_link_loop_and_a_pipe_are_reported_not_followed(tmp_path):
    from reslab.data.folders import read_folder

    write_photos(tmp_path / "data", 6, seed=2)
    (tmp_path / "data" / "a" / "loop").symlink_to(tmp_path / "data" / "a")
    (tmp_path / "data" / "b" / "again.png").symlink_to(tmp_path / "data" / "a" / "1.png")
    os.mkfifo(tmp_path / "data" / "b" / "pipe.png")
    splits = read_folder(tmp_path / "data", val_size=2, test_size=2)
    listed = [splits.train.path(i) for i in range(len(splits.train))] + \
             [split.path(i) for split in (splits.val, splits.test) for i in range(len(split))]
    assert len(listed) == len(set(listed)) == 12  # 6 real images per class, each once
    reasons = {Path(bad.path).name: bad.reason for bad in splits.problems}
    assert "loop" in reasons["loop"] and "second link" in reasons["again.png"] and "regular" in reasons["pipe.png"]


# ---------------------------------------------------------------- 19, 20. exports and quiet gaps


def test_an_export_never_replaces_a_file_of_its_run(tmp_path):
    result = train(quick_config(tmp_path, "train.epochs=1"), progress=False)
    before = (result.run_dir / "metrics.json").read_bytes()
    one_error_line(cli("export", str(result.run_dir), "--format", "safetensors", "--output",
                       str(result.run_dir / "metrics.safetensors")), "would replace")
    assert (result.run_dir / "metrics.json").read_bytes() == before


def test_an_empty_class_folder_and_a_single_class_are_refused(tmp_path):
    from reslab.data.folders import read_folder

    write_photos(tmp_path / "data", 4, seed=3)
    (tmp_path / "data" / "c").mkdir()
    with pytest.raises(ReslabError, match="class folder 'c' .* holds no images"):
        read_folder(tmp_path / "data", val_size=1, test_size=1)
    write_photos(tmp_path / "one", 4, seed=4)
    import shutil

    shutil.rmtree(tmp_path / "one" / "b")
    with pytest.raises(ReslabError, match="one class folder"):
        read_folder(tmp_path / "one", val_size=1, test_size=1)


# ---------------------------------------------------------------- 7. a study started again


def test_a_restarted_study_gives_its_interrupted_runs_a_new_device_and_data_root(tmp_path, monkeypatch):
    import reslab.train.run_folder as run_folder
    from reslab.experiments.study import run_study, study_from_dict

    study = {"recipe": "demo-digits", "models": ["resnet8"], "out": str(tmp_path / "study"),
             "overrides": ["train.epochs=2", "output.plots=false"]}
    real = run_folder.write_history

    def killed_after_first_epoch(path, history):
        real(path, history)
        raise RuntimeError("simulated kill")

    monkeypatch.setattr(run_folder, "write_history", killed_after_first_epoch)
    with pytest.raises(RuntimeError):
        run_study(study_from_dict(study), progress=False, log=lambda line: None)
    monkeypatch.setattr(run_folder, "write_history", real)
    moved = {**study, "overrides": study["overrides"] + ["train.device=cpu", f"data.root={tmp_path / 'elsewhere'}"]}
    result = run_study(study_from_dict(moved), progress=False, log=lambda line: None)
    saved = load_run_config(result.run_dirs[0])
    assert saved.train.device == "cpu" and saved.data.root == str(tmp_path / "elsewhere")
    assert result.trained == 1 and result.results[0].metrics["epochs"] == 2


# ---------------------------------------------------------------- 13. global batch norm, compiled


@pytest.mark.distributed
@pytest.mark.slow
def test_global_batch_norm_compiles_under_two_processes(tmp_path):
    common = ["--config", "demo-digits", "--model", "resnet8", "--epochs", "1", "train.batch_size=128",
              "train.sync_bn=true", "train.compile=true", "train.max_iters=3", "data.val_size=0", "--no-progress",
              "--out", str(tmp_path), "--name", "two"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "reslab"]
    process = subprocess.run([*torchrun, "train", *common], capture_output=True, text=True, timeout=900,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"})
    assert process.returncode == 0, process.stderr[-3000:]
    assert "all_reduce" not in process.stderr  # no deprecation warning of the old collective, every step
    assert (tmp_path / "two" / "metrics.json").is_file()
