"""Hyper-parameter search (reslab tune, reslab.experiments.tune).

Tiny trials of ResNet-8 on 200 digits. One study of three trials is tuned through the
command line and read by several tests; one study is shared by two worker processes, one
of which is killed with SIGKILL mid-trial and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from submitit.core.utils import JobPaths

import reslab.experiments.tune as tune
import reslab.experiments.tune.worker as tune_worker
from reslab import ReslabError
from reslab.cli import main
from reslab.config import load
from reslab.experiments.launch import active_jobs, read_records
from reslab.experiments.search_space import parse_space
from reslab.experiments.tune import (
    Ledger,
    TrialObserver,
    open_study,
    read_history,
    run_trial,
    run_worker,
    tune_settings,
)
from reslab.report.tune import summarize

pytestmark = pytest.mark.slow  # Optuna studies with real trials and worker processes

TINY = ["model.name=resnet8", "train.batch_size=64", "data.train_size=200", "data.val_size=100",
        "data.test_size=100", "output.plots=false", "schedule.warmup=none", "train.threads=1"]
SPACE = {"recipe": "demo-digits", "overrides": TINY, "metric": "val_accuracy",
         "optim.lr": {"log_uniform": [0.01, 1]}, "optim.weight_decay": {"choice": ["1e-4", "5e-4"]},
         "train.label_smoothing": {"uniform": [0, 0.2]}}


def write_space(folder: Path, **settings) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **settings}, sort_keys=False))
    return path


def trials_of(out: Path, name: str = "space"):
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.load_study(study_name=name, storage=storage).get_trials()


class Watch:
    """The study's trials as its workers write them (one connection, read again and again)."""

    def __init__(self, out: Path):
        self.out, self.study = out, None

    def trials(self):
        """The trials, or None while the study is being created."""
        if self.study is None:
            if not (self.out / "study.db").is_file():
                return None
            try:
                # A reader: it must not race the workers to create the tables (that made A fail once).
                self.study = optuna.load_study(study_name="space", storage=optuna.storages.RDBStorage(
                    f"sqlite:///{self.out / 'study.db'}", engine_kwargs={"connect_args": {"timeout": 60}},
                    skip_table_creation=True, skip_compatibility_check=True))
            except Exception:
                return None
        return self.study.get_trials(deepcopy=False)


# ---------------------------------------------------------------- the search space


def test_each_distribution_becomes_optunas():
    base = load("demo-digits")
    space = parse_space({"optim.lr": {"log_uniform": [0.01, 1]}, "train.label_smoothing": {"uniform": [0, 0.2]},
                         "train.batch_size": {"int_uniform": [32, 128]},
                         "schedule.warmup_iters": {"int_log_uniform": [10, 1000]},
                         "optim.weight_decay": {"choice": ["1e-4", 5.0e-4]}, "optim.name": {"choice": ["sgd", "adam"]}},
                        base)
    distributions = {p.key: p.distribution() for p in space}
    lr = distributions["optim.lr"]
    assert (lr.low, lr.high, lr.log) == (0.01, 1, True)
    assert not distributions["train.label_smoothing"].log and distributions["train.label_smoothing"].high == 0.2
    assert isinstance(distributions["train.batch_size"], optuna.distributions.IntDistribution)
    assert distributions["schedule.warmup_iters"].log and distributions["schedule.warmup_iters"].low == 10
    # YAML 1.1 reads 1e-4 as a string: the choice holds the number the config would
    assert distributions["optim.weight_decay"].choices == (0.0001, 0.0005)
    assert distributions["optim.name"].choices == ("sgd", "adam")


