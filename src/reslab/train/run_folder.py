"""The run folder and what reads it: a run's files, its result read back, and the rules for
continuing one.

    runs/<name>/
      config.yaml        the resolved config (a resumed run may change only RESUMABLE_CHANGES)
      environment.json   versions, device, command
      dataset.json       sizes, classes, normalization
      history.csv        a row per epoch (HISTORY_FIELDS)
      checkpoints/       epoch-N.pt (the last K), best.pt, last.pt (a hard link, or the
                         mid-epoch state after a stop)
      metrics.json       written last: its presence marks the run finished
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import yaml

from .. import __version__
from ..checkpoint import epoch_checkpoints, load_checkpoint, prune, save_checkpoint
from ..config import RunConfig, apply_overrides, from_dict, safe_yaml
from ..errors import ReslabError
from ..runfs import (
    MAX_JSON_BYTES,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    read_capped,
    remove_stale_temporaries,
)

logger = logging.getLogger(__name__)

# val_* are the live weights' figures; ema_val_* the averaged weights' (runs with train.ema).
VAL_FIGURES = ["loss", "accuracy", "error", "macro_f1", "map"]
HISTORY_FIELDS = ["epoch", "step", "lr", "train_loss", "train_accuracy", *(f"val_{k}" for k in VAL_FIGURES),
                  *(f"ema_val_{k}" for k in VAL_FIGURES), "epoch_seconds", "images_per_second"]

# What a run may be continued (or reused by a study) with: where it runs may change for any
# run; how long it trains, only for an unfinished one. What it learns from never changes.
RUN_LOCATION = {"train.device", "train.threads", "train.eval_batch_size", "output.plots", "output.keep_last",
                "output.dir", "output.name", "data.root", "data.download", "data.workers", "output.logger",
                "output.log_every", "output.project", "output.tracking_uri"}
RUN_LENGTH = {"train.epochs", "train.max_iters", "train.time_limit"}
RESUMABLE_CHANGES = RUN_LOCATION | RUN_LENGTH
# Schedules planned over the whole run: a resumed run following one keeps its length.
LENGTH_SCHEDULES = ("onecycle", "cosine")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # what metrics.json holds
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- making and continuing a run


def create_run_folder(config: RunConfig, name: str, environment: dict, dataset: dict) -> Path:
    """A new run folder with its config, environment and dataset description (never an existing one)."""
    run_dir = new_run_dir(Path(config.output.dir), name)
    (run_dir / "checkpoints").mkdir()
    config.save(run_dir / "config.yaml")
    atomic_write_json(run_dir / "environment.json", environment)
    atomic_write_json(run_dir / "dataset.json", dataset)
    return run_dir


def default_run_name(config: RunConfig) -> str:
    return config.output.name or f"{config.model.name}-{config.data.name}-{datetime.now():%Y%m%d-%H%M%S}"


def elastic_run_name(config: RunConfig) -> str | None:
    """Under ``torchrun --max-restarts N`` every restart must find the run it restarts: with
    no ``output.name``, name the run after torchrun's run id (TORCHELASTIC_RUN_ID, the same
    for every restart of one job), so the unfinished run is continued instead of begun again."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if config.output.name is not None or run_id in ("", "none"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id)[:64]
    return f"{config.model.name}-{config.data.name}-{safe}"


def unfinished_twin(config: RunConfig) -> Path | None:
    """The folder ``output.name`` names, when it holds an unfinished run of this very config."""
    if config.output.name is None:
        return None
    folder = Path(config.output.dir) / config.output.name
    if not (folder / "config.yaml").is_file() or (folder / "metrics.json").is_file():
        return None
    try:
        saved = read_run_yaml(folder)
    except ReslabError:
        return None
    wanted = copy.deepcopy(config)
    adopt_sizing(wanted, flatten(saved))
    if saved != wanted.to_dict():
        return None  # new_run_dir refuses it, naming --resume
    logger.info("continuing the unfinished run in %s", folder)
    return folder


