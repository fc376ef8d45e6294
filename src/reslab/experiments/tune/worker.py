"""A worker: trains the study's trials with Optuna's ``study.optimize`` (which asks each
trial, beats its heartbeat, fails and queues again dead workers' trials, and tells the
outcome) until the study's budget is finished, whoever ran it.

What Optuna does not do, done here (tests/test_tune_optuna.py shows each):
- a trial this process stops (SIGTERM, Ctrl-C) is queued again: Optuna's retry callback
  runs only for a stale heartbeat, and optimize tells a stopped trial FAIL;
- the budget is the Ledger's (study.py), not MaxTrialsCallback's count of states;
- a worker whose remaining budget is in other workers' hands waits for them (their trial
  may die and come back queued) instead of asking a trial past the budget, and a trial two
  workers took for the last place is left unused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...config import RunConfig, from_dict, validate
from ...errors import Interrupted, ReslabError
from ...train.loop import train
from ...train.observers import Observer
from ...train.run_folder import read_history
from .settings import TuneSettings
from .storage import first_attempt, redact, retry_callback, storage_errors
from .study import Ledger, open_study

logger = logging.getLogger(__name__)

FAILURES_IN_A_ROW = 3  # a worker stops after this many failed trials in a row (a broken setup)


@dataclass
class WorkerResult:
    ran: list[int]  # trial numbers this worker finished
    finished: int  # the study's finished trials at the end
    seconds: float


class TrialFailed(Exception):
    """A trial ended by a problem of its own (its message kept on the trial as ``error``):
    study.optimize tells it FAIL and the worker goes on to the next."""


def run_worker(settings: TuneSettings, progress: bool = True, log=None) -> WorkerResult:
    """Take trials from the study and train them, one after the other, until the study has
    ``settings.trials`` finished; a stop (SIGTERM, Ctrl-C) queues the trial in hand again."""
    import optuna

    log = log or logger.info
    study = open_study(settings)
    worker = _Worker(settings, f"{socket.gethostname()}:{os.getpid()}", progress, log)
    started, waiting_said = time.perf_counter(), False
    log(f"study {settings.name!r} in {redact(settings.storage)}: {settings.trials} trials, {settings.metric} "
        f"({settings.direction}), pruner {settings.pruner}; trial folders in {settings.out / 'trials'}")
    while True:
        with warnings.catch_warnings(), storage_errors(settings.storage):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed, and queued again
            ledger = Ledger(study.get_trials(deepcopy=False))
        if ledger.finished >= settings.trials:
            break
        if not ledger.has_room(settings.trials):
            if not waiting_said:  # the rest is in other workers' hands: they finish, or die and come back queued
                log(f"waiting for {ledger.running} trial(s) running elsewhere")
                waiting_said = True
            time.sleep(settings.heartbeat)
            continue
        waiting_said = False
        with _failures_said_by_reslab():
            study.optimize(worker.objective, callbacks=[worker.after_trial], catch=(TrialFailed,))
    return WorkerResult(worker.ran, Ledger(study.get_trials(deepcopy=False)).finished, time.perf_counter() - started)


@dataclass
class _Worker:
    settings: TuneSettings
    name: str  # host:pid, on each trial it runs
    progress: bool
    log: Callable[[str], None]
    ran: list[int] = field(default_factory=list)
    failures: int = 0  # in a row

    def objective(self, trial) -> float:
        """study.optimize's objective: the trial's values (a queued trial keeps its own), then
        its training, unless two workers took the budget's last place and this one came second."""
        for parameter in self.settings.space:
            parameter.suggest(trial)
        taken = _frozen(trial.study, trial.number)
        if Ledger(trial.study.get_trials(deepcopy=False)).surplus(taken, self.settings.trials):
            trial.set_user_attr("surplus", True)
            raise TrialFailed("not run: the budget was full")
        return train_trial(trial, self.settings, self.name, self.progress)

    def after_trial(self, study, trial) -> None:
        """study.optimize's callback: say how the trial ended; end optimize once the budget
        leaves this worker nothing to take (run_worker then waits, or returns)."""
        from optuna.trial import TrialState

        settings = self.settings
        ledger = Ledger(study.get_trials(deepcopy=False))
        if not ledger.has_room(settings.trials):
            study.stop()
        if trial.user_attrs.get("surplus"):
            return
        done = ledger.finished
        if trial.state == TrialState.FAIL:
            self.failures += 1
            error = trial.user_attrs.get("error", "")
            self.log(f"trial {trial.number} failed ({done}/{settings.trials} finished): {error}")
            if self.failures >= FAILURES_IN_A_ROW:
                raise ReslabError(f"{self.failures} trials in a row failed, the last with: {error}")
            return
        self.failures = 0
        self.ran.append(trial.number)
        value = trial.value if trial.state == TrialState.COMPLETE else _last_reported(trial)
        shown = f"{value:.4f}" if value is not None else "-"
        best = _best(study)
        self.log(f"trial {trial.number} {trial.state.name.lower()} ({done}/{settings.trials} finished): "
                 f"{settings.metric} {shown}; {params_text(trial.params)}"
                 + (f"; best so far {best.value:.4f} (trial {best.number})" if best else ""))