@pytest.mark.parametrize("entries, fragment", [
    ({}, "search space is empty"),
    ({"optim.lr": {"loguniform": [0.01, 1]}}, "unknown distribution 'loguniform'"),
    ({"optim.lr": {"uniform": [1, 0.01]}}, "needs low < high"),
    ({"optim.lr": {"log_uniform": [0, 1]}}, "positive low bound"),
    ({"optim.lr": [0.01, 1]}, "must map one distribution"),
    ({"optim.momentun": {"uniform": [0.5, 0.9]}},
     "unknown config key 'optim.momentun' (did you mean 'optim.momentum'?)"),
    ({"optim.momentum": {"uniform": [0.5, 1.5]}}, "'optim.momentum' must be in [0, 1)"),
    ({"train.batch_size": {"uniform": [32, 129]}}, "use int_uniform"),
    ({"optim.name": {"choice": ["sgd", "rmsprop"]}}, "must be one of sgd, adam, adamw"),
    ({"schedule.milestones": {"choice": [[1, 2], [3]]}}, "choices must be numbers"),
    ({"optim.lr": {"choice": [0.1, 0.1]}}, "listed twice"),
])
def test_a_bad_space_is_one_line(entries, fragment):
    with pytest.raises(ReslabError) as error:
        parse_space(entries, load("demo-digits"))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_bad_settings_are_one_line(tmp_path):
    space = write_space(tmp_path)
    for kwargs, fragment in [({"metric": "val_accurcy"}, "'metric' must be a per-epoch figure"),
                             ({"pruner": "asha"}, "'pruner' must be one of"), ({"trials": 0}, "at least 1")]:
        with pytest.raises(ReslabError, match=fragment):
            tune_settings([str(space)], **kwargs)
    with pytest.raises(ReslabError, match="needs a validation split"):
        tune_settings([str(space), "data.val_size=0"])
    with pytest.raises(ReslabError, match="neither a file nor a shipped space"):
        tune_settings(["no-such-space"])
    (tmp_path / "bad.yaml").write_text("optim.lr: {uniform: [0.1, 1]}\nrecipes: demo-digits\n")
    with pytest.raises(ReslabError, match="unknown config key 'recipes'"):
        tune_settings([str(tmp_path / "bad.yaml")])


