"""Hyper-parameter search on Optuna: ``reslab tune SPACE.yaml``.

A space file is a base recipe and the config keys to search, each with a distribution::

    recipe: demo-digits                # the base recipe (a shipped name or a YAML file)
    overrides: [train.epochs=10]       # section.key=value, applied to every trial
    trials: 12                         # the study's budget (below)
    metric: val_accuracy               # a history.csv column: loss and error minimised, the rest maximised
    pruner: median                     # median, hyperband or none
    optim.lr: {log_uniform: [0.01, 1]}
    optim.weight_decay: {choice: [1.0e-4, 5.0e-4]}
    train.label_smoothing: {uniform: [0, 0.2]}

Distributions: ``uniform``, ``log_uniform``, ``int_uniform``, ``int_log_uniform`` (each
``[low, high]``) and ``choice`` (a list). Optuna's TPE sampler proposes; the pruner
(median or Hyperband) stops a trial whose per-epoch validation figure falls behind, fed
by the training loop's observers (train/observers.py). For ``val_*`` metrics a run that
averages weights counts the better of its live and averaged figures each epoch, the
weights reslab keeps; a trial's value is its best epoch.

The study lives in an Optuna storage, ``<out>/study.db`` (SQLite) unless ``--storage``
names another database (PostgreSQL for many workers on a cluster). Every trial is an
ordinary run folder, ``<out>/trials/trial-NNNN``, so ``reslab report``, ``evaluate`` and
``predict`` work on it.

The budget is the whole study's: ``trials`` finished trials (complete, pruned, or failed
for good), whoever ran them. A ``reslab tune`` started again after a kill, or several
sharing one study, stop together when the study has them. A trial whose process is
stopped (SIGTERM, a cluster's time limit) or dies (no heartbeat for
``GRACE_HEARTBEATS x heartbeat`` seconds) is queued again with the same parameters, and
the worker that takes it resumes its run folder from its checkpoint, so no trial is lost
and none is run twice. The first trial is the base recipe's own values (those the space
holds), so the search is measured against the recipe on the same budget.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import RunConfig, from_dict, load, validate
from ..errors import Interrupted, ReslabError
from ..extras import missing_extra
from ..runfs import atomic_write_json, atomic_write_text
from ..train.loop import train
from ..train.observers import Observer
from ..train.run_folder import VAL_FIGURES
from .search_space import Parameter, parse_space, read_space_file, space_names

logger = logging.getLogger(__name__)

SETTING_KEYS = ("name", "recipe", "overrides", "trials", "metric", "pruner", "seed", "out", "storage", "heartbeat",
                "baseline", "launcher")
PRUNERS = ("median", "hyperband", "none")
METRICS = tuple([f"val_{k}" for k in VAL_FIGURES] + [f"ema_val_{k}" for k in VAL_FIGURES]
                + ["train_loss", "train_accuracy"])
GRACE_HEARTBEATS = 3  # a trial with no heartbeat for this many intervals is taken as dead
MAX_RETRIES = 3  # a trial is queued again at most this many times (then it counts as failed)
FAILURES_IN_A_ROW = 3  # a worker stops after this many failed trials in a row (a broken setup)


# ---------------------------------------------------------------- settings


@dataclass
class TuneSettings:
    name: str
    space: list[Parameter]
    recipe: str | None
    overrides: list[str]
    trials: int
    metric: str
    pruner: str
    out: Path
    storage: str
    seed: int | None = None
    heartbeat: int = 30  # seconds between a running trial's heartbeats
    baseline: bool = True  # the first trial is the base recipe's values
    launcher: dict = field(default_factory=dict)  # the space file's launcher: section
    source: Path | None = None  # the space file

    @property
    def direction(self) -> str:
        return "minimize" if self.metric.endswith(("loss", "error")) else "maximize"

    def base_config(self) -> RunConfig:
        return load(self.recipe, self.overrides)

    def distributions(self) -> dict:
        return {p.key: p.distribution() for p in self.space}

    def identity(self) -> dict:
        """What every process sharing the study must agree on."""
        return {"recipe": self.recipe, "overrides": self.overrides, "metric": self.metric,
                "space": {p.key: {p.kind: p.values} for p in self.space}}


def tune_settings(items: list[str], recipe: str | None = None, trials: int | None = None, out: str | None = None,
                  storage: str | None = None, metric: str | None = None, pruner: str | None = None,
                  epochs: int | None = None, seed: int | None = None, heartbeat: int | None = None,
                  study_name: str | None = None) -> TuneSettings:
    """The settings ``reslab tune`` asks for: a space file (or shipped space) among ``items``,
    the rest section.key=value overrides for every trial; the flags win over the file."""
    need_optuna()
    sources = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(sources) != 1:
        raise ReslabError("tune takes one search space file (reslab tune SPACE.yaml [section.key=value ...]); "
                          f"shipped spaces: {', '.join(space_names()) or 'none'}")
    data, default_name, path = read_space_file(sources[0])
    settings = {key: value for key, value in data.items() if "." not in str(key)}
    entries = {key: value for key, value in data.items() if "." in str(key)}
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise ReslabError(f"unknown space file key {unknown[0]!r}: a space file has {', '.join(SETTING_KEYS)} and "
                          "section.key entries to search")
    name = _study_name(str(study_name or settings.get("name") or default_name))
    file_overrides = settings.get("overrides") or []
    if not isinstance(file_overrides, list):
        raise ReslabError("space file key 'overrides' must be a list of section.key=value")
    flags = [f"train.epochs={epochs}", "train.max_iters=null"] if epochs is not None else []
    all_overrides = [str(o) for o in file_overrides] + flags + overrides
    base = load(recipe or settings.get("recipe"), all_overrides)
    metric = str(metric or settings.get("metric") or "val_accuracy")
    if metric not in METRICS:
        raise ReslabError(f"metric {metric!r} is not a per-epoch figure; use one of {', '.join(METRICS)}")
    if "val" in metric and base.data.val_size == 0:
        raise ReslabError(f"metric {metric} needs a validation split: data.val_size is 0 in the base recipe")
    pruner = str(pruner or settings.get("pruner") or "median")
    if pruner not in PRUNERS:
        raise ReslabError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    trials = _positive(trials if trials is not None else settings.get("trials", 20), "trials")
    heartbeat = _positive(heartbeat if heartbeat is not None else settings.get("heartbeat", 30), "heartbeat")
    seed = seed if seed is not None else settings.get("seed")
    if seed is not None:
        seed = _positive(seed, "seed", least=0, most=MAX_SEED)
    out = Path(out or settings.get("out") or Path("runs") / f"tune-{name}")
    launcher = settings.get("launcher") or {}
    return TuneSettings(
        name=name, space=parse_space(entries, base), recipe=recipe or settings.get("recipe"),
        overrides=all_overrides, trials=trials, metric=metric, pruner=pruner, out=out,
        storage=str(storage or settings.get("storage") or f"sqlite:///{out.resolve() / 'study.db'}"),
        seed=seed, heartbeat=heartbeat, baseline=bool(settings.get("baseline", True)),
        launcher=launcher if isinstance(launcher, dict) else {"name": launcher}, source=path)


def need_optuna():
    """Optuna, or one line saying how to install it (an optional dependency)."""
    try:
        import optuna
    except ImportError:
        raise missing_extra("reslab tune", "tune") from None
    return optuna


def _positive(value, key: str, least: int = 1, most: int = 10**9) -> int:
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(most))) or not least <= int(text) <= most:
        shown = repr(value) if len(text) <= 20 else f"{text[:20]!r}... ({len(text)} characters)"
        raise ReslabError(f"{key} must be a whole number of at least {least} and at most {most}, got {shown}")
    return int(text)


MAX_SEED = 2**32 - 1  # NumPy's generators (Optuna's samplers) take seeds below 2**32
# Optuna keeps a study's name in a column of 512 characters; a control character (NUL) in it
# cannot be a folder name (the default --out is runs/tune-<name>).
MAX_STUDY_NAME = 512


def _study_name(name: str) -> str:
    if not name or len(name) > MAX_STUDY_NAME or not name.isprintable():
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ReslabError(f"the study name must be 1 to {MAX_STUDY_NAME} printable characters (no control "
                          f"characters such as NUL), got {shown}; give another --study-name")
    return name


def redact(url: str) -> str:
    """A storage URL without its password (for logs, reports and job records)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not a database URL: nothing to hide)
        return url