def check_resumable(run_dir: Path, config: RunConfig) -> None:
    """Refuse to continue or reuse ``run_dir`` with another model, data, split or recipe (or a
    finished run with another length); allowed changes are written into its config.yaml."""
    saved = flatten(read_run_yaml(run_dir))
    adopt_sizing(config, saved)
    wanted = flatten(config.to_dict())
    changed = [key for key, value in wanted.items() if saved.get(key, value) != value]
    finished = (run_dir / "metrics.json").is_file()
    forbidden = [key for key in changed if key not in (RUN_LOCATION if finished else RESUMABLE_CHANGES)]
    if forbidden:
        key = forbidden[0]
        if finished:
            raise ReslabError(f"{run_dir} is a finished run trained with {key}={saved[key]}; it cannot change "
                              f"to {wanted[key]!r} now: start a new run (or move that folder away)")
        raise ReslabError(f"{run_dir} was trained with {key}={saved[key]}, not {wanted[key]}; "
                          f"a resumed run may only change {', '.join(sorted(RESUMABLE_CHANGES))}")
    longer = [key for key in changed if key in RUN_LENGTH]
    if longer and not finished and config.schedule.name in LENGTH_SCHEDULES:
        raise ReslabError(f"{run_dir} follows schedule.name={config.schedule.name}, whose rate is planned over the "
                          f"run's length, so {longer[0]} cannot change on resume (the rate would jump); start a new "
                          "run, or use schedule.name=multistep or constant to train longer")
    if changed and not finished:
        config.save(run_dir / "config.yaml")


# What a run sized to its data fills in when it starts (setup.size_to_data).
SIZED_KEYS = ("train.epochs", "train.batch_size", "schedule.warmup_iters")


def adopt_sizing(config: RunConfig, saved: dict) -> None:
    """A config that leaves the length to the data continues a run with the sizes that run
    chose (``saved``: its flattened config.yaml), so a study or the same command again reuses
    or resumes it rather than seeing another recipe."""
    if not config.train.sized_to_data or saved.get("train.epochs") is None:
        return
    for key in SIZED_KEYS:
        section, name = key.split(".")
        setattr(getattr(config, section), name, saved.get(key, getattr(getattr(config, section), name)))


def flatten(nested: dict) -> dict:
    return {f"{section}.{key}": value for section, values in nested.items() for key, value in values.items()}


def latest_checkpoint(run_dir: Path) -> dict | None:
    """The newest readable checkpoint: last.pt, else the newest epoch checkpoint that loads.
    None when the run was stopped before its first checkpoint (it starts again). Read as the
    run is continued, which owns the folder from here on: the temporary files of a save that
    a kill interrupted are removed first."""
    if not (run_dir / "config.yaml").is_file():
        raise ReslabError(f"{run_dir} is not a reslab run folder (no config.yaml)")
    remove_stale_temporaries(run_dir / "checkpoints")
    candidates = [run_dir / "checkpoints" / "last.pt", *reversed(epoch_checkpoints(run_dir))]
    problems = []
    for path in candidates:
        if path.is_file():
            try:
                return load_checkpoint(path)
            except ReslabError as exc:
                problems.append(str(exc))
    if problems:
        raise ReslabError(f"no readable checkpoint in {run_dir}: {problems[0]}")
    return None


# A run's config.yaml is a few KB; a larger one is the wrong file, refused before it is read.
MAX_CONFIG_BYTES = 1 << 20


