"""What watches a run as it trains: experiment trackers (TensorBoard, Weights & Biases,
MLflow) and callers such as ``reslab tune`` (which prunes trials on the epoch figures).

The loop calls, on rank 0 only: ``start`` once (a resumed run starts again at its step),
``step`` every ``output.log_every`` steps, ``epoch`` after each validated epoch, ``end``
with the final metrics once the run folder is complete, and ``close`` always. An
observer may stop a run by raising from ``epoch`` (a pruned trial).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..config import RunConfig
from ..errors import ReslabError
from ..extras import missing_extra

logger = logging.getLogger(__name__)

# The run folder's figures, logged as images when the run ends.
FIGURES = ("curves.png", "confusion_matrix.png", "reliability.png")


class Observer:
    """Does nothing; subclasses override what they need."""

    def start(self, run_dir: Path, config: RunConfig, step: int) -> None:
        pass

    def step(self, step: int, values: dict[str, float]) -> None:
        pass

    def epoch(self, step: int, row: dict) -> None:
        pass

    def end(self, run_dir: Path, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_figures(row: dict) -> dict[str, float]:
    """A history row as tracker tags: ``train/loss``, ``val/accuracy``, ``ema_val/accuracy``, ..."""
    tags = {}
    for key, value in row.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "step":
            continue
        for prefix in ("ema_val_", "val_", "train_"):
            if key.startswith(prefix):
                tags[f"{prefix[:-1]}/{key[len(prefix):]}"] = float(value)
                break
        else:
            tags[f"epoch/{key}"] = float(value)
    return tags


def test_figures(metrics: dict) -> dict[str, float]:
    """The final test figures (numbers only) as ``test/<name>``."""
    test = metrics.get("test") or {}
    return {f"test/{key}": float(value) for key, value in test.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _figures(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in FIGURES if (run_dir / name).is_file()]


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(f"output.logger={extra}", extra) from None


class TensorBoardLogger(Observer):
    """Event files in the run folder itself, so ``tensorboard --logdir runs`` lists each run
    under its folder's name. A resumed run purges what was logged after its checkpoint."""

    def __init__(self):
        self.writer = None

    def start(self, run_dir: Path, config: RunConfig, step: int) -> None:
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=step if step else None)
        if step == 0:
            text = yaml.safe_dump(config.to_dict(), sort_keys=False)
            self.writer.add_text("config", "```yaml\n" + text + "```", 0)

    def step(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(f"step/{tag}", value, step)

    def epoch(self, step: int, row: dict) -> None:
        for tag, value in epoch_figures(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def end(self, run_dir: Path, metrics: dict) -> None:
        step = metrics.get("steps", 0)
        for tag, value in test_figures(metrics).items():
            self.writer.add_scalar(tag, value, step)
        for path in _figures(run_dir):
            self.writer.add_image(f"figures/{path.stem}", _read_png(path), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbLogger(Observer):
    """Weights & Biases: one W&B run per run folder (its id is the folder's name, so a resumed
    run continues it). ``WANDB_MODE=offline`` keeps everything on disk (``wandb sync`` later)."""

    def __init__(self, project: str):
        self.project = project
        self.run: Any = None  # wandb's Run, once started

    def start(self, run_dir: Path, config: RunConfig, step: int) -> None:
        wandb = _need("wandb", "wandb")
        self.run = wandb.init(project=self.project, name=run_dir.name, id=_run_id(run_dir.name), dir=str(run_dir),
                              config=config.to_dict(), resume="allow", reinit="create_new")

    def step(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"step/{tag}": value for tag, value in values.items()}, step=step)

    def epoch(self, step: int, row: dict) -> None:
        self.run.log(epoch_figures(row), step=step)

    def end(self, run_dir: Path, metrics: dict) -> None:
        import wandb

        self.run.summary.update(test_figures(metrics))
        self.run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in _figures(run_dir)},
                     step=metrics.get("steps", 0))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