# ---------------------------------------------------------------- the study


def open_study(settings: TuneSettings):
    """Create the study, or join it (a restart, or another worker); the process that creates
    it queues the base recipe's values as its first trial."""
    import optuna

    quiet_optuna()
    storage = _storage(settings)
    sampler = _sampler(settings, storage)
    pruner = _pruner(settings)
    with _storage_errors(settings):
        try:
            study = optuna.create_study(storage=storage, study_name=settings.name, direction=settings.direction,
                                        sampler=sampler, pruner=pruner)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=settings.name, storage=storage, sampler=sampler, pruner=pruner)
            _check_same_study(study, settings)
            return study
        study.set_user_attr("reslab", settings.identity())
        study.set_user_attr("direction", settings.direction)
        baseline = baseline_params(settings) if settings.baseline else {}
        if baseline:
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
    return study


@contextlib.contextmanager
def _storage_errors(settings: TuneSettings):
    """A storage that opened but refuses to be written (a read-only file or folder, a full
    disk) or read (a damaged file): one error line naming it, with the database's own reason."""
    import optuna
    import sqlalchemy.exc

    try:
        yield
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        reason = str(getattr(cause, "orig", None) or cause).splitlines()[0][:200]
        raise ReslabError(f"cannot use the study storage {redact(settings.storage)}: {reason} (a read-only or "
                          "damaged file? give another --out or --storage)") from None