@contextlib.contextmanager
def _failures_said_by_reslab():
    """Optuna logs each failed trial with its traceback; the worker says it in one line."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.ERROR))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def run_trial(study, trial, settings: TuneSettings, worker: str, progress: bool = False):
    """One asked trial trained and told, outside study.optimize (Optuna's ask-and-tell).
    Returns (complete | pruned | failed, value or message)."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = train_trial(trial, settings, worker, progress)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned", _last_reported(_frozen(study, trial.number))
    except TrialFailed as exc:
        study.tell(trial, state=TrialState.FAIL)
        return "failed", str(exc)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    study.tell(trial, value)
    return "complete", value


def train_trial(trial, settings: TuneSettings, worker: str, progress: bool = False) -> float:
    """Train one trial into its run folder (a retry resumes its first attempt's) and return
    its value. Raises optuna.TrialPruned when the pruner stops it, TrialFailed for a problem
    of its own; a trial stopped by SIGTERM or Ctrl-C is queued again before it ends."""
    import optuna

    taken = _frozen(trial.study, trial.number)
    folder_number = first_attempt(taken)
    run_dir = settings.out / "trials" / f"trial-{trial.number if folder_number is None else folder_number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", worker)
    started = time.perf_counter()
    try:
        config = trial_config(settings, trial.params, run_dir)
        resume, reported = None, set(taken.intermediate_values)
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
        value = trial_value(result.history, settings.metric, settings.direction)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        return value
    except optuna.TrialPruned:
        trial.set_user_attr("epochs", len(read_history(run_dir)))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        raise
    except (Interrupted, KeyboardInterrupt) as exc:
        # Optuna queues again only a trial whose heartbeat went stale; this one is told FAIL
        # as it leaves: queue it first, with Optuna's own callback (the budget never dips).
        retry_callback()(trial.study, _frozen(trial.study, trial.number, copy=True))
        if isinstance(exc, Interrupted):
            name = signal.Signals(exc.signal_number).name
            raise Interrupted(f"trial {trial.number} stopped by {name} with its state saved and queued again: run "
                              f"the same reslab tune command to continue the study (the trial resumes from "
                              f"{run_dir})", exc.signal_number) from None
        raise
    except ReslabError as exc:
        trial.set_user_attr("error", str(exc)[:500])
        raise TrialFailed(str(exc)) from None
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        raise


def _frozen(study, number: int, copy: bool = False):
    """The trial as the storage holds it (system attributes, reported epochs)."""
    return next(t for t in study.get_trials(deepcopy=copy) if t.number == number)


def _last_reported(trial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def params_text(params: dict) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def trial_config(settings: TuneSettings, params: dict, run_dir: Path) -> RunConfig:
    config = settings.base_config()
    for key, value in params.items():
        section, name = key.split(".", 1)
        from_dict({section: {name: value}}, config)
    config.output.dir = str(run_dir.parent)
    config.output.name = run_dir.name
    return validate(config)


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


def trial_value(history: list[dict], metric: str, direction: str) -> float:
    """A trial's value: its best epoch's figure."""
    values = [v for v in (epoch_figure(row, metric, direction) for row in history) if v is not None]
    if not values:
        raise ReslabError(f"the run's history has no {metric} (is there a validation split?)")
    return min(values) if direction == "minimize" else max(values)
