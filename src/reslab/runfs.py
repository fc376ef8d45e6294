"""Files that never lose a user's results: every write goes to a temporary file in the
same folder, is flushed to disk, then renamed over the target (atomic on POSIX), so a
crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ReslabError

logger = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for colleagues too
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# The temporary files reslab leaves beside a target when killed mid-write: atomic_write's
# (".NAME." + mkstemp's 8 random characters + ".tmp") and train/run_folder.link_last's
# (".last.PID.tmp"). Nothing else in a run's checkpoints/ folder is named like them.
TEMPORARY_FILE = re.compile(r"\.(?:.+\.[a-z0-9_]{8}|last\.\d+)\.tmp")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed write left in ``folder`` (only reslab's own, by
    name, only there). Call it only where no other process is writing into ``folder``, as
    at the start of a resumed run, which owns its run folder."""
    removed: list[Path] = []
    try:
        candidates = [path for path in Path(folder).iterdir() if TEMPORARY_FILE.fullmatch(path.name)]
    except OSError:
        return removed
    for path in candidates:
        if path.is_file() or path.is_symlink():
            try:
                path.unlink()
            except FileNotFoundError:  # another rank of the same run removed it first
                continue
            except OSError as exc:
                logger.warning("could not remove the stale temporary file %s: %s", path, exc.strerror or exc)
                continue
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) an interrupted write left in %s", len(removed), folder)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


# Larger than any JSON file reslab writes by far; a bigger one is the wrong file, and is
# refused before it is read into memory.
MAX_JSON_BYTES = 64 << 20


def read_capped(path: Path, kind: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a file reslab wrote, refused unread when over ``limit`` (and cut off
    there for a device such as /dev/zero, whose size says nothing). A missing, unreadable or
    oversized file is one error line, naming it as ``kind``."""
    path = Path(path)
    try:
        size, raw = path.stat().st_size, b""
        if size <= limit:
            with path.open("rb") as handle:
                raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise ReslabError(f"{kind} {path} does not exist") from None
    except OSError as exc:
        raise ReslabError(f"cannot read {kind} {path}: {exc.strerror or exc}") from None
    if size > limit or len(raw) > limit:
        shown = f"{size:,}" if size > limit else f"over {limit:,}"
        raise ReslabError(f"{kind} {path} is {shown} bytes, more than any reslab {kind}; is it the right file?")
    return raw


def read_json(path: Path, kind: str, expect: type | None = dict) -> Any:
    """A JSON file reslab wrote (``kind`` names it in errors: "study manifest", "dataset
    description", ...). A missing, unreadable, oversized or damaged file, or one whose top
    level is not ``expect``, is one error line."""
    path = Path(path)
    raw = read_capped(path, kind)
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ReslabError(f"{kind} {path} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if expect is not None and not isinstance(data, expect):
        raise ReslabError(f"{kind} {path} is damaged: a JSON {'object' if expect is dict else expect.__name__} "
                          f"was expected, not {type(data).__name__}")
    return data


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_run_dir(parent: Path, name: str) -> Path:
    """Create ``parent/name`` for a new run; an existing folder is never reused or overwritten."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create output folder {parent}: {exc.strerror}") from None
    check_writable(parent)
    run_dir = parent / name
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise ReslabError(
            f"run folder {run_dir} already exists; choose another output.name, or continue it with --resume {run_dir}"
        ) from None
    except OSError as exc:
        raise ReslabError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
    return run_dir


def check_writable(folder: Path) -> None:
    """Fail before training, not after it, when results could not be saved."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ReslabError(f"output folder {folder} is not writable: {exc.strerror}") from None


def check_output_file(path: Path) -> None:
    """A file a command may write: not a folder, not a file of a run folder, in a folder that
    exists and is writable."""
    path = Path(path)
    if path.is_dir():
        raise ReslabError(f"--output {path} is a folder; give a file name such as metrics.json")
    if not path.parent.is_dir():
        raise ReslabError(f"--output {path}: folder {path.parent} does not exist")
    refuse_run_file(path, path, "write it elsewhere")
    check_writable(path.parent)


# What marks a folder as a run's, and decides how reslab reads it (train/run_folder.py):
# written into a run folder by another command, one of these would make an unfinished
# run look finished, or change what resume, evaluate, predict and report read.
RUN_STATE_FILES = frozenset({"config.yaml", "metrics.json", "history.csv", "environment.json", "dataset.json",
                             "calibration.json", "robustness.json"})
CHECKPOINT_FILE = re.compile(r"best\.pt|last\.pt|epoch-\d+\.pt")


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a reslab run folder: a config.yaml beside a checkpoints/ folder."""
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def refuse_run_file(target: Path, output: Path, advice: str) -> None:
    """A command's ``--output`` never replaces a file a run folder (or its checkpoints/)
    holds, another run's or the one evaluated, nor adds a file by a name reslab keeps there
    (``RUN_STATE_FILES``, checkpoints): ``output`` (as the user gave it) would write
    ``target``; ``advice`` says what to do."""
    target = Path(target)
    if target.exists() and any(is_run_folder(folder) for folder in (target.parent, target.parent.parent)):
        raise ReslabError(f"--output {output} would replace {target}, a file of the run folder "
                          f"{target.parent}; {advice}")
    if ((target.name in RUN_STATE_FILES and is_run_folder(target.parent))
            or (CHECKPOINT_FILE.fullmatch(target.name) and target.parent.name == "checkpoints"
                and is_run_folder(target.parent.parent))):
        raise ReslabError(f"--output {output} would add {target.name} to the run folder {target.parent}, "
                          f"where reslab keeps its own {target.name}; {advice}")