# Attempts to open a storage whose tables another worker is creating at the same moment.
TABLE_RACE_RETRIES = 10


def _storage(settings: TuneSettings):
    import optuna
    import sqlalchemy.exc

    url = settings.storage
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
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=settings.heartbeat,
                    grace_period=GRACE_HEARTBEATS * settings.heartbeat, heartbeat_stale_trial_callback=retry_trial)
            except (ImportError, ModuleNotFoundError) as exc:
                raise ReslabError(f"storage {redact(url)}: its database driver is not installed ({exc})") from None
            except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError) as exc:  # Runtime: old schema
                if attempt < TABLE_RACE_RETRIES and _lost_table_race(exc):
                    time.sleep(0.2 * (attempt + 1))  # another worker is creating the tables: join them once made
                    continue
                raise ReslabError(f"cannot open the study storage {redact(url)}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None


def _lost_table_race(exc: Exception) -> bool:
    """Whether opening a new storage failed because another process created its tables (or
    their version row) at the same moment: workers started together meet this, and a retry
    finds the tables made."""
    text = str(exc).lower()  # not "database is locked": SQLite has already waited its 120 s timeout for that
    return any(sign in text for sign in ("already exists", "unique constraint", "duplicate"))


def _sampler(settings: TuneSettings, storage):
    import optuna

    seed = settings.seed
    if seed is not None:  # a restart must not propose the first run's random trials again
        try:
            summaries = optuna.get_all_study_summaries(storage)
            seed += sum(s.n_trials for s in summaries if s.study_name == settings.name)
        except Exception:  # noqa: BLE001
            pass
        seed %= MAX_SEED + 1  # the restart's offset must not carry it past what NumPy takes
    startup = max(2, min(10, settings.trials // 3))  # random trials before TPE models the results
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is "experimental"
        return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed, constant_liar=True)


def _pruner(settings: TuneSettings):
    import optuna

    epochs = settings.base_config().train.epochs
    if settings.pruner == "median":
        # A median of fewer than 5 complete trials is noise (with 2, a 10-trial study on digits
        # pruned 8, some one or two validation images behind); the first quarter of the epochs
        # is too early to judge.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, (epochs or 4) // 4))
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def _check_same_study(study, settings: TuneSettings) -> None:
    saved = study.user_attrs.get("reslab")
    for _ in range(20):  # a worker started with its creator may read the study before its settings are in
        if saved is not None:
            break
        time.sleep(0.5)
        saved = study.user_attrs.get("reslab")
    if saved is None:
        raise ReslabError(f"study {settings.name!r} in {redact(settings.storage)} was not made by reslab tune; "
                          "use another --study-name")
    wanted = json.loads(json.dumps(settings.identity()))
    for key in ("recipe", "overrides", "metric", "space"):
        if saved.get(key) != wanted[key]:
            raise ReslabError(f"study {settings.name!r} in {redact(settings.storage)} was started with another "
                              f"{key} ({_short(saved.get(key))}, now {_short(wanted[key])}); a study keeps its "
                              "recipe, overrides, metric and space: use another --out or --study-name")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def baseline_params(settings: TuneSettings) -> dict:
    """The base recipe's values of the searched keys that lie in the space."""
    base = settings.base_config()
    params = {}
    for parameter in settings.space:
        section, key = parameter.key.split(".", 1)
        value = getattr(getattr(base, section), key)
        if parameter.contains(value):
            params[parameter.key] = value
        else:
            logger.info("the base recipe's %s=%r is outside the space (%s): the first trial samples it",
                        parameter.key, value, parameter.describe())
    return params


def retry_trial(study, trial) -> None:
    """Queue a stopped or dead trial again with its parameters and reported epochs; the
    worker that takes it resumes the first attempt's run folder. (Optuna's heartbeat calls
    this for dead trials, a worker for a trial it stops.)"""
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES:
        logger.warning("trial %d was stopped %d times: not queued again", trial.number, len(history))
        return
    system = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k in ("baseline",)}, system_attrs=system,
        intermediate_values=trial.intermediate_values))


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines would repeat reslab's own."""
    import optuna

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- the budget