def read_run_yaml(run_dir: Path) -> dict:
    """A run's saved config.yaml: a mapping of sections (model:, data:, ...), each a mapping."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ReslabError(f"{run_dir} is not a reslab run folder (no config.yaml)")
    raw = read_capped(path, "run config file", MAX_CONFIG_BYTES)
    try:
        data = safe_yaml(raw.decode())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: a bad date
        raise ReslabError(f"run config file {path} is not valid YAML: {_first_line(exc)}") from None
    if not isinstance(data, dict) or not all(isinstance(section, dict) for section in data.values()):
        raise ReslabError(f"run config file {path} is damaged: a mapping of sections was expected")
    return data


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    return apply_overrides(from_dict(read_run_yaml(run_dir)), overrides or [])


def environment(device: torch.device, world_size: int) -> dict:
    import numpy
    import sklearn
    import torchvision

    info = {
        "reslab": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "device": str(device), "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "processes": world_size,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
    return info


# ---------------------------------------------------------------- writing as it trains


def save(path: Path, state: dict) -> None:
    try:
        save_checkpoint(path, state)
    except OSError as exc:
        raise ReslabError(f"could not write {path} ({exc.strerror or exc}); the checkpoints already in "
                          f"{path.parent} are intact") from None


def save_epoch(run_dir: Path, epoch: int, state: dict, keep_last: int) -> None:
    """checkpoints/epoch-N.pt, last.pt pointing at it, and only the last ``keep_last`` kept."""
    path = run_dir / "checkpoints" / f"epoch-{epoch:04d}.pt"
    save(path, state)
    link_last(path)
    prune(run_dir, keep_last)


def link_last(path: Path) -> None:
    """Point checkpoints/last.pt at ``path`` atomically (a hard link: no second copy)."""
    temporary = path.parent / f".last.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:  # a filesystem without hard links: copy
        shutil.copyfile(path, temporary)
    os.replace(temporary, path.parent / "last.pt")


def write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- reading a finished run


def load_result(run_dir: Path) -> RunResult:
    """A finished run's result, read back from its folder (a damaged file is one error line)."""
    path = Path(run_dir) / "metrics.json"
    raw = read_capped(path, "metrics file")  # a huge or endless file is refused unread
    try:
        metrics = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReslabError(f"{path} is not readable JSON ({str(exc).splitlines()[0][:120]}); the run's "
                          "checkpoints can be evaluated again with reslab evaluate") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict):
        raise ReslabError(f"{path} is not a reslab metrics file (no test figures)")
    return RunResult(Path(run_dir), metrics, read_history(run_dir))


def read_history(run_dir: Path | str) -> list[dict]:
    """A run's history.csv, a dict of numbers per epoch (None for an empty cell); [] where
    the run has not finished an epoch. The one reader of it (reports, tune, job progress);
    a damaged or oversized file is one ReslabError."""
    history_path = Path(run_dir) / "history.csv"
    if not history_path.is_file():
        return []
    try:
        if history_path.stat().st_size > MAX_HISTORY_BYTES:
            raise ValueError(f"{history_path.stat().st_size:,} bytes, more than any run's history")
        with history_path.open() as handle:
            rows = list(csv.DictReader(handle))
        if any(None in row for row in rows):  # csv keeps the cells past the header's under None
            raise ValueError("a row has more cells than the header")
        history = [{k: _number(v) for k, v in row.items()} for row in rows]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise ReslabError(f"{history_path} is not a reslab history file ({str(exc)[:120]})") from None
    problem = _history_problem(history)
    if problem:
        raise ReslabError(f"{history_path} is not a reslab history file ({problem})")
    return history


MAX_HISTORY_BYTES = MAX_JSON_BYTES  # a row per epoch: a few hundred KB for the longest runs
# What every row of a history has (the training figures are the running epoch's, always there).
HISTORY_REQUIRED = ("epoch", "train_loss", "train_accuracy")


def _history_problem(history: list[dict]) -> str | None:
    for row in history:
        missing = [key for key in HISTORY_REQUIRED if row.get(key) is None]
        if missing:
            return f"epoch {row.get('epoch')}: no {missing[0]}"
        if not (math.isfinite(row["epoch"]) and math.isfinite(row["train_accuracy"])):
            return f"epoch {row['epoch']}: not a finite epoch and training accuracy"
    return None


def _number(text) -> float | None:
    if text in ("", None):
        return None
    return float(text)  # a ValueError names a damaged history