def test_tune_command_errors_are_one_line(tmp_path, capsys):
    space = write_space(tmp_path)
    assert main(["tune", "no-such-space"]) == 2
    assert main(["tune", str(space), "--metric", "test_accuracy"]) == 2
    assert main(["tune", str(space), "--launcher", "local", "--gpus", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reslab: error:")]
    assert len(errors) == 3 and "one GPU" in errors[2]


def test_the_shipped_space_is_valid():
    settings = tune_settings(["digits"])
    assert [p.key for p in settings.space] == ["optim.lr", "optim.weight_decay", "train.label_smoothing"]
    assert settings.recipe == "demo-digits" and settings.trials >= 8
    # the demo recipe's own values lie in the space: the first trial is the recipe
    assert tune.baseline_params(settings) == {"optim.lr": 0.1, "optim.weight_decay": 5e-4,
                                              "train.label_smoothing": 0.0}


# ---------------------------------------------------------------- a study tuned through the command line


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tune")
    out = folder / "study"
    space = write_space(folder, trials=3)
    code = main(["tune", str(space), "--epochs", "2", "--out", str(out), "--seed", "0", "--no-progress"])
    trials = trials_of(out)
    return SimpleNamespace(out=out, space=space, code=code, trials=trials, folder=folder)


def test_tune_runs_the_budget_with_the_recipe_first(tuned):
    assert tuned.code == 0
    assert [t.state for t in tuned.trials] == [TrialState.COMPLETE] * 3
    base = load("demo-digits", TINY)
    assert tuned.trials[0].params == {"optim.lr": base.optim.lr, "optim.weight_decay": base.optim.weight_decay,
                                      "train.label_smoothing": base.train.label_smoothing}
    assert tuned.trials[0].user_attrs["baseline"] is True
    assert len({json.dumps(t.params, sort_keys=True) for t in tuned.trials}) == 3  # TPE proposed new ones


def test_every_trial_is_a_run_folder_and_its_value_is_its_best_epoch(tuned, capsys):
    for trial in tuned.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == tuned.out / "trials" and (run_dir / "metrics.json").is_file()
        history = read_history(run_dir)
        assert len(history) == 2 and trial.value == max(row["val_accuracy"] for row in history)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["optim"]["lr"] == trial.params["optim.lr"]
    best = max(tuned.trials, key=lambda t: (t.value, -t.number))
    assert main(["evaluate", best.user_attrs["run_dir"], "--device", "cpu"]) == 0  # an ordinary run folder
    metrics = json.loads((Path(best.user_attrs["run_dir"]) / "metrics.json").read_text())
    assert f"{metrics['test']['accuracy']:.4f}" in capsys.readouterr().out


def test_best_yaml_is_a_recipe_that_trains(tuned, capsys):
    best = max(tuned.trials, key=lambda t: (t.value, -t.number))
    text = (tuned.out / "best.yaml").read_text()
    assert f"trial {best.number}" in text.splitlines()[0]
    config = load(str(tuned.out / "best.yaml"))
    assert (config.optim.lr, config.optim.weight_decay, config.train.label_smoothing) == tuple(best.params.values())
    assert config.output.dir == "runs" and config.output.name is None and config.model.name == "resnet8"
    out = tuned.folder / "retrained"
    assert main(["train", "--config", str(tuned.out / "best.yaml"), "--out", str(out), "--name", "best",
                 "--epochs", "1", "--no-progress"]) == 0
    assert (out / "best" / "metrics.json").is_file()
    assert yaml.safe_load((out / "best" / "config.yaml").read_text())["optim"]["lr"] == best.params["optim.lr"]


def test_the_trials_table_and_report(tuned):
    lines = (tuned.out / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("trial,state,val_accuracy,epochs,optim.lr,optim.weight_decay,train.label_smoothing")
    assert len(lines) == 4 and lines[1].startswith("0,complete,")
    report = (tuned.out / "report" / "report.md").read_text()
    assert "## Trials" in report and "the recipe's values" in report
    for name in ("history.png", "importance.png", "epochs.png"):
        assert (tuned.out / "report" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}" in report
    assert "data:image/png;base64," in (tuned.out / "report" / "report.html").read_text()


def test_a_finished_study_started_again_runs_nothing(tuned):
    settings = tune_settings([str(tuned.space)], epochs=2, out=str(tuned.out), seed=0)
    result = run_worker(settings, progress=False)
    assert result.ran == [] and result.finished == 3 and len(trials_of(tuned.out)) == 3


def test_a_study_keeps_its_space(tuned):
    changed = tune_settings([str(tuned.space)], epochs=3, out=str(tuned.out))
    with pytest.raises(ReslabError, match="started with another overrides"):
        open_study(changed)


# ---------------------------------------------------------------- pruning and stopping


def test_the_observer_prunes_a_trial_behind_the_others():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={},
                                              intermediate_values={1: 0.8, 2: 0.9}))
    ahead, behind = study.ask(), study.ask()
    TrialObserver(ahead, "val_accuracy", "maximize").epoch(10, {"epoch": 1, "val_accuracy": 0.85})
    with pytest.raises(optuna.TrialPruned):  # the better of the live and averaged weights is still behind
        TrialObserver(behind, "val_accuracy", "maximize").epoch(10, {"epoch": 1, "val_accuracy": 0.2,
                                                                      "ema_val_accuracy": 0.3})
    assert study.trials[2].intermediate_values == {1: 0.3}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_pruned_trial_stops_after_its_epoch_and_keeps_its_folder(tmp_path):
    settings = tune_settings([str(write_space(tmp_path))], epochs=3, out=str(tmp_path / "out"), trials=5)
    study = open_study(settings)
    study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={},
                                              intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    trial = study.ask(settings.distributions())  # the recipe's values, queued first
    outcome, value = run_trial(study, trial, settings, "test")
    assert outcome == "pruned" and value < 1.0
    assert study.trials[trial.number].state == TrialState.PRUNED
    run_dir = Path(study.trials[trial.number].user_attrs["run_dir"])
    assert len(read_history(run_dir)) == 1 and (run_dir / "checkpoints" / "best.pt").is_file()
    assert not (run_dir / "metrics.json").exists()


def test_a_stopped_trial_is_queued_again_and_resumes_its_folder(tmp_path, monkeypatch):
    settings = tune_settings([str(write_space(tmp_path))], epochs=2, out=str(tmp_path / "out"), trials=1,
                             pruner="none")
    stopped = []

    class StopsOnce(TrialObserver):  # SIGTERM after the first epoch, as a cluster's pre-emption would
        def epoch(self, step, row):
            super().epoch(step, row)
            if not stopped:
                stopped.append((Path(self.trial.user_attrs["run_dir"]) / "history.csv").read_text())
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tune_worker, "TrialObserver", StopsOnce)
    with pytest.raises(ReslabError, match="stopped by SIGTERM"):
        run_worker(settings, progress=False)
    monkeypatch.setattr(tune_worker, "TrialObserver", TrialObserver)
    result = run_worker(settings, progress=False)
    first, retry = trials_of(tmp_path / "out")
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE) and result.ran == [1]
    assert retry.params == first.params and retry.user_attrs["run_dir"] == first.user_attrs["run_dir"]
    assert retry.user_attrs["resumed_after_epoch"] == 1 and retry.intermediate_values[1] == first.intermediate_values[1]
    history = (Path(retry.user_attrs["run_dir"]) / "history.csv").read_text().splitlines()
    assert history[:2] == stopped[0].splitlines()  # epoch 1 was not trained again
    assert summarize(settings).rows[0]["note"].startswith("the recipe's values; stopped; resumed as trial 1")


