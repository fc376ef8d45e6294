"""The command line: one clear line and exit 2 for every bad input, never a traceback, never
a lost run folder. Commands run in this process (``reslab.cli.main``); the entry point itself
(``python -m reslab``) runs in real subprocesses: a training run, its evaluation in a fresh
process, a line per epoch without a terminal, and the demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_error_line, run_cli, write_cifar_archive


def run(*args, cwd=None, check=False):
    """``python -m reslab ARGS`` in a process of its own."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.run([sys.executable, "-m", "reslab", *args], capture_output=True, text=True, cwd=cwd,
                             env=env, timeout=600)
    if check:
        assert process.returncode == 0, process.stderr
    return process


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    run("train", "--config", "demo-digits", "--model", "resnet8", "--epochs", "2", "--out", str(out),
        "--name", "digits8", "--no-progress", check=True)
    return out / "digits8"


def test_train_prints_metrics_and_writes_the_run(trained_run):
    assert (trained_run / "metrics.json").is_file()
    assert json.loads((trained_run / "metrics.json").read_text())["model"] == "resnet8"


def test_evaluate_reproduces_the_runs_test_metrics(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    process = run("evaluate", str(trained_run), "--output", str(out), check=True)
    assert "accuracy" in process.stdout
    evaluated = json.loads(out.read_text())["test"]
    recorded = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert evaluated["accuracy"] == recorded["accuracy"]
    assert evaluated["confusion_matrix"] == recorded["confusion_matrix"]


def test_evaluate_refuses_a_checkpoint_of_another_model(trained_run, capsys):
    assert_one_error_line(run_cli(capsys, "evaluate", trained_run, "--model", "resnet20"),
                          "checkpoint of resnet8, not resnet20")


def test_evaluate_on_a_dataset_of_another_shape(trained_run, tmp_path, capsys):
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    assert_one_error_line(run_cli(capsys, "evaluate", trained_run, "--data", "cifar10", "--data-root", tmp_path),
                          "1-channel", "3-channel")


def test_resume_continues_from_the_cli(trained_run, capsys):
    code, out, err = run_cli(capsys, "train", "--resume", trained_run, "--no-progress")
    assert code == 0, err
    assert "run folder" in out


def test_summary_shows_counts_and_macs(capsys):
    code, out, err = run_cli(capsys, "summary", "resnet56")
    assert code == 0, err
    assert "853,018" in out and "MACs per image" in out


def test_models_lists_the_registry(capsys):
    code, out, err = run_cli(capsys, "models", "plain")
    assert code == 0, err
    assert "plain110" in out and "resnet20" not in out


def test_summary_says_which_family_a_name_builds(capsys):
    code, out, err = run_cli(capsys, "summary", "cifar_resnet26", "--depth", "1")
    assert code == 0, err
    assert "cifar_resnet26: CIFAR ResNet, depth 26" in out.splitlines()[0]


def test_train_on_cifar_archive(tmp_path, capsys):
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_batch=40)
    code, _, err = run_cli(capsys, "train", "--config", "paper-cifar10-resnet20", "--data-root", tmp_path, "--epochs",
                           "1", "data.val_size=50", "train.batch_size=50", "--out", tmp_path / "runs", "--name", "c",
                           "--no-progress")
    assert code == 0, err
    metrics = json.loads((tmp_path / "runs" / "c" / "metrics.json").read_text())
    assert metrics["test"]["samples"] == 30 and len(metrics["test"]["per_class"]) == 10


@pytest.mark.parametrize("args,fragments", [
    (["train", "--model", "resnet21"], ["invalid depth 21", "6n+2"]),
    (["train", "--model", "resnet9000x"], ["unknown model 'resnet9000x'"]),
    (["train", "train.epoch=3"], ["unknown config key 'train.epoch'", "train.epochs"]),
    (["train", "optim.lr=fast"], ["'optim.lr' must be float"]),
    (["train", "--config", "no-such-recipe"], ["neither a file nor a shipped recipe"]),
    (["evaluate", "/nonexistent/best.pt"], ["does not exist"]),
    (["summary", "resnet20", "--input-size", "3,32"], ["C,H,W"]),
    (["evaluate", "/etc/hostname"], ["not a"]),
    (["train", "--config", "/tmp"], ["cannot read config file /tmp"]),
    (["train", "--precision", "fp16", "--device", "auto"], ["fp16 needs a GPU"]),
])
def test_bad_input_gives_one_line(args, fragments, capsys):
    assert_one_error_line(run_cli(capsys, *args), *fragments)


