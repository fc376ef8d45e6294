"""Experiment trackers (output.logger): TensorBoard, MLflow and W&B (offline) each hold what the
run wrote - per-step and per-epoch scalars equal to history.csv, the test metrics, the figures
and the config - and a tracker whose package is missing names the extra to install."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reslab.errors import ReslabError
from reslab.train.loop import train

from conftest import history_rows, quick_config

pytestmark = pytest.mark.numerics  # outputs compared across kernels: run with both ISAs


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    config = quick_config(tmp_path_factory.mktemp("tb"), "output.logger=tensorboard", "output.log_every=1")
    return train(config, progress=False)


def test_tensorboard_shows_what_the_run_wrote(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_run.run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    steps = tensorboard_run.metrics["steps"]
    assert [e.step for e in events.Scalars("step/loss")] == list(range(1, steps + 1))  # log_every=1
    assert {"step/lr", "step/images_per_second", "train/loss", "val/accuracy", "test/accuracy"} <= set(scalars)
    rows = history_rows(tensorboard_run.run_dir)
    logged = [e.value for e in events.Scalars("val/accuracy")]
    assert logged == pytest.approx([float(r["val_accuracy"]) for r in rows], abs=1e-6)
    assert [e.step for e in events.Scalars("val/accuracy")] == [int(r["step"]) for r in rows]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(tensorboard_run.metrics["test"]["accuracy"])
    images = events.Tags()["images"]
    assert {"figures/curves", "figures/confusion_matrix"} <= set(images)
    curves = events.Images("figures/curves")[-1]
    assert curves.width > 100 and curves.height > 100
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: resnet8" in config_text and "logger: tensorboard" in config_text


def test_tensorboard_logs_ema_figures_beside_the_live_ones(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = quick_config(tmp_path, "output.logger=tensorboard", "train.ema=0.9", "train.epochs=1",
                          "output.plots=false")
    result = train(config, progress=False)
    events = EventAccumulator(str(result.run_dir))
    events.Reload()
    assert {"ema_val/accuracy", "ema_val/loss", "val/accuracy"} <= set(events.Tags()["scalars"])


def test_a_missing_tracker_package_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    expected = r"output.logger=wandb needs wandb: pip install -e '\.\[wandb\]' in the reslab clone"
    with pytest.raises(ReslabError, match=expected):
        train(quick_config(tmp_path, "output.logger=wandb", "train.epochs=1"), progress=False)


def test_mlflow_keeps_params_metrics_and_figures(tmp_path):
    from mlflow.tracking import MlflowClient

    config = quick_config(tmp_path, "output.logger=mlflow", "output.project=digits-study")
    result = train(config, progress=False)
    uri = f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    run_id = (result.run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == result.run_dir.name
    assert run.data.params["model.name"] == "resnet8" and run.data.params["output.logger"] == "mlflow"
    history = client.get_metric_history(run_id, "val/accuracy")
    rows = history_rows(result.run_dir)
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [float(r["val_accuracy"]) for r in rows])
    assert run.data.metrics["test/accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "metrics.json"} <= artifacts
    assert (tmp_path / "runs" / "mlruns").is_dir()  # beside the store, not in the working directory
    assert not (Path.cwd() / "mlruns").exists()


def wandb_records(path):
    """The records of an offline ``.wandb`` file: W&B's 7-byte header, then LevelDB's log
    format (32 KiB blocks of records with a 7-byte header: CRC, length, kind), each record
    a ``wandb_internal_pb2.Record`` - what ``wandb sync`` would upload."""
    from wandb.proto import wandb_internal_pb2

    raw, position, pieces = path.read_bytes(), 7, b""
    while position + 7 <= len(raw):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(raw[position + 4 : position + 6], "little"), raw[position + 6]
        data = raw[position + 7 : position + 7 + length]
        position += 7 + length
        pieces = data if kind in (1, 2) else pieces + data  # full, first / middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def finished_wandb_records(path, seconds: float = 60.0) -> list:
    """The file's records once W&B's writer (a separate process) has written the run's exit
    record: under load it can lag behind ``run.finish()``, and a file read early ends after
    the first few records (seen once in a full suite on a fresh clone)."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + seconds
    while True:
        try:
            records = list(wandb_records(path))
        except DecodeError:  # a record half written
            records = []
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_offline_keeps_every_figure_for_wandb_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = quick_config(tmp_path, "output.logger=wandb", "output.log_every=5")
    result = train(config, progress=False)
    files = list((result.run_dir / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1
    history, summary = {}, {}
    for record in finished_wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[items["_step"]] = items
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update})
    rows = history_rows(result.run_dir)
    assert [history[int(r["step"])]["val/accuracy"] for r in rows] == pytest.approx([float(r["val_accuracy"])
                                                                                    for r in rows])
    assert sorted(s for s, items in history.items() if "step/loss" in items) == list(
        range(5, result.metrics["steps"] + 1, 5))
    assert json.loads(summary["test/accuracy"]) == pytest.approx(result.metrics["test"]["accuracy"])
    assert history[result.metrics["steps"]]["figures/curves/_type"] == "image-file"