class Ledger:
    """The study's trials as the budget counts them. A stopped trial that was queued again
    does not count (its retry does); a surplus trial (two workers took the last one) never ran."""

    def __init__(self, trials):
        from optuna.trial import TrialState

        self.trials = list(trials)
        self.retried = {t.system_attrs["retry_history"][-1] for t in self.trials if t.system_attrs.get("retry_history")}
        self.finished = sum(self.counts(t) for t in self.trials)
        self.running = sum(t.state == TrialState.RUNNING for t in self.trials)
        self.waiting = sum(t.state == TrialState.WAITING for t in self.trials)

    def counts(self, trial) -> bool:
        from optuna.trial import TrialState

        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return True
        return trial.state == TrialState.FAIL and trial.number not in self.retried \
            and not trial.user_attrs.get("surplus")

    def surplus(self, trial, budget: int) -> bool:
        """Whether a fresh trial just taken is beyond the budget: the trials taken before it
        (or queued: retries and the baseline) already fill it."""
        from optuna.trial import TrialState

        if _queued(trial):
            return False
        taken = [t for t in self.trials if t.number != trial.number
                 and (self.counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
                 and (t.number < trial.number or _queued(t))]
        return len(taken) >= budget


def _queued(trial) -> bool:
    return "fixed_params" in trial.system_attrs or "failed_trial" in trial.system_attrs


# ---------------------------------------------------------------- a worker


@dataclass
class WorkerResult:
    ran: list[int]  # trial numbers this worker finished
    finished: int  # the study's finished trials at the end
    seconds: float


def run_worker(settings: TuneSettings, progress: bool = True, log=None) -> WorkerResult:
    """Take trials from the study and train them, one after the other, until the study has
    ``settings.trials`` finished; a stop (SIGTERM, Ctrl-C) queues the trial in hand again."""
    import optuna

    log = log or logger.info
    study = open_study(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started, ran, failures, waiting_said = time.perf_counter(), [], 0, False
    log(f"study {settings.name!r} in {redact(settings.storage)}: {settings.trials} trials, {settings.metric} "
        f"({settings.direction}), pruner {settings.pruner}; trial folders in {settings.out / 'trials'}")
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is "experimental"
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed, and queued again
        ledger = Ledger(study.get_trials(deepcopy=False))
        if ledger.finished >= settings.trials:
            break
        if not ledger.waiting and ledger.finished + ledger.running >= settings.trials:
            if not waiting_said:  # the rest is in other workers' hands: they finish, or die and come back queued
                log(f"waiting for {ledger.running} trial(s) running elsewhere")
                waiting_said = True
            time.sleep(settings.heartbeat)
            continue
        waiting_said = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
            trial = study.ask(settings.distributions())
        _Heartbeat(study, trial).beat_once()  # at once: a trial that never beat is never taken for dead
        frozen = _frozen(study, trial.number)
        if Ledger(study.get_trials(deepcopy=False)).surplus(frozen, settings.trials):
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        outcome, value = run_trial(study, trial, settings, worker, progress)
        done = Ledger(study.get_trials(deepcopy=False)).finished
        if outcome == "failed":
            failures += 1
            log(f"trial {trial.number} failed ({done}/{settings.trials} finished): {value}")
            if failures >= FAILURES_IN_A_ROW:
                raise ReslabError(f"{failures} trials in a row failed, the last with: {value}")
            continue
        failures = 0
        ran.append(trial.number)
        best = _best(study)
        shown = f"{value:.4f}" if value is not None else "-"
        log(f"trial {trial.number} {outcome} ({done}/{settings.trials} finished): {settings.metric} {shown}; "
            f"{_params_text(trial.params)}" + (f"; best so far {best.value:.4f} (trial {best.number})" if best else ""))
    return WorkerResult(ran, Ledger(study.get_trials(deepcopy=False)).finished, time.perf_counter() - started)


def _frozen(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _params_text(params: dict) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def run_trial(study, trial, settings: TuneSettings, worker: str, progress: bool = False):
    """Train one trial into its run folder (resumed when it is a stopped trial queued again);
    tell the study how it ended. Returns (complete | pruned | failed, value or message)."""
    frozen = _frozen(study, trial.number)
    folder_number = frozen.system_attrs.get("failed_trial", trial.number)  # a retry resumes the first attempt
    run_dir = settings.out / "trials" / f"trial-{folder_number:04d}"
    with _Heartbeat(study, trial):
        return _run_trial(study, trial, settings, worker, progress, frozen, run_dir)


def _run_trial(study, trial, settings: TuneSettings, worker: str, progress: bool, frozen, run_dir: Path):
    import optuna
    from optuna.trial import TrialState

    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", worker)
    started = time.perf_counter()
    try:
        config = trial_config(settings, trial.params, run_dir)
        resume, reported = None, set(frozen.intermediate_values)
        if (run_dir / "config.yaml").is_file():
            resume = run_dir
            rows = read_history(run_dir)
            for row in rows:  # epochs reported by the stopped attempt before its last report
                value = epoch_figure(row, settings.metric, settings.direction)
                if value is not None and int(row["epoch"]) not in reported:
                    trial.report(value, int(row["epoch"]))
                    reported.add(int(row["epoch"]))
            trial.set_user_attr("resumed_after_epoch", len(rows))
        elif run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        result = train(config, resume=resume, progress=progress,
                       observers=[TrialObserver(trial, settings.metric, settings.direction, reported)])
        value = objective(result.history, settings.metric, settings.direction)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, value)
        return "complete", value
    except optuna.TrialPruned:
        trial.set_user_attr("epochs", len(read_history(run_dir)))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, state=TrialState.PRUNED)
        values = _frozen(study, trial.number).intermediate_values
        return "pruned", values[max(values)] if values else None
    except (Interrupted, KeyboardInterrupt) as exc:
        retry_trial(study, _frozen(study, trial.number))  # queued before this one fails: the budget never dips
        study.tell(trial, state=TrialState.FAIL)
        if isinstance(exc, Interrupted):
            name = signal.Signals(exc.signal_number).name
            raise Interrupted(f"trial {trial.number} stopped by {name} with its state saved and queued again: run "
                              f"the same reslab tune command to continue the study (the trial resumes from "
                              f"{run_dir})", exc.signal_number) from None
        raise
    except ReslabError as exc:
        trial.set_user_attr("error", str(exc)[:500])
        study.tell(trial, state=TrialState.FAIL)
        return "failed", str(exc)
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        study.tell(trial, state=TrialState.FAIL)
        raise


def trial_config(settings: TuneSettings, params: dict, run_dir: Path) -> RunConfig:
    config = settings.base_config()
    for key, value in params.items():
        section, name = key.split(".", 1)
        from_dict({section: {name: value}}, config)
    config.output.dir = str(run_dir.parent)
    config.output.name = run_dir.name
    return validate(config)


class _Heartbeat:
    """Tells the storage every ``heartbeat`` seconds that the trial's process is alive."""

    def __init__(self, study, trial):
        storage = study._storage  # Optuna's own optimize() beats through the same object
        self.beat = getattr(storage, "record_heartbeat", None)
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.trial_id = trial._trial_id
        self.stop = threading.Event()
        self.thread = None

    def beat_once(self) -> None:
        if self.beat is not None and self.interval:
            self.beat(self.trial_id)

    def __enter__(self):
        if self.beat is not None and self.interval:
            self.thread = threading.Thread(target=self._run, name="reslab-heartbeat", daemon=True)
            self.thread.start()
        return self

    def _run(self):
        while True:
            try:
                self.beat(self.trial_id)
            except Exception as exc:  # noqa: BLE001  (a busy database: beat again next time)
                logger.debug("heartbeat not recorded: %s", exc)
            if self.stop.wait(self.interval):
                return

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        return False


class TrialObserver(Observer):
    """Reports each epoch's figure to the trial and stops the run when the pruner says so
    (the epoch's checkpoint is saved first, so a pruned trial's folder can be resumed or
    evaluated like any other)."""

    def __init__(self, trial, metric: str, direction: str, reported: set[int] | None = None):
        self.trial, self.metric, self.direction = trial, metric, direction
        self.reported = set(reported or ())

    def epoch(self, step: int, row: dict) -> None:
        import optuna

        value = epoch_figure(row, self.metric, self.direction)
        epoch = int(row["epoch"])
        if value is None:
            raise ReslabError(f"the run's history has no {self.metric} (is there a validation split?)")
        if epoch not in self.reported:
            self.trial.report(value, epoch)
            self.reported.add(epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.metric} {value:.4f}")


def epoch_figure(row: dict, metric: str, direction: str) -> float | None:
    """The epoch's figure; for val_* the better of the live and averaged weights'."""
    candidates = [row.get(metric)]
    if metric.startswith("val_"):
        candidates.append(row.get("ema_" + metric))
    values = [float(v) for v in candidates if v not in (None, "") and math.isfinite(float(v))]
    if not values:
        return None
    return min(values) if direction == "minimize" else max(values)


def objective(history: list[dict], metric: str, direction: str) -> float:
    """A trial's value: its best epoch's figure."""
    values = [v for v in (epoch_figure(row, metric, direction) for row in history) if v is not None]
    if not values:
        raise ReslabError(f"the run's history has no {metric} (is there a validation split?)")
    return min(values) if direction == "minimize" else max(values)


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(handle)]


