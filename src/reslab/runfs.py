"""Files that never lose a user's results: every write goes to a temporary file in the
same folder, is flushed to disk, then renamed over the target (atomic on POSIX), so a
crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import ReslabError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


# Larger than any JSON file reslab writes by far; a bigger one is the wrong file, and is
# refused before it is read into memory.
MAX_JSON_BYTES = 64 << 20


def read_json(path: Path, kind: str, expect: type | None = dict) -> Any:
    """A JSON file reslab wrote (``kind`` names it in errors: "study manifest", "dataset
    description", ...). A missing, unreadable, oversized or damaged file, or one whose top
    level is not ``expect``, is one error line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ReslabError(f"{kind} {path} is {size:,} bytes, more than any reslab {kind}; is it the right file?")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReslabError(f"{kind} {path} does not exist") from None
    except OSError as exc:
        raise ReslabError(f"cannot read {kind} {path}: {exc.strerror}") from None
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
    """A file a command may write: not a folder, in a folder that exists and is writable."""
    path = Path(path)
    if path.is_dir():
        raise ReslabError(f"--output {path} is a folder; give a file name such as metrics.json")
    if not path.parent.is_dir():
        raise ReslabError(f"--output {path}: folder {path.parent} does not exist")
    check_writable(path.parent)
