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

One file per step: settings.py (the space file and flags), storage.py (the Optuna storage,
its heartbeat and retries), study.py (the study and its budget), worker.py (the trials,
run by ``study.optimize``), launcher.py (workers as jobs). The outputs (best.yaml,
trials.csv/md, tune.json and the report) are written by reslab.report.tune.
"""

from .launcher import launch_tune, worker_arguments
from .settings import METRICS, PRUNERS, SETTING_KEYS, TuneSettings, need_optuna, tune_settings
from .storage import GRACE_HEARTBEATS, MAX_RETRIES, first_attempt, redact, retry_history
from .study import Ledger, baseline_params, load_study, open_study
from .worker import (
                     FAILURES_IN_A_ROW,
                     TrialObserver,
                     WorkerResult,
                     epoch_figure,
                     params_text,
                     read_history,
                     run_trial,
                     run_worker,
                     trial_config,
)

__all__ = ["FAILURES_IN_A_ROW", "GRACE_HEARTBEATS", "MAX_RETRIES", "METRICS", "PRUNERS", "SETTING_KEYS", "Ledger",
           "TrialObserver", "TuneSettings", "WorkerResult", "baseline_params", "epoch_figure", "first_attempt",
           "launch_tune", "load_study", "need_optuna", "open_study", "params_text", "read_history", "redact",
           "retry_history", "run_trial", "run_worker", "trial_config", "tune_settings", "worker_arguments"]