def _join_at_once(barrier, settings, results) -> None:
    barrier.wait()  # every worker opens the fresh storage at the same moment
    try:
        study = open_study(settings)
        results.put(("joined", study.study_name))
    except ReslabError as exc:
        results.put(("error", str(exc)))


def test_workers_started_together_on_a_fresh_storage_all_join_one_study(tmp_path):
    """Cluster workers start together: they race to create Optuna's tables and the study (without
    the retry, 14 of 30 such openers failed here with 'table ... already exists' or a UNIQUE
    constraint on alembic_version)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the children start with everything imported
    for round_ in range(3):
        settings = tune_settings([str(write_space(tmp_path))], out=str(tmp_path / f"out{round_}"))
        barrier, results = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_join_at_once, args=(barrier, settings, results)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [results.get(timeout=5) for _ in workers] == [("joined", "space")] * 6
        waiting = trials_of(tmp_path / f"out{round_}")
        assert [t.user_attrs.get("baseline") for t in waiting] == [True]  # the recipe's values queued once


# ---------------------------------------------------------------- workers killed, restarted, shared


def _start(space: Path, out: Path, log: Path) -> subprocess.Popen:
    """``reslab tune`` in its own process, its output in a file (a pipe nobody reads could fill and stall it)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with log.open("w") as sink:
        return subprocess.Popen([sys.executable, "-m", "reslab", "tune", str(space), "--out", str(out), "--heartbeat",
                                 "1", "--no-report", "--no-progress"], env=env, stdout=sink,
                                stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, what: str, timeout: float = 300, process: subprocess.Popen | None = None,
              log: Path | None = None):
    """Poll ``condition`` until it returns a value; fail early, with its output, if ``process`` has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (exit {process.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()}" if log else ""))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """``reslab tune`` (A) starts a study of 4 trials and is killed with SIGKILL in the middle of
    a trial (after its first epoch). Then, at the same time, A is started again and a worker job is launched
    through the local executor (``--launcher local``): the two share the study to its end,
    and the launcher, run again, gathers it."""
    folder = tmp_path_factory.mktemp("shared")
    out = folder / "study"
    space = write_space(folder, trials=4, pruner="none", overrides=TINY + ["train.epochs=3"])
    first_log, restarted_log = folder / "first.log", folder / "restarted.log"
    first, restarted, watch = _start(space, out, first_log), None, Watch(out)
    launcher = ["tune", str(space), "--out", str(out), "--heartbeat", "1", "--launcher", "local", "--jobs", "1"]
    try:
        def first_mid_trial():
            for trial in watch.trials() or []:
                if trial.state == TrialState.RUNNING and "run_dir" in trial.user_attrs:
                    history = Path(trial.user_attrs["run_dir"]) / "history.csv"
                    lines = history.read_text().splitlines() if history.is_file() else []
                    if 2 <= len(lines) < 4:  # header + epoch 1 (or 2) of 3: the trial is under way, not done
                        return trial.number, "\n".join(lines[:2])
            return None

        killed, history_then = _wait_for(first_mid_trial, "A in the middle of a trial", process=first, log=first_log)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        submitted = main(launcher)
        restarted = _start(space, out, restarted_log)
        restarted.wait(timeout=300)
        output = restarted_log.read_text()
        _wait_for(lambda: not active_jobs(out / "jobs"), "the worker job to end")
        job = json.loads((out / "jobs" / "worker-0.process.json").read_text())
        gathered = main(launcher + ["--status", "--no-report"])  # the study is done: best.yaml, trials.csv
    finally:
        for process in (first, restarted):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for name in active_jobs(out / "jobs"):  # a worker job a failed test left running: SIGINT stops it
            os.kill(int(read_records(out / "jobs")[name]["job_id"]), signal.SIGINT)
    return SimpleNamespace(out=out, trials=trials_of(out), killed=killed, history_then=history_then,
                           submitted=submitted, restarted=restarted, output=output, pids=(first.pid, restarted.pid),
                           job=job, gathered=gathered)


def test_a_study_ends_at_its_budget_whoever_runs_it(shared):
    assert shared.submitted == 0 and shared.restarted.returncode == 0, shared.output
    ledger = Ledger(shared.trials)
    assert ledger.finished == 4 and ledger.running == 0 and ledger.waiting == 0
    assert len([t for t in shared.trials if t.state == TrialState.COMPLETE]) == 4
    assert [t.number for t in shared.trials] == list(range(len(shared.trials)))  # distinct numbers, none skipped


def test_the_restarted_process_and_a_worker_job_share_the_study(shared):
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in shared.trials}
    killed, restarted = (str(pid) for pid in shared.pids)
    assert killed in workers and restarted in workers
    assert str(shared.job["child"]) in workers  # the job's reslab tune, not this process
    assert shared.job["command"][3:5] == ["tune", str(shared.out.resolve() / "space.yaml")]
    assert shared.job["command"][5:5 + len(TINY)] == TINY and "--no-report" in shared.job["command"]
    assert str(os.getpid()) not in workers


def test_the_killed_trial_is_resumed_not_lost_nor_repeated(shared):
    killed = shared.trials[shared.killed]
    assert killed.state == TrialState.FAIL
    retries = [t for t in shared.trials if t.system_attrs.get("failed_trial") == shared.killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    retry = retries[0]
    assert retry.params == killed.params and retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert retry.user_attrs["resumed_after_epoch"] >= 1
    history = (Path(retry.user_attrs["run_dir"]) / "history.csv").read_text().splitlines()
    assert history[:2] == shared.history_then.splitlines()  # its first epoch, as the killed worker trained it
    assert len(history) == 4
    # one run folder per counted trial, none orphaned or shared
    folders = sorted(p.name for p in (shared.out / "trials").iterdir())
    complete = [t for t in shared.trials if t.state == TrialState.COMPLETE]
    assert folders == sorted(Path(t.user_attrs["run_dir"]).name for t in complete)
    assert all((shared.out / "trials" / name / "metrics.json").is_file() for name in folders)


def test_the_launcher_gathers_the_finished_study(shared):
    assert shared.gathered == 0
    records = json.loads((shared.out / "jobs" / "jobs.json").read_text())["jobs"]
    assert list(records) == ["worker-0"] and records["worker-0"]["launcher"] == "local"
    best = load(str(shared.out / "best.yaml"))
    complete = [t for t in shared.trials if t.state == TrialState.COMPLETE]
    top = max(complete, key=lambda t: (t.value, -t.number))
    assert best.optim.lr == top.params["optim.lr"]
    assert len((shared.out / "trials.csv").read_text().splitlines()) == len(shared.trials) + 1


class Planted:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_tune_status_never_unpickles_a_planted_result(tmp_path, capsys):
    """Someone else's tuning folder: a worker job that has ended (its process id is no
    process), and submitit's result and submission pickles beside it."""
    import pickle

    space, out, job_id = write_space(tmp_path), tmp_path / "study", "99999999"
    marker = tmp_path / "planted-code-ran"
    (out / "jobs").mkdir(parents=True)
    (out / "jobs" / "jobs.json").write_text(json.dumps(
        {"jobs": {"worker-0": {"name": "worker-0", "job_id": job_id, "launcher": "local", "attempt": 1}}}))
    paths = JobPaths(out / "jobs", job_id)
    paths.result_pickle.write_bytes(pickle.dumps(("success", Planted(marker))))
    paths.submitted_pickle.write_bytes(pickle.dumps(Planted(marker)))
    code = main(["tune", str(space), "--out", str(out), "--launcher", "local", "--status"])
    assert not marker.exists()
    assert code == 2 and "failed   99999999" in capsys.readouterr().out  # it ended, its study unfinished
