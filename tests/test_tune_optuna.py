"""What Optuna's own machinery does not do for ``reslab tune``, and so reslab does
(reslab.experiments.tune.worker and study.Ledger). Each test runs Optuna alone."""

from __future__ import annotations

import threading
import warnings

import optuna
import pytest
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState, create_trial

from reslab.experiments.tune import Ledger


def _stops(callback, study) -> bool:
    stopped = []
    study.stop = lambda: stopped.append(True)  # Optuna's stop() is refused outside optimize
    callback(study, study.trials[-1])
    return bool(stopped)


def test_no_states_make_max_trials_callback_count_the_budget():
    """The budget counts a trial failed for good, not a stopped trial queued again (its retry
    counts) nor a surplus one never run; MaxTrialsCallback counts trials by state."""
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.FAIL))  # stopped by SIGTERM, queued again as trial 1
    study.add_trial(create_trial(value=0.5, system_attrs={"failed_trial": 0, "retry_history": [0]}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": "the training loss became nan"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"surplus": True}))
    assert Ledger(study.trials).finished == 2  # a study of 2 is done, one of 3 is not
    for states in [(TrialState.COMPLETE,), (TrialState.COMPLETE, TrialState.PRUNED),
                   (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL), None]:
        stops_at = [_stops(MaxTrialsCallback(budget, states=states), study) for budget in (2, 3)]
        assert stops_at != [True, False], states


def test_optimize_asks_a_trial_past_a_budget_other_workers_hold():
    """A worker whose budget is in other workers' hands must wait (their trial may die and come
    back queued): optimize asks a new trial first and counts after it."""
    study = optuna.create_study()
    study.ask()  # another worker's trial, running: it takes the budget of 1
    ran = []
    study.optimize(lambda trial: ran.append(trial.number) or 0.0, callbacks=[MaxTrialsCallback(1, states=None)])
    assert ran == [1]


def test_optuna_does_not_queue_again_a_trial_its_worker_stops(tmp_path):
    """Optuna's retry callback runs for a stale heartbeat only; optimize tells a trial stopped
    by SIGTERM or Ctrl-C FAIL, so the worker queues it again itself (with the same callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1, grace_period=3,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
    study = optuna.create_study(storage=storage)

    def stopped(trial):
        trial.suggest_float("x", 0, 1)
        raise KeyboardInterrupt  # what the training loop's stop becomes

    with pytest.raises(KeyboardInterrupt):
        study.optimize(stopped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # nothing queued


def test_a_refused_heartbeat_ends_optunas_heartbeat_but_not_reslabs(tmp_path, monkeypatch):
    """Optuna's heartbeat thread stops at the first write the database refuses, and the trial,
    still training, would be taken for dead; reslab's storage beats again next interval."""
    from reslab.experiments.tune.storage import open_storage

    tried, ended = threading.Event(), []

    def refuse(self, trial_id):
        tried.set()
        raise optuna.exceptions.StorageInternalError("database is locked")

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", refuse)
    monkeypatch.setattr(threading, "excepthook", lambda args: ended.append(args.exc_type))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optunas = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1)
    for storage, died in [(optunas, [optuna.exceptions.StorageInternalError]),
                          (open_storage(f"sqlite:///{tmp_path / 'reslab.db'}", 1), [])]:
        tried.clear(), ended.clear()
        optuna.create_study(storage=storage).optimize(lambda trial: float(tried.wait(10)), n_trials=1)
        assert tried.is_set() and ended == died  # optimize joins the heartbeat thread before it returns
