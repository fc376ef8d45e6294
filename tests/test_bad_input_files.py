"""Bad files and folders a user can hand reslab (issue 28): one error line and exit 2, or a
warning where the command can still do its work, never a traceback, and never a changed
file of a run."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import reslab.evaluate.calibrate as calibrate_module
from reslab import ReslabError, runfs
from reslab.checkpoint import save_checkpoint
from reslab.cli import main
from reslab.data.cifar import read_cifar
from reslab.evaluate.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    checkpoint_digest,
    fit_temperature,
    stored_temperature,
)
from reslab.train.loop import train
from reslab.train.run_folder import link_last

from conftest import assert_one_error_line, quick_config, run_cli, write_cifar_archive

SPARSE_SIZE = 2 << 30  # a 2 GiB file of holes: its size is all that may be read of it


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished digits run (val and test splits); tests change only copies of it."""
    tmp = tmp_path_factory.mktemp("bad-input")
    return train(quick_config(tmp, "train.epochs=1", "output.name=base", "output.plots=false"), progress=False).run_dir


def copy_run(run: Path, folder: Path, name: str = "run", checkpoints: bool = True) -> Path:
    ignore = None if checkpoints else shutil.ignore_patterns("*.pt")
    return Path(shutil.copytree(run, folder / name, ignore=ignore))


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only. Where the kernel lets this user write anyway (root), writes
    into it fail as the kernel fails them for anyone else: reslab writes through mkstemp
    (runfs.atomic_write) and checks with TemporaryFile (runfs.check_writable)."""
    folders: list[Path] = []

    def refuse_in(folder) -> None:
        if folder is not None and any(Path(folder).resolve() == f.resolve() for f in folders):
            raise PermissionError(errno.EACCES, "Permission denied")

    real_mkstemp, real_temporary = tempfile.mkstemp, tempfile.TemporaryFile

    def mkstemp(*args, dir=None, **kwargs):
        refuse_in(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    def temporary_file(*args, dir=None, **kwargs):
        refuse_in(dir)
        return real_temporary(*args, dir=dir, **kwargs)

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        folders.append(folder)
        if os.access(folder, os.W_OK):  # root
            monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
            monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
        return folder

    yield make
    for folder in folders:
        folder.chmod(0o755)


# ---------------------------------------------------------------- 1. evaluate --output into a run folder


@pytest.mark.parametrize("name", ["metrics.json", "config.yaml", "history.csv", "checkpoints/best.pt"])
def test_evaluate_never_writes_over_another_runs_file(finished_run, tmp_path, capsys, name):
    run, other = copy_run(finished_run, tmp_path), copy_run(finished_run, tmp_path, "other")
    before = snapshot(other)
    assert_one_error_line(run_cli(capsys, "evaluate", run, "--output", other / name),
                          "would replace", "write it elsewhere")
    assert snapshot(other) == before


@pytest.mark.parametrize("name", ["metrics.json", "config.yaml"])
def test_evaluate_never_writes_over_its_own_runs_file(finished_run, tmp_path, capsys, name):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    assert_one_error_line(run_cli(capsys, "evaluate", run, "--output", run / name), "would replace")
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["metrics.json", "checkpoints/best.pt"])
def test_evaluate_never_adds_a_file_reslab_keeps_to_an_unfinished_run(finished_run, tmp_path, capsys, name):
    run = copy_run(finished_run, tmp_path)
    (run / name).unlink()  # as a run stopped before its end (or its first best epoch) leaves it
    assert_one_error_line(run_cli(capsys, "evaluate", run, "--output", run / name), f"would add {Path(name).name}")
    assert not (run / name).exists()


def test_export_shares_the_refusal(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "metrics.json").unlink()  # the export's side file would be the run's metrics.json
    ran = run_cli(capsys, "export", run, "--format", "safetensors", "--output", run / "metrics.safetensors")
    assert_one_error_line(ran, "would add metrics.json")
    assert not (run / "metrics.json").exists() and not (run / "metrics.safetensors").exists()


def test_an_export_never_replaces_a_file_of_its_run(tmp_path, capsys):
    result = train(quick_config(tmp_path, "train.epochs=1"), progress=False)
    before = (result.run_dir / "metrics.json").read_bytes()
    assert_one_error_line(run_cli(capsys, "export", result.run_dir, "--format", "safetensors", "--output",
                                  result.run_dir / "metrics.safetensors"), "would replace")
    assert (result.run_dir / "metrics.json").read_bytes() == before


def test_evaluate_may_write_a_new_file_beside_a_run(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    assert main(["evaluate", str(run), "--output", str(run / "evaluation.json")]) == 0
    assert json.loads((run / "evaluation.json").read_text())["test"]["accuracy"] >= 0
    capsys.readouterr()


# ---------------------------------------------------------------- 2. calibrate: its outputs, its file


def test_calibrate_refuses_a_folder_where_calibration_json_goes(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "calibration.json").mkdir()
    before = snapshot(run)
    assert_one_error_line(run_cli(capsys, "calibrate", run), "calibration.json exists and is not a file")
    assert snapshot(run) == before and (run / "calibration.json").is_dir()


def test_calibrate_refuses_a_read_only_run_folder(finished_run, tmp_path, capsys, read_only):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    read_only(run)
    assert_one_error_line(run_cli(capsys, "calibrate", run), "is not writable", "copy of the run folder")
    assert snapshot(run) == before


def test_calibrate_that_cannot_write_keeps_the_earlier_calibration(finished_run, tmp_path, capsys, monkeypatch):
    run = copy_run(finished_run, tmp_path)
    (run / "calibration.json").write_text('{"temperature": 1.5}')

    def disk_full(path, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(calibrate_module, "atomic_write_json", disk_full)
    assert_one_error_line(run_cli(capsys, "calibrate", run), "No space left on device", "calibration.json is as it was")
    assert (run / "calibration.json").read_text() == '{"temperature": 1.5}'


def fake_calibrated_run(tmp_path: Path, stored) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    if isinstance(stored, dict):
        stored = {"checkpoint": "checkpoints/best.pt", "checkpoint_sha256": checkpoint_digest(
            run / "checkpoints" / "best.pt"), **stored}
    (run / "calibration.json").write_text(stored if isinstance(stored, str) else json.dumps(stored))
    return run


@contextmanager
def calibration_warnings(caplog):
    """caplog sees the calibration module's records (the CLI stops reslab's at its own handler)."""
    logger = logging.getLogger("reslab.evaluate.calibration")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("stored, fragment", [
    ({"temperature": "x"}, "not a number"),
    ({"temperature": {"a": 1}}, "not a number"),
    ({"temperature": True}, "not a number"),
    ([], "a JSON object was expected"),
    ({"temperature": -1}, "outside"),
    ({"temperature": 1e-30}, "outside"),
    ({"temperature": 1e30}, "outside"),
    ('{"temperature": NaN, "checkpoint": "checkpoints/best.pt", "checkpoint_sha256": "0"}', "outside"),
    ({"temperature": 1.5, "checkpoint": ["best.pt"]}, "does not name the checkpoint"),
    ("{not json", "not valid JSON"),
])
def test_a_damaged_calibration_file_is_ignored_with_one_warning(tmp_path, stored, fragment, caplog):
    run = fake_calibrated_run(tmp_path, stored)
    with calibration_warnings(caplog):
        assert stored_temperature(run) is None
    messages = {record.getMessage() for record in caplog.records}  # a record may reach caplog twice
    assert len(messages) == 1 and fragment in caplog.text and "\n" not in messages.pop()


def test_a_huge_calibration_file_is_refused_unread(tmp_path, caplog, monkeypatch):
    run = fake_calibrated_run(tmp_path, {"temperature": 1.5})
    with open(run / "calibration.json", "r+b") as handle:
        handle.truncate(SPARSE_SIZE)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read whole"))
    monkeypatch.setattr(Path, "read_bytes", lambda *a, **k: pytest.fail("read whole"))
    with calibration_warnings(caplog):
        assert stored_temperature(run) is None
    assert f"{SPARSE_SIZE:,} bytes" in caplog.text


def test_the_report_ignores_a_damaged_or_huge_calibration_file(tmp_path):
    from reslab.report.robustness import _calibrated

    run = fake_calibrated_run(tmp_path, {"temperature": 1e-30, "after": {"test": {"ece": 0.1}}})
    assert _calibrated(run) == {}
    (run / "calibration.json").write_text(json.dumps({"temperature": 1.5, "after": {"test": {"ece": 0.1}}}))
    assert _calibrated(run) == {"temperature": 1.5, "ece": 0.1}
    with open(run / "calibration.json", "r+b") as handle:
        handle.truncate(SPARSE_SIZE)
    assert _calibrated(run) == {}


def test_evaluate_with_a_damaged_calibration_file_warns_and_reports_uncalibrated(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "calibration.json").write_text('{"temperature": {"a": 1}}')
    assert main(["evaluate", str(run), "--output", str(tmp_path / "evaluation.json")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "calibration file" in err and "not temperature-scaled" in err
    assert "calibrated" not in json.loads((tmp_path / "evaluation.json").read_text())


def test_a_fitted_temperature_stays_within_what_a_calibration_file_may_hold():
    targets = torch.arange(10).repeat(20)
    right = 0.1 * torch.nn.functional.one_hot(targets, 10).float()  # every image right: T runs towards 0
    assert MIN_TEMPERATURE <= fit_temperature(right, targets) <= MAX_TEMPERATURE


# ---------------------------------------------------------------- 3. evaluate on a read-only run


def test_evaluate_on_a_read_only_run_prints_its_metrics_and_warns(finished_run, tmp_path, capsys, read_only):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    read_only(run)
    assert main(["evaluate", str(run), "--output", str(tmp_path / "evaluation.json")]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and "Traceback" not in captured.err
    warnings = [line for line in captured.err.splitlines() if "reliability diagram not written" in line]
    assert len(warnings) == 1 and "metrics are complete" in warnings[0]
    assert (tmp_path / "evaluation.json").is_file() and snapshot(run) == before


# ---------------------------------------------------------------- 4. report on a damaged metrics.json


def _real_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _changed(run: Path, change) -> str:
    metrics = _real_metrics(run)
    change(metrics)
    return json.dumps(metrics)


@pytest.mark.parametrize("damage, fragment", [
    (lambda run: "[]", "not a reslab metrics file"),
    (lambda run: '{"test": 5}', "not a reslab metrics file"),
    (lambda run: '{"test": {"accuracy": "high"}}', "is damaged"),
    (lambda run: _changed(run, lambda m: m["test"].update(accuracy="high")), "'test.accuracy' is not a number"),
    (lambda run: _changed(run, lambda m: m.update(model=5)), "'model' is not a name"),
    (lambda run: _changed(run, lambda m: m.update(seed=None)), "'seed' is not a number"),
    (lambda run: _changed(run, lambda m: m["test"].pop("per_class")), "'test.per_class'"),
    (lambda run: _changed(run, lambda m: m["test"].update(confusion_matrix=[[1, 2]])), "'test.confusion_matrix'"),
    (lambda run: _changed(run, lambda m: m["test"].update(reliability={"bins": 3})), "'test.reliability'"),
    (lambda run: "{not json", "not readable JSON"),
])
def test_report_on_a_damaged_metrics_file_is_one_error_line(finished_run, tmp_path, capsys, damage, fragment):
    run = copy_run(finished_run, tmp_path, checkpoints=False)
    (run / "metrics.json").write_text(damage(run))
    before = snapshot(run)
    assert_one_error_line(run_cli(capsys, "report", run, "--out", tmp_path / "report"), "metrics", fragment)
    assert snapshot(run) == before and not (tmp_path / "report").exists()


def test_report_refuses_a_huge_metrics_file_unread(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path, checkpoints=False)
    with open(run / "metrics.json", "r+b") as handle:
        handle.truncate(SPARSE_SIZE)
    assert_one_error_line(run_cli(capsys, "report", run, "--out", tmp_path / "report"), f"{SPARSE_SIZE:,} bytes")


@pytest.mark.parametrize("bench", ['{"results": [1]}', '{"results": [], "environment": 3}', "[]", "{not json"])
def test_report_on_a_damaged_bench_file_is_one_error_line(finished_run, tmp_path, capsys, bench):
    run = copy_run(finished_run, tmp_path, checkpoints=False)
    (tmp_path / "bench.json").write_text(bench)
    ran = run_cli(capsys, "report", run, "--out", tmp_path / "report", "--bench", tmp_path / "bench.json")
    assert_one_error_line(ran, "bench file")


def test_a_report_of_a_run_with_damaged_files_is_one_error_line(tmp_path, capsys):
    result = train(quick_config(tmp_path, "train.epochs=1"), progress=False)
    (result.run_dir / "history.csv").write_text("epoch,step\n1,abc\n")
    assert_one_error_line(run_cli(capsys, "report", result.run_dir, "--out", tmp_path / "report"), "history")
    (result.run_dir / "metrics.json").write_text("{not json")
    assert_one_error_line(run_cli(capsys, "report", result.run_dir, "--out", tmp_path / "report"),
                          "not readable JSON")


# ---------------------------------------------------------------- 5. a save's temporary files, left by a kill


def _leave_temporaries_as_a_kill_would(checkpoints: Path, monkeypatch) -> list[str]:
    """The temporary files of an epoch save and of last.pt's link, left as a kill between
    writing and renaming leaves them (the rename, and the clean-up after it, never ran)."""
    before = {path.name for path in checkpoints.iterdir()}
    with monkeypatch.context() as patch:
        def killed(*args):
            raise KeyboardInterrupt

        patch.setattr(os, "replace", killed)
        patch.setattr(os, "unlink", lambda *args, **kwargs: None)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(checkpoints / "epoch-0002.pt", {"step": 2})
        with pytest.raises(KeyboardInterrupt):
            link_last(checkpoints / "epoch-0001.pt")
    left = sorted(path.name for path in checkpoints.iterdir() if path.name not in before)
    assert len(left) == 2 and all(runfs.TEMPORARY_FILE.fullmatch(name) for name in left), left
    return left


def test_a_resumed_run_removes_the_temporary_files_a_kill_left(finished_run, tmp_path, capsys, monkeypatch):
    run = copy_run(finished_run, tmp_path)
    (run / "metrics.json").unlink()  # killed after its last epoch's save, before its end
    checkpoints = run / "checkpoints"
    left = _leave_temporaries_as_a_kill_would(checkpoints, monkeypatch)
    kept = [checkpoints / "notes.tmp", checkpoints / ".epoch-0002.pt.short.tmp", run / ".metrics.json.abcd1234.tmp"]
    for path in kept:
        path.write_text("not reslab's, or not in checkpoints/")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert not any((checkpoints / name).exists() for name in left)
    assert all(path.is_file() for path in kept)
    assert (run / "metrics.json").is_file()


# ---------------------------------------------------------------- 6. a damaged CIFAR archive


def _batch(data, labels) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=2)


def _archive_with(path: Path, replaced: dict[str, bytes | None]) -> Path:
    """A CIFAR-10 archive with some members replaced (None: left out)."""
    source = write_cifar_archive(path.parent / "good.tar.gz")
    with tarfile.open(source) as original, tarfile.open(path, "w:gz") as archive:
        for info in original:
            name = Path(info.name).name
            raw = replaced.get(name, original.extractfile(info).read())
            if raw is None:
                continue
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


def _forbidden_global_with_a_line_break() -> bytes:
    """A pickle asking for ``os.system\\nevil`` through STACK_GLOBAL (names may hold a line break there)."""
    return (b"\x80\x04" + b"\x8c\x02os\x94" + b"\x8c\x0bsystem\nevil\x94" + b"\x93" + b".")


def _damaged(kind: str, root: Path) -> None:
    import numpy as np

    archive = root / "cifar-10-python.tar.gz"
    if kind == "not a tar":
        archive.write_bytes(b"this is not an archive" * 100)
    elif kind == "truncated":
        whole = write_cifar_archive(root / "whole.tar.gz").read_bytes()
        archive.write_bytes(whole[: len(whole) // 2])
    elif kind == "missing batch":
        _archive_with(archive, {"data_batch_3": None})
    elif kind == "wrong shape":
        _archive_with(archive, {"data_batch_2": _batch(np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 2, 3])})
    elif kind == "forbidden global":
        _archive_with(archive, {"test_batch": _forbidden_global_with_a_line_break()})
    elif kind == "not a pickle":
        _archive_with(archive, {"batches.meta": b"\x80\x04garbage\nmore garbage"})


@pytest.mark.parametrize("kind", ["not a tar", "truncated", "missing batch", "wrong shape", "forbidden global",
                                  "not a pickle"])
def test_every_cifar_archive_error_is_one_line(tmp_path, kind):
    root = tmp_path / "data"
    root.mkdir()
    _damaged(kind, root)
    with pytest.raises(ReslabError) as error:
        read_cifar(root, "cifar10", download=False)
    assert "\n" not in str(error.value), str(error.value)


# ---------------------------------------------------------------- 7. a checkpoint with unusable contents


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


def test_commands_given_an_unusable_checkpoint_say_so_in_one_line(tmp_path, capsys):
    meta = {"model": "resnet8", "num_classes": 10, "in_channels": 1, "classes": [str(i) for i in range(10)],
            "image_size": [100_000, 100_000], "mean": [0.5], "std": [0.25]}
    torch.save({"model": {"w": torch.ones(1)}, "meta": meta}, tmp_path / "odd.pt")
    for command in (("evaluate", str(tmp_path / "odd.pt")), ("predict", str(tmp_path / "odd.pt"), str(tmp_path))):
        assert_one_error_line(run_cli(capsys, *command), "image_size")


# ---------------------------------------------------------------- files of another kind


@pytest.mark.parametrize("suffix, runner", [(".pt2", "torch.export.load"), (".onnx", "onnxruntime")])
def test_an_export_given_as_a_checkpoint_names_what_runs_it(suffix, runner, tmp_path, capsys):
    export = tmp_path / f"model{suffix}"
    export.write_bytes(b"an exported program, not a checkpoint")
    assert_one_error_line(run_cli(capsys, "predict", export, tmp_path), "is an export, not a checkpoint", runner)


def test_an_engines_comparison_given_to_report_bench_is_named_as_such(finished_run, tmp_path, capsys):
    engines = tmp_path / "engines.json"
    engines.write_text(json.dumps({"kind": "inference-engines", "rows": []}))
    assert_one_error_line(run_cli(capsys, "report", finished_run, "--out", tmp_path / "report", "--bench", engines),
                          "compares inference engines", "reslab bench MODEL")
