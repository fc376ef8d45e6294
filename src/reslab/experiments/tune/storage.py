"""The study's Optuna storage: an RDBStorage (SQLite by default) whose heartbeat Optuna's
``study.optimize`` beats while a trial runs, and whose stale-trial callback, Optuna's
``RetryHeartbeatStaleTrialCallback``, queues a dead worker's trial again. Opening it turns
what a user can get wrong (a missing driver, a read-only or damaged file) into one line."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from pathlib import Path

from ...errors import ReslabError

logger = logging.getLogger(__name__)

GRACE_HEARTBEATS = 3  # a trial with no heartbeat for this many intervals is taken as dead
MAX_RETRIES = 3  # a trial is queued again at most this many times (then it counts as failed)
TABLE_RACE_RETRIES = 10  # attempts to open a storage whose tables another worker is creating


def open_storage(url: str, heartbeat: int):
    import sqlalchemy.exc

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):].split("?")[0].removeprefix("file:"))  # also SQLite's file: URIs
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReslabError(f"cannot create the folder of {path}: {exc.strerror}") from None
        engine = {"connect_args": {"timeout": 120}}  # workers wait for each other's writes
    else:
        engine = {"pool_pre_ping": True}
    for attempt in range(TABLE_RACE_RETRIES + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental" in Optuna
            try:
                return _storage_class()(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                    grace_period=GRACE_HEARTBEATS * heartbeat, heartbeat_stale_trial_callback=retry_callback())
            except (ImportError, ModuleNotFoundError) as exc:
                raise ReslabError(f"storage {redact(url)}: its database driver is not installed ({exc})") from None
            except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError) as exc:  # Runtime: old schema
                if attempt < TABLE_RACE_RETRIES and _lost_table_race(exc):
                    time.sleep(0.2 * (attempt + 1))  # another worker is creating the tables: join them once made
                    continue
                raise ReslabError(f"cannot open the study storage {redact(url)}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None


@functools.cache
def _storage_class():
    import optuna
    import sqlalchemy.exc

    class Storage(optuna.storages.RDBStorage):
        """Optuna's RDBStorage, with a heartbeat that outlives a refused write (a busy or
        briefly unreachable database): Optuna's heartbeat thread ends at the first error, and
        the trial, still training, would then be taken for dead and run twice."""

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
                logger.debug("heartbeat not recorded (beats again next interval): %s", exc)

    return Storage


def _lost_table_race(exc: Exception) -> bool:
    """Whether opening a new storage failed because another process created its tables (or
    their version row) at the same moment: workers started together meet this, and a retry
    finds the tables made."""
    text = str(exc).lower()  # not "database is locked": SQLite has already waited its 120 s timeout for that
    return any(sign in text for sign in ("already exists", "unique constraint", "duplicate"))


@contextlib.contextmanager
def storage_errors(url: str):
    """A storage that opened but refuses to be written (a read-only file or folder, a full
    disk) or read (a damaged file): one error line naming it, with the database's own reason."""
    import optuna
    import sqlalchemy.exc

    try:
        yield
    # Optuna asserts on rows it cannot read back (a NaN intermediate value stored as NULL): damage too.
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, AssertionError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        reason = (str(getattr(cause, "orig", None) or cause).splitlines() or [type(cause).__name__])[0][:200]
        raise ReslabError(f"cannot use the study storage {redact(url)}: {reason} (a read-only or "
                          "damaged file? give another --out or --storage)") from None


def redact(url: str) -> str:
    """A storage URL without its password (for logs, reports and job records)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# ---------------------------------------------------------------- a trial queued again


def retry_callback():
    """Optuna's retry: a WAITING copy of the trial with its parameters, user attributes and
    reported epochs, which records the first attempt's number (the run folder its worker
    resumes). The storage calls it for a dead worker's trial; a worker calls it for a trial
    it stops (worker.py)."""
    import optuna

    with _experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES,
                                                                inherit_intermediate_values=True)


def first_attempt(trial) -> int | None:
    """The number of the attempt a retry resumes, or None for a first attempt."""
    import optuna

    with _experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_history(trial) -> list[int]:
    """The attempts before this one, oldest first (empty for a first attempt)."""
    import optuna

    with _experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


@contextlib.contextmanager
def _experimental():
    """Optuna marks its retry callback and its readers "experimental": not a warning for users."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