# ---------------------------------------------------------------- the outcome


@dataclass
class TuneSummary:
    settings: TuneSettings
    rows: list[dict]  # one per trial, in order
    best: dict | None
    baseline: dict | None
    counts: dict[str, int]
    finished: int

    @property
    def done(self) -> bool:
        return self.finished >= self.settings.trials


def load_study(settings: TuneSettings):
    import optuna

    quiet_optuna()
    try:
        with _storage_errors(settings):
            return optuna.load_study(study_name=settings.name, storage=_storage(settings))
    except KeyError:
        raise ReslabError(f"no study {settings.name!r} in {redact(settings.storage)}") from None


def summarize(settings: TuneSettings, study=None) -> TuneSummary:
    """The study's trials as a table, its best and baseline trials."""
    study = study or load_study(settings)
    trials = study.get_trials(deepcopy=False)
    ledger = Ledger(trials)
    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    rows = [_trial_row(t, settings, retried_as) for t in trials]
    complete = [row for row in rows if row["state"] == "complete"]
    best = None
    if complete:
        pick = min if settings.direction == "minimize" else max
        best = pick(complete, key=lambda row: (row["value"], -row["trial"] if pick is max else row["trial"]))
    baseline = next((row for row in rows if row["baseline"] and row["state"] == "complete"), None)
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return TuneSummary(settings, rows, best, baseline, counts, ledger.finished)


