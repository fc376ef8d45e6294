"""Bad input at the edges of Python's and the libraries' limits (issue 28): integers too long
for int(), seeds NumPy refuses, a web client that trickles its request, a tuning study's
damaged or read-only storage, an unreachable tracking server, an image size the model's
family does not take. Each is one error line (or an HTTP 4xx), never a traceback or a hang."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml
from torch import nn

import reslab.inference.server as server_module
from reslab.config import load
from reslab.errors import ReslabError
from reslab.train.loop import train

from conftest import assert_one_error_line, quick_config, run_cli

HUGE = "1" * 5000  # over Python's 4,300-digit limit for int("...")
TINY_RUN = ["--config", "demo-digits", "model.name=resnet8", "train.epochs=1", "train.max_iters=null",
            "data.train_size=100", "output.plots=false", "train.threads=1", "--no-progress"]


# ---------------------------------------------------------------- integers over 4,300 digits


def test_a_huge_integer_in_a_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"train:\n  seed: {HUGE}\n")
    line = assert_one_error_line(run_cli(capsys, "train", "--config", config), "not valid YAML", "5,000 characters")
    assert len(line) < 300


@pytest.mark.parametrize("argv", [
    ["train", f"train.seed={HUGE}"],
    ["train", "--seed", HUGE],
    ["train", f"data.coco_year={HUGE}"],  # a Literal of numbers: int() of the text
    ["train", "model.freeze=²"],  # "²".isdigit(), but int("²") fails
    ["train", f"model.freeze={HUGE}"],
    ["train", f"train.seed=0b{'1' * 20000}"],  # base 2 has no digit limit: a 20,000-bit seed
])
def test_a_huge_integer_on_the_command_line_is_one_line(argv, capsys):
    line = assert_one_error_line(run_cli(capsys, *argv), "config key")
    assert len(line) < 300


def test_a_huge_integer_given_to_the_library_is_named_not_written_out():
    from reslab.config import RunConfig, validate

    config = RunConfig()
    config.train.seed = 2**20000  # repr() of it would raise
    with pytest.raises(ReslabError, match="'train.seed' must be in .* got an integer of 20,001 bits"):
        validate(config)


@pytest.mark.parametrize("seed", [str(2**32), HUGE, "-1"])
def test_the_tune_seed_flag_takes_what_numpy_takes(seed, capsys):
    line = assert_one_error_line(run_cli(capsys, "tune", "digits", "--seed", seed), "--seed", "2**32")
    assert len(line) < 200


def test_a_huge_class_index_is_one_error_line(tmp_path, capsys):
    from PIL import Image

    result = train(quick_config(tmp_path, "train.epochs=1"), progress=False)
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    assert_one_error_line(run_cli(capsys, "predict", result.run_dir, tmp_path / "digit.png", "--explain",
                                  tmp_path / "cams", "--class", "9" * 5000), "unknown class")


# ---------------------------------------------------------------- reslab serve


@pytest.fixture
def tiny_server():
    meta = {"model": "tiny", "classes": ["a", "b"], "image_size": [8, 8], "in_channels": 1}
    server = server_module.make_server(nn.Linear(2, 2), meta, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def answer(port: int, method: str, path: str, headers: dict) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("length", [HUGE, "²", "-1", "1e3"])
def test_a_content_length_int_cannot_read_is_a_400_and_the_server_stays_up(tiny_server, length):
    status, body = answer(tiny_server, "POST", "/api/predict", {"Content-Length": length})
    assert status == 400 and "invalid Content-Length" in body["error"] and len(body["error"]) < 200
    assert answer(tiny_server, "GET", "/api/info", {})[0] == 200


@pytest.mark.parametrize("megabytes", ["inf", "nan", "-1", "0", "1e300"])
def test_a_max_upload_that_is_not_a_size_is_one_line_before_the_model_loads(megabytes, tmp_path, capsys):
    # the checkpoint does not exist: the flag is refused first
    assert_one_error_line(run_cli(capsys, "serve", tmp_path / "none.pt", "--max-upload-mb", megabytes),
                          "--max-upload-mb")


def trickle_on(client: socket.socket, data: bytes, every: float, limit: float) -> tuple[bytes, float]:
    """Send ``data`` a byte each ``every`` seconds until the server answers or closes, or
    ``limit`` seconds pass; returns what it sent back and the seconds taken."""
    started = time.monotonic()
    client.settimeout(every)
    received = b""
    for byte in data:
        if time.monotonic() - started > limit:
            break
        try:
            client.send(bytes([byte]))
        except OSError:
            break
        try:
            chunk = client.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        received += chunk
        break  # an answer, or the connection closed
    return received, time.monotonic() - started


def test_a_body_trickled_a_byte_at_a_time_gets_a_408_at_the_deadline(tiny_server, monkeypatch):
    monkeypatch.setattr(server_module, "REQUEST_DEADLINE_SECONDS", 1.0)
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", tiny_server), timeout=10) as client:
        client.sendall(head)
        received, seconds = trickle_on(client, b"\0" * 1000, every=0.1, limit=5.0)
    assert seconds < 3.0
    assert received.startswith((b"HTTP/1.0 408", b"HTTP/1.1 408"))


def test_headers_trickled_a_byte_at_a_time_are_dropped_at_the_deadline(tiny_server, monkeypatch):
    monkeypatch.setattr(server_module, "REQUEST_DEADLINE_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", tiny_server), timeout=10) as client:
        _, seconds = trickle_on(client, b"POST /api/predict HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 1000, every=0.1,
                                limit=5.0)
    assert seconds < 3.0
    assert answer(tiny_server, "GET", "/api/info", {})[0] == 200


# ---------------------------------------------------------------- reslab tune


def write_space(folder: Path, **settings) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"recipe": "demo-digits", "overrides": ["model.name=resnet8", "train.epochs=1"],
                                    "trials": 1, "optim.lr": {"log_uniform": [0.01, 1]}, **settings}))
    return path


def test_a_space_files_seed_numpy_refuses_is_one_line(tmp_path, capsys):
    space = write_space(tmp_path, seed=2**32)
    assert_one_error_line(run_cli(capsys, "tune", space, "--out", tmp_path / "out", "--no-report"), "seed")


def test_a_nul_in_the_study_name_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/tune-<name>
    space = write_space(tmp_path)
    assert_one_error_line(run_cli(capsys, "tune", space, "--study-name", "a\0b", "--no-report"),
                          "study name", "printable")


def test_a_garbage_study_db_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.db").write_bytes(bytes(range(256)) * 20)
    assert_one_error_line(run_cli(capsys, "tune", write_space(tmp_path), "--out", out, "--no-report"),
                          "study storage")


def test_a_study_db_of_another_schema_version_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with sqlite3.connect(out / "study.db") as db:
        db.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY, schema_version INTEGER, "
                   "library_version VARCHAR(256))")
        db.execute("INSERT INTO version_info VALUES (1, 999, '0.0.1')")
    assert_one_error_line(run_cli(capsys, "tune", write_space(tmp_path), "--out", out, "--no-report"),
                          "study storage", "optuna")


def test_a_read_only_study_db_is_one_line(tmp_path, capsys, monkeypatch):
    import optuna

    monkeypatch.chdir(tmp_path)
    database = tmp_path / "study.db"
    optuna.storages.RDBStorage(f"sqlite:///{database}")  # the tables, no study
    # SQLite's read-only mode: a file root could write still refuses writes this way
    storage = f"sqlite:///file:{database}?mode=ro&uri=true"
    line = assert_one_error_line(run_cli(capsys, "tune", write_space(tmp_path), "--storage", storage,
                                         "--out", tmp_path / "out", "--no-report"), "study storage")
    assert "readonly" in line
    assert not (tmp_path / "file:").exists()  # the URI's folder is the file's, not a folder named file:


def test_a_float_distribution_over_an_integer_key_is_refused_naming_the_key():
    from reslab.experiments.search_space import parse_space

    with pytest.raises(ReslabError) as error:  # 32, 80 and 128 are all whole: only the type tells
        parse_space({"train.batch_size": {"uniform": [32, 128]}}, load("demo-digits"))
    assert "train.batch_size" in str(error.value) and "int_uniform [32, 128]" in str(error.value)


# ---------------------------------------------------------------- MLflow tracking


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_tracking_server_fails_fast_in_one_line(tmp_path, capsys):
    pytest.importorskip("mlflow")
    started = time.monotonic()
    result = run_cli(capsys, "train", *TINY_RUN, f"output.dir={tmp_path}", "output.logger=mlflow",
                     f"output.tracking_uri=http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - started < 30
    assert_one_error_line(result, "tracking server", "unreachable")


@pytest.mark.parametrize("store", ["garbage-db", "a-file", "under-a-file"])
def test_a_tracking_store_mlflow_cannot_use_is_one_line(store, tmp_path, capsys):
    pytest.importorskip("mlflow")
    (tmp_path / "garbage.db").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "plain").write_text("not a store\n")
    uri = {"garbage-db": f"sqlite:///{tmp_path / 'garbage.db'}", "a-file": str(tmp_path / "plain"),
           "under-a-file": f"sqlite:///{tmp_path / 'plain' / 'mlflow.db'}"}[store]  # cannot be written
    assert_one_error_line(run_cli(capsys, "train", *TINY_RUN, f"output.dir={tmp_path / 'runs'}",
                                  "output.logger=mlflow", f"output.tracking_uri={uri}"),
                          "output.tracking_uri", "cannot use this store")


# ---------------------------------------------------------------- data.image_size


def test_an_image_size_over_the_familys_largest_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    from reslab.train import setup

    def no_data(*args, **kwargs):
        raise AssertionError("the data was built for an image size the model refuses")

    monkeypatch.setattr(setup, "build_data", no_data)
    assert_one_error_line(run_cli(capsys, "train", *TINY_RUN, f"output.dir={tmp_path}", "data.image_size=4096"),
                          "data.image_size", "512")
    assert_one_error_line(run_cli(capsys, "train", *TINY_RUN, f"output.dir={tmp_path}", "model.name=resnet18",
                                  "data.image_size=4096"), "data.image_size", "1024")


def test_an_image_size_the_family_takes_passes_the_check():
    from reslab.train.setup import check_image_size

    config = load("demo-digits", ["model.name=resnet8", "data.image_size=512"])
    check_image_size(config)


# ---------------------------------------------------------------- corruption seeds and severities


@pytest.mark.parametrize("seed", [str(2**70), "-1"])
def test_a_corruption_seed_outside_64_bits_is_one_line_before_the_run_loads(seed, tmp_path, capsys):
    line = assert_one_error_line(run_cli(capsys, "evaluate", tmp_path / "no-run", "--corruptions", "fog",
                                         "--corruption-seed", seed), "seed")
    assert "2**63-1" in line


@pytest.mark.parametrize("severities", ["1-100000000000", "0-3", "4-2", f"1-{HUGE}"])
def test_severities_out_of_bounds_are_refused_before_any_range_is_built(severities, tmp_path, capsys):
    # 1-100000000000 once built a range of 10^11 severities (22 GB) before checking the bounds
    assert_one_error_line(run_cli(capsys, "evaluate", tmp_path / "no-run", "--corruptions", "fog",
                                  "--severities", severities), "severities")


def test_validation_outputs_that_turn_nan_end_training_in_one_line(tmp_path, capsys, monkeypatch):
    import torch

    import reslab.train.loop as loop

    real_predict = loop.predict

    def diverged(*args, **kwargs):  # what a run whose weights blew up hands to the metrics
        logits, targets = real_predict(*args, **kwargs)
        return torch.full_like(logits, float("nan")), targets

    monkeypatch.setattr(loop, "predict", diverged)
    line = assert_one_error_line(run_cli(capsys, "train", *TINY_RUN, f"output.dir={tmp_path}"), "diverged")
    assert "optim.lr" in line
