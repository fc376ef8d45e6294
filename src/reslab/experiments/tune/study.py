"""The study: created or joined, with TPE and the pruner; and its budget, counted."""

from __future__ import annotations

import json
import logging
import time
import warnings

from ...errors import ReslabError
from .settings import MAX_SEED, TuneSettings
from .storage import first_attempt, open_storage, redact, retry_history, storage_errors

logger = logging.getLogger(__name__)


def open_study(settings: TuneSettings):
    """Create the study, or join it (a restart, or another worker); the process that creates
    it queues the base recipe's values as its first trial."""
    import optuna

    quiet_optuna()
    storage = open_storage(settings.storage, settings.heartbeat)
    sampler = _sampler(settings, storage)
    pruner = _pruner(settings)
    with storage_errors(settings.storage):
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


def load_study(settings: TuneSettings):
    import optuna

    quiet_optuna()
    try:
        with storage_errors(settings.storage):
            return optuna.load_study(study_name=settings.name, storage=open_storage(settings.storage,
                                                                                    settings.heartbeat))
    except KeyError:
        raise ReslabError(f"no study {settings.name!r} in {redact(settings.storage)}") from None


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines would repeat reslab's own."""
    import optuna

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampler(settings: TuneSettings, storage):
    import optuna

    seed = settings.seed
    if seed is not None:  # a restart must not propose the first run's random trials again
        try:
            summaries = optuna.get_all_study_summaries(storage)
            seed += sum(s.n_trials for s in summaries if s.study_name == settings.name)
        except Exception:
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


# ---------------------------------------------------------------- the budget


class Ledger:
    """The study's trials as the budget counts them. A stopped trial that was queued again
    does not count (its retry does); a surplus trial (two workers took the last one) never ran.

    Home-made because Optuna's MaxTrialsCallback counts trials by state, and no choice of
    states counts a trial failed for good but not a stopped one queued again, nor sees the
    trials other workers hold (tests/test_tune_optuna.py shows both)."""

    def __init__(self, trials):
        from optuna.trial import TrialState

        self.trials = list(trials)
        self.retried = {retry_history(t)[-1] for t in self.trials if retry_history(t)}
        self.finished = sum(self.counts(t) for t in self.trials)
        self.running = sum(t.state == TrialState.RUNNING for t in self.trials)
        self.waiting = sum(t.state == TrialState.WAITING for t in self.trials)

    def counts(self, trial) -> bool:
        from optuna.trial import TrialState

        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return True
        return trial.state == TrialState.FAIL and trial.number not in self.retried \
            and not trial.user_attrs.get("surplus")

    def has_room(self, budget: int) -> bool:
        """Whether a worker may take a trial: one is queued, or the budget has room for a new
        one beside the trials finished and those running elsewhere."""
        return self.finished < budget and (self.waiting > 0 or self.finished + self.running < budget)

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
    """Whether the trial was queued (the base recipe's values, or a retry), not sampled."""
    return bool(trial.user_attrs.get("baseline")) or first_attempt(trial) is not None