def _trial_row(trial, settings: TuneSettings, retried_as: dict[int, int]) -> dict:
    state = {"fail": "failed"}.get(trial.state.name.lower(), trial.state.name.lower())
    if trial.user_attrs.get("surplus"):
        state, note = "unused", "not run: the budget was full"
    elif trial.number in retried_as:
        state, note = "stopped", f"stopped; resumed as trial {retried_as[trial.number]}"
    elif trial.system_attrs.get("failed_trial") is not None:
        note = f"resumes trial {trial.system_attrs['failed_trial']}"
        if trial.user_attrs.get("resumed_after_epoch"):
            note += f" after epoch {trial.user_attrs['resumed_after_epoch']}"
    elif trial.user_attrs.get("error"):
        note = trial.user_attrs["error"].splitlines()[0][:160]
    elif state == "pruned" and trial.intermediate_values:
        note = f"pruned after epoch {max(trial.intermediate_values)}"
    else:
        note = ""
    if trial.user_attrs.get("baseline"):
        note = "the recipe's values" + (f"; {note}" if note else "")
    value = trial.value if state == "complete" else (
        trial.intermediate_values[max(trial.intermediate_values)] if state == "pruned" and trial.intermediate_values
        else None)
    return {"trial": trial.number, "state": state, "value": value, "epochs": trial.user_attrs.get("epochs"),
            "params": dict(trial.params), "baseline": bool(trial.user_attrs.get("baseline")), "note": note,
            "run_dir": trial.user_attrs.get("run_dir"), "seconds": trial.user_attrs.get("seconds"),
            "worker": trial.user_attrs.get("worker")}