def test_missing_or_empty_data_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "missing"):
        ran = run_cli(capsys, "train", "--data", "cifar10", "--data-root", root, "data.download=false")
        assert_one_error_line(ran, "CIFAR-10 not found", "cifar-10-python.tar.gz")
    ran = run_cli(capsys, "train", "--data", "mnist", "--data-root", tmp_path / "empty", "data.download=false")
    assert_one_error_line(ran, "mnist not found", "train-images-idx3-ubyte")


def test_corrupt_archive(tmp_path, capsys):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(os.urandom(1000))
    assert_one_error_line(run_cli(capsys, "train", "--data", "cifar10", "--data-root", tmp_path),
                          "not a readable CIFAR-10 archive")


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_error_line(run_cli(capsys, "train", "--out", blocker / "runs", "--epochs", "1"),
                          "cannot create output folder")


def test_truncated_and_foreign_checkpoints(tmp_path, trained_run, capsys):
    best = (trained_run / "checkpoints" / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(best[: len(best) // 2])
    assert_one_error_line(run_cli(capsys, "evaluate", tmp_path / "cut.pt"), "not a readable checkpoint")
    import torch

    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    assert_one_error_line(run_cli(capsys, "evaluate", tmp_path / "other.pt"), "not a reslab checkpoint")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import torch

    torch.save({"model": Payload(), "meta": {}}, tmp_path / "evil.pt", pickle_module=pickle)
    assert_one_error_line(run_cli(capsys, "evaluate", tmp_path / "evil.pt"), "refusing to load")
    assert not (tmp_path / "pwned").exists()


def test_existing_run_folder_is_kept(trained_run, capsys):
    before = (trained_run / "metrics.json").read_bytes()
    ran = run_cli(capsys, "train", "--config", "demo-digits", "--model", "resnet8", "--epochs", "1",
                  "--out", trained_run.parent, "--name", trained_run.name)
    assert_one_error_line(ran, "already exists", "--resume")
    assert (trained_run / "metrics.json").read_bytes() == before


def test_without_a_terminal_every_epoch_is_a_log_line(tmp_path):
    process = run("train", "--config", "demo-digits", "--model", "resnet8", "--epochs", "2", "--out", str(tmp_path),
                  "--name", "logged")
    assert process.returncode == 0, process.stderr
    lines = [line for line in process.stderr.splitlines() if line.startswith("reslab: epoch ")]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"], process.stderr
    assert "val loss" in lines[0] and "img/s" in lines[0]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    process = run("demo", "--out", str(tmp_path), "--epochs", "2", "--no-progress", check=True)
    assert "| resnet20 |" in process.stdout and "| plain20 |" in process.stdout
    (folder,) = Path(tmp_path).glob("demo-*")
    rows = json.loads((folder / "comparison.json").read_text())
    for row in rows:
        metrics = json.loads((folder / row["model"] / "metrics.json").read_text())
        assert row["accuracy"] == metrics["test"]["accuracy"]
        assert row["error"] == pytest.approx(1 - row["accuracy"])  # a fraction, as everywhere
    assert (folder / "error_curves.png").stat().st_size > 10_000


def test_summary_of_report_000s_model_gives_keras_totals(capsys):
    code, out, err = run_cli(capsys, "summary", "resnet152v2_report000", "--depth", "1")
    assert code == 0, err
    assert "total 59,024,586 = trainable 58,880,842 + non-trainable 143,744" in out
    assert "(2048, 1, 1)" in out  # the backbone ends in 1x1x2048 on 32x32 inputs


def test_evaluate_refuses_an_output_folder_before_evaluating(trained_run, tmp_path, capsys):
    assert_one_error_line(run_cli(capsys, "evaluate", trained_run, "--output", tmp_path), "is a folder")


def test_result_files_follow_the_umask_not_mkstemps_0600(trained_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.json", "config.yaml", "checkpoints/best.pt"):
        assert (trained_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("argv, field, expected", [
    (["tune", "digits", "--trials", "4", "train.threads=1"], "items", ["digits", "train.threads=1"]),
    (["compare", "digits-depth", "--epochs", "2", "train.threads=1", "--no-report", "data.val_size=0"], "items",
     ["digits-depth", "train.threads=1", "data.val_size=0"]),
    (["train", "optim.lr=0.2", "--epochs", "3", "train.threads=1", "--name", "x", "augment.hflip=false"],
     "overrides", ["optim.lr=0.2", "train.threads=1", "augment.hflip=false"]),
])
def test_overrides_are_taken_anywhere_on_the_line(argv, field, expected):
    from reslab.cli import parse_args

    assert getattr(parse_args(argv), field) == expected


def test_a_stray_word_is_still_refused_by_every_command(capsys):
    from reslab.cli import parse_args

    for argv in (["tune", "digits", "--trials", "4", "stray"], ["evaluate", "run", "train.threads=1"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