class MlflowLogger(Observer):
    """MLflow: one MLflow run per run folder (its id kept in ``mlflow_run_id``, so a resumed
    run continues it); the config as parameters, the figures as artifacts. The store is
    ``output.tracking_uri``, by default a SQLite file ``mlflow.db`` beside the run folders,
    with the artifacts in ``mlruns/`` there."""

    def __init__(self, project: str, tracking_uri: str | None):
        self.project, self.tracking_uri = project, tracking_uri
        self.mlflow: Any = None  # the mlflow module, once started
        if tracking_uri is not None:
            probe_tracking_server(tracking_uri)  # before the data loads, not a minute into the run

    def start(self, run_dir: Path, config: RunConfig, step: int) -> None:
        mlflow = self.mlflow = _need("mlflow", "mlflow")
        store = run_dir.parent.resolve()
        uri = self.tracking_uri or f"sqlite:///{store / 'mlflow.db'}"
        try:
            with _bounded_http():
                self._start(mlflow, uri, store, run_dir, config)
        except (mlflow.exceptions.MlflowException, OSError, *_database_errors()) as exc:
            raise ReslabError(f"output.tracking_uri {_shown_uri(uri)}: MLflow cannot use this store: "
                              f"{_first_sentence(exc)}; give a writable database store (sqlite:///PATH/mlflow.db) "
                              "or a running server (http://HOST:PORT)") from None

    def _start(self, mlflow, uri: str, store: Path, run_dir: Path, config: RunConfig) -> None:
        mlflow.set_tracking_uri(uri)
        if self.tracking_uri is None and mlflow.get_experiment_by_name(self.project) is None:
            try:  # artifacts beside the store, not in the working directory (MLflow's default)
                mlflow.create_experiment(self.project, artifact_location=(store / "mlruns").as_uri())
            except mlflow.exceptions.MlflowException:
                pass  # another process created it first
        mlflow.set_experiment(self.project)
        id_file = run_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_dir.name)
        if run_id is None:
            from ..runfs import atomic_write_text

            atomic_write_text(id_file, run.info.run_id)
            mlflow.log_params(_flat(config.to_dict()))

    def step(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"step/{tag}": value for tag, value in values.items()}, step=step)

    def epoch(self, step: int, row: dict) -> None:
        self.mlflow.log_metrics(epoch_figures(row), step=step)

    def end(self, run_dir: Path, metrics: dict) -> None:
        self.mlflow.log_metrics(test_figures(metrics), step=metrics.get("steps", 0))
        for path in [*_figures(run_dir), run_dir / "metrics.json"]:
            self.mlflow.log_artifact(str(path))

    def close(self) -> None:
        if self.mlflow is not None and self.mlflow.active_run() is not None:
            self.mlflow.end_run()


# A tracking server must answer a connection within this many seconds, before the run starts
# (nothing listening is refused at once; a black-holed address waits this long).
TRACKING_PROBE_SECONDS = 5.0
# MLflow's HTTP requests while the run starts (where the user has not set them): its defaults
# retry 7 times with back-off and wait 120 s each, minutes before a dead server is reported.
STARTING_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def probe_tracking_server(uri: str) -> None:
    """One error line unless an http(s) tracking server accepts a connection; other stores
    (files, databases) are checked when the run starts."""
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        raise ReslabError(f"output.tracking_uri {_shown_uri(uri)} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        return
    if not host:
        raise ReslabError(f"output.tracking_uri {_shown_uri(uri)} names no host; give http://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=TRACKING_PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise ReslabError(f"the MLflow tracking server at {host}:{port} is unreachable ({reason.lower()}); start it, "
                          "or fix output.tracking_uri") from None


@contextlib.contextmanager
def _bounded_http():
    saved = {key: os.environ.get(key) for key in STARTING_HTTP_SETTINGS}
    for key, value in STARTING_HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _database_errors() -> tuple[type[BaseException], ...]:
    try:
        import sqlalchemy.exc
    except ImportError:  # mlflow-skinny without a database store
        return ()
    return (sqlalchemy.exc.SQLAlchemyError,)


def _first_sentence(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


def _shown_uri(uri: str) -> str:
    """The URI for an error line, without a password and cut to 100 characters."""
    shown = re.sub(r"//[^/@]*@", "//***@", uri)
    return repr(shown if len(shown) <= 100 else shown[:97] + "...")


def build_logger(config: RunConfig) -> Observer | None:
    """The tracker ``output.logger`` names, or None; a missing package is an error before
    anything is trained."""
    name = config.output.logger
    if name != "none":
        _need({"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[name], name)
    if name == "tensorboard":
        return TensorBoardLogger()
    if name == "wandb":
        return WandbLogger(config.output.project)
    if name == "mlflow":
        return MlflowLogger(config.output.project, config.output.tracking_uri)
    return None


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _run_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64]


def _read_png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