def best_recipe(summary: TuneSummary) -> dict:
    """The best trial's config as a recipe: the base recipe, the overrides and the best
    values, with the output folder left to whoever trains it."""
    config = trial_config(summary.settings, summary.best["params"], Path("runs") / "x")
    config.output.dir = RunConfig().output.dir
    config.output.name = None
    return config.to_dict()


def write_outputs(summary: TuneSummary) -> dict[str, Path]:
    """best.yaml (a recipe: ``reslab train --config <out>/best.yaml``), trials.csv,
    trials.md and tune.json in the tune folder."""
    settings, out = summary.settings, summary.settings.out
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    if summary.best is not None:
        best = summary.best
        baseline = summary.baseline
        header = [f"reslab tune: the best of {summary.finished} finished trials of study {settings.name!r}: trial "
                  f"{best['trial']}, {settings.metric} {best['value']:.4f}"
                  + (f" (the base recipe's values, trial {baseline['trial']}: {baseline['value']:.4f})"
                     if baseline else ""),
                  f"base: {settings.recipe or 'defaults'}" + (f" with {' '.join(settings.overrides)}"
                                                              if settings.overrides else ""),
                  f"tuned: {_params_text(best['params'])}",
                  f"train it: reslab train --config {out / 'best.yaml'}"]
        text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(best_recipe(summary), sort_keys=False)
        atomic_write_text(out / "best.yaml", text)
        written["best"] = out / "best.yaml"
    keys = [p.key for p in settings.space]
    fields = ["trial", "state", settings.metric, "epochs", *keys, "note", "seconds", "worker", "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in summary.rows:
        writer.writerow({"trial": row["trial"], "state": row["state"], settings.metric: row["value"],
                         "epochs": row["epochs"], **{k: row["params"].get(k) for k in keys}, "note": row["note"],
                         "seconds": row["seconds"], "worker": row["worker"], "run_dir": row["run_dir"]})
    atomic_write_text(out / "trials.csv", buffer.getvalue())
    atomic_write_text(out / "trials.md", trials_markdown(summary) + "\n")
    atomic_write_json(out / "tune.json", {
        "study": settings.name, "storage": redact(settings.storage), "metric": settings.metric,
        "direction": settings.direction, "budget": settings.trials, "finished": summary.finished,
        "counts": summary.counts, "recipe": settings.recipe, "overrides": settings.overrides,
        "space": {p.key: {p.kind: p.values} for p in settings.space}, "best": summary.best,
        "baseline": summary.baseline, "trials": summary.rows})
    written.update(csv=out / "trials.csv", markdown=out / "trials.md", json=out / "tune.json")
    return written


def trials_table(summary: TuneSummary) -> tuple[list[str], list[list[str]]]:
    keys = [p.key for p in summary.settings.space]
    headers = ["trial", "state", summary.settings.metric, "epochs", *keys, "note"]
    body = []
    for row in summary.rows:
        body.append([str(row["trial"]), row["state"], "–" if row["value"] is None else f"{row['value']:.4f}",
                     "–" if row["epochs"] is None else str(row["epochs"]),
                     *[_cell(row["params"].get(k)) for k in keys], row["note"]])
    return headers, body


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_markdown(summary: TuneSummary) -> str:
    headers, body = trials_table(summary)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i in (1, len(headers) - 1) else "---:"
                                                            for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- workers as jobs


def worker_arguments(settings: TuneSettings, space_file: Path, index: int) -> list[str]:
    """The command line of one worker job: this study, in-process trials, no report (the
    overrides right after the space file: argparse takes positionals before the flags)."""
    arguments = ["tune", str(space_file), *settings.overrides, "--launcher", "none",
                 "--out", str(settings.out.resolve()), "--storage", settings.storage, "--study-name", settings.name,
                 "--trials", str(settings.trials),
                 "--metric", settings.metric, "--pruner", settings.pruner, "--heartbeat", str(settings.heartbeat),
                 "--no-report", "--no-progress"]
    if settings.recipe:
        arguments += ["--recipe", settings.recipe]
    if settings.seed is not None:
        arguments += ["--seed", str(settings.seed + 1000 * index)]  # workers must not propose the same trials
    return arguments


def launch_tune(settings: TuneSettings, options, status_only: bool = False, retry: bool = False,
                wait: bool = False, poll_seconds: float | None = None, log=None):
    """``options.jobs`` workers (default 1) as jobs sharing the study; returns (the job
    states, whether the study is finished). The study is created here first, so that the
    workers only join it."""
    from .launch import Slot, launch, need_submitit

    need_submitit()
    from .jobs import CommandJob

    log = log or logger.info
    if options.gpus > 1:
        raise ReslabError("a tuning worker trains one trial at a time on one GPU (--gpus 1); run more workers "
                          "with --jobs for parallel trials")
    if settings.storage.startswith("sqlite") and options.name == "slurm":
        log("SQLite on a cluster's shared filesystem suits a few workers at most; give --storage "
            "postgresql://... for many")
    study = open_study(settings)
    folder = (settings.out / "jobs").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    space_file = settings.out.resolve() / "space.yaml"
    if not space_file.is_file():
        atomic_write_text(space_file, yaml.safe_dump(_space_document(settings), sort_keys=False))
    finished = lambda: Ledger(study.get_trials(deepcopy=False)).finished >= settings.trials  # noqa: E731
    cwd = os.getcwd()
    def worker(k: int) -> CommandJob:
        return CommandJob(f"worker-{k}", folder, worker_arguments(settings, space_file, k), gpus=options.gpus, cwd=cwd)

    slots = [Slot(f"worker-{k}", lambda k=k: worker(k), finished=finished,
                  progress=lambda: _trials_progress(study, settings)) for k in range(options.jobs or 1)]
    result = launch(slots, options, folder, f"reslab-tune-{settings.name}", status_only, retry, wait,
                    poll_seconds, log)
    return result, finished()


def _space_document(settings: TuneSettings) -> dict:
    return {"name": settings.name, "recipe": settings.recipe, "metric": settings.metric,
            **{p.key: {p.kind: p.values} for p in settings.space}}


def _trials_progress(study, settings: TuneSettings) -> str:
    ledger = Ledger(study.get_trials(deepcopy=False))
    return f"study: {ledger.finished}/{settings.trials} finished, {ledger.running} running"
