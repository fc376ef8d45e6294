"""Study runs as jobs (reslab compare --launcher, reslab.experiments.launch).

The local executor runs the jobs as local processes: a two-run study is launched, one of
its jobs is warned of its time limit (submitit's USR2) in the middle of its run, and the
gathered report is compared with the same study trained in this process. The SLURM path
runs against stand-ins for sbatch, sacct and srun that record what they are given, so the
sbatch script and the job's command line can be read."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from submitit.core.utils import DelayedSubmission, JobPaths

from reslab import ReslabError
from reslab.cli import main
from reslab.experiments.jobs import CommandJob, TrainJob
from reslab.experiments.launch import (
    Slot,
    active_jobs,
    format_statuses,
    job_paths,
    launch,
    launch_options,
    launch_study,
    minutes,
    read_records,
)
from reslab.experiments.study import run_study, study_from_dict
from reslab.report.report import depth_findings, read_run, run_row, summary_rows

pytestmark = pytest.mark.slow  # jobs started through submitit with real runs

OVERRIDES = ["train.epochs=4", "train.batch_size=64", "data.train_size=300", "data.val_size=100",
             "data.test_size=100", "output.plots=false", "schedule.warmup=none", "train.threads=1"]
STUDY = {"name": "jobs", "recipe": "demo-digits", "models": ["resnet8"], "seeds": [0, 1], "overrides": OVERRIDES}
RUNS = ["resnet8-digits-seed0", "resnet8-digits-seed1"]
COMPARED = ("run", "model", "dataset", "seed", "parameters", "macs", "epochs", "best_epoch", "accuracy", "error",
            "precision", "recall", "f1", "train_accuracy", "test_samples")


def _wait_for(condition, what: str, timeout: float = 180, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- options


def test_launcher_options_come_from_the_file_and_the_flags():
    options = launch_options({"name": "slurm", "partition": "gpu", "gpus": 4, "time": "2-00:00:00",
                              "sbatch": {"account": "proj"}}, time="12:30:00", sbatch=["qos=high", "--exclusive"],
                             setup=["module load cuda"])
    assert (options.name, options.partition, options.gpus, options.time) == ("slurm", "gpu", 4, 750)
    assert options.sbatch == {"account": "proj", "qos": "high", "exclusive": True}
    assert options.setup == ["module load cuda"]
    assert launch_options({}) is None and launch_options({"name": "slurm"}, name="none") is None
    assert [minutes(t) for t in (90, "90", "1:30:00", "0:00:30", "1-00:00")] == [90, 90, 90, 1, 1440]


@pytest.mark.parametrize("data, fragment", [
    ({"name": "pbs"}, "config key 'launcher.name' must be one of local, slurm"),
    ({"name": "slurm", "gpu": 1}, "unknown config key 'launcher.gpu'"),
    ({"name": "slurm", "gpus": -1}, "config key 'launcher.gpus' must be at least 0"),
    ({"name": "slurm", "time": "soon"}, "config key 'launcher.time' must be minutes"),
    ({"name": "slurm", "time": 1, "signal_delay": 90}, "must be longer than the warning"),
    ({"name": "slurm", "sbatch": ["account"]}, "config key 'launcher.sbatch' must map"),
])
def test_bad_launcher_options_are_one_line(data, fragment):
    with pytest.raises(ReslabError) as error:
        launch_options(data)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_job_with_several_gpus_runs_reslab_under_torchrun(tmp_path):
    run_dir, config = tmp_path / "run", tmp_path / "run.yaml"
    several = TrainJob("run", tmp_path, run_dir, config, gpus=4).command()
    assert several[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert several[6:] == ["reslab", "train", "--config", str(config), "--no-progress"]
    assert TrainJob("run", tmp_path, run_dir, config, gpus=1).command() == [
        sys.executable, "-m", "reslab", "train", "--config", str(config), "--no-progress"]
    (run_dir).mkdir()
    (run_dir / "config.yaml").write_text("{}")  # a run folder exists: the job resumes it
    assert TrainJob("run", tmp_path, run_dir, config).command()[3:6] == ["train", "--resume", str(run_dir)]
    (run_dir / "metrics.json").write_text("{}")
    assert TrainJob("run", tmp_path, run_dir, config).command() is None  # finished: nothing to do


# ---------------------------------------------------------------- a study as local jobs


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("inprocess") / "jobs"
    run_study(study_from_dict({**STUDY, "out": str(out)}), progress=False)
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The study as local jobs; seed 1's job gets submitit's warning signal (USR2) after its
    first epoch, as SLURM sends it 90 s before a time limit."""
    out = tmp_path_factory.mktemp("local") / "jobs"
    study = study_from_dict({**STUDY, "out": str(out)})
    options = launch_options({"name": "local", "time": 60})
    runs, first = launch_study(study, options)
    jobs = out / "jobs"
    target = out / RUNS[1]

    def mid_run():
        history = target / "history.csv"
        record = jobs / f"{RUNS[1]}.process.json"
        if history.is_file() and record.is_file() and len(history.read_text().splitlines()) == 2:
            return json.loads(record.read_text())["pid"], history.read_text()
        return None

    try:
        pid, history_then = _wait_for(mid_run, "seed 1's job after its first epoch")
        os.kill(pid, signal.SIGUSR2)
        during = launch_study(study, options, status_only=True)[1].statuses
        _wait_for(lambda: not active_jobs(jobs), "both jobs to end", every=0.2)
        final = launch_study(study, options, status_only=True)[1]
    finally:
        cancel_jobs(jobs)
    return SimpleNamespace(out=out, study=study, runs=runs, first=first, final=final, during=during,
                           history_then=history_then, signalled=pid)


def cancel_jobs(folder: Path) -> None:
    """Stop the local jobs a failed test left running (a job's id is its controller's pid; on
    SIGINT it stops its task, whose run is stopped in turn)."""
    records = read_records(folder)
    for name in active_jobs(folder):
        os.kill(int(records[name]["job_id"]), signal.SIGINT)


def test_each_run_is_one_job(launched):
    assert [s.state for s in launched.first.statuses] == ["pending", "pending"]
    assert launched.first.submitted == RUNS
    records = read_records(launched.out / "jobs")
    assert sorted(records) == RUNS and len({r["job_id"] for r in records.values()}) == 2
    assert all(r["launcher"] == "local" for r in records.values())
    for name in RUNS:
        config = (launched.out / "jobs" / f"{name}.yaml").read_text()
        assert f"name: {name}" in config  # the run's own config, its folder fixed
        assert job_paths(launched.out / "jobs", records[name]).submitted_pickle.is_file()
    folder = {r["folder"] for r in records.values()}  # one submission: its own folder for submitit's files
    assert len(folder) == 1 and (launched.out / "jobs" / folder.pop()).is_dir()
    assert json.loads((launched.out / "study.json").read_text())["runs"][0]["status"] == "finished"


def test_jobs_give_the_same_report_as_the_study_in_process(launched, in_process, capsys):
    assert [s.state for s in launched.final.statuses] == ["done", "done"], format_statuses(launched.final.statuses)
    assert main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out",
                 str(launched.out), *OVERRIDES, "--launcher", "local"]) == 0  # all done: gathered, nothing sent
    assert "2 runs finished" in capsys.readouterr().out
    gathered = json.loads((launched.out / "report" / "report.json").read_text())
    here = sorted((run_row(read_run(in_process / name)) for name in RUNS), key=lambda row: row["seed"])
    def figures(rows):
        return [{key: row[key] for key in COMPARED} for row in rows]

    assert figures(gathered["runs"]) == figures(here)
    assert gathered["findings"] == depth_findings(summary_rows(here))
    assert (launched.out / "report" / "report.html").is_file()


def test_a_job_warned_of_its_time_limit_saves_requeues_and_resumes(launched, in_process):
    record = json.loads((launched.out / "jobs" / f"{RUNS[1]}.process.json").read_text())
    assert record["attempt"] == 2 and record["pid"] != launched.signalled  # submitit ran it again
    assert record["command"][3:6] == ["train", "--resume", str((launched.out / RUNS[1]).resolve())]
    log = job_paths(launched.out / "jobs", read_records(launched.out / "jobs")[RUNS[1]]).stderr.read_text()
    assert "stopped by SIGTERM at step" in log  # the run saved its state when told to stop
    history = (launched.out / RUNS[1] / "history.csv").read_text().splitlines()
    assert history[:2] == launched.history_then.splitlines() and len(history) == 5  # epoch 1 kept, not redone
    resumed = json.loads((launched.out / RUNS[1] / "metrics.json").read_text())
    straight = json.loads((in_process / RUNS[1] / "metrics.json").read_text())
    assert resumed["test"]["accuracy"] == straight["test"]["accuracy"]  # exact resume: the same figures
    assert resumed["val"]["loss"] == straight["val"]["loss"]


def test_the_status_shows_running_jobs_then_done(launched):
    assert launched.during[1].state == "running" and launched.during[1].detail.startswith("epoch ")
    assert launched.during[1].detail.split()[1].endswith("/4")
    text = format_statuses(launched.final.statuses)
    assert text.splitlines()[-1] == "2 done" and RUNS[0] in text


@pytest.fixture
def waiting_job(tmp_path):
    """A study folder whose seed-0 run has a live local job (one that only waits)."""
    jobs = tmp_path / "s" / "jobs"
    slot = Slot(RUNS[0], lambda: functools.partial(time.sleep, 120), finished=lambda: False)
    launch([slot], launch_options({"name": "local"}), jobs, "test")
    controller = int(read_records(jobs)[RUNS[0]]["job_id"])
    yield jobs
    try:
        os.kill(controller, signal.SIGINT)  # submitit's controller stops its task
    except ProcessLookupError:
        pass


def test_in_process_compare_refuses_while_jobs_run(waiting_job, capsys):
    assert active_jobs(waiting_job) == [RUNS[0]]
    code = main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out",
                 str(waiting_job.parent), *OVERRIDES])
    assert code == 2 and "1 job(s) of this folder are still pending or running" in capsys.readouterr().err


def test_a_live_job_with_another_start_time_is_another_process(waiting_job):
    records = read_records(waiting_job)
    assert active_jobs(waiting_job) == [RUNS[0]] and records[RUNS[0]]["process_start"]  # recorded at submission
    records[RUNS[0]]["process_start"] = "1"  # as if its id now named a process started later (an id reused)
    (waiting_job / "jobs.json").write_text(json.dumps({"jobs": records}))
    assert active_jobs(waiting_job) == []


def _this_process_start() -> str:
    return Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]  # field 22 of proc(5)


@pytest.mark.parametrize("start", [None, "this process's", "another"])
def test_a_live_process_that_is_not_the_job_is_not_waited_for(tmp_path, monkeypatch, start):
    """A jobs.json naming a live process that is no job controller (this one), with its
    start time, without one, or with another: the job has ended, and --wait does not wait."""
    import reslab.experiments.launch as launch_module

    record = {"name": "run", "job_id": str(os.getpid()), "launcher": "local", "attempt": 1}
    if start is not None:
        record["process_start"] = _this_process_start() if start == "this process's" else "1"
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "jobs.json").write_text(json.dumps({"jobs": {"run": record}}))

    def refuse(seconds):
        raise AssertionError("waited for a process that is not the job")

    monkeypatch.setattr(launch_module, "time", SimpleNamespace(sleep=refuse))
    slot = Slot("run", lambda: CommandJob("run", tmp_path / "jobs", ["--version"]), finished=lambda: False)
    result = launch([slot], launch_options({"name": "local"}), tmp_path / "jobs", "test", status_only=True,
                    wait=True)
    assert result.statuses[0].state == "failed" and "ended without a result" in result.statuses[0].detail


def test_a_failing_job_shows_its_log_tail(tmp_path):
    folder = tmp_path / "jobs"
    slot = Slot("broken", lambda: CommandJob("broken", folder, ["trian", "--config", "demo-digits"]),  # a typo
                finished=lambda: False)
    result = launch([slot], launch_options({"name": "local"}), folder, "test", wait=True, poll_seconds=0.2)
    (status,) = result.statuses
    assert status.state == "failed" and "exited with status 2" in status.detail
    assert any("reslab: error: argument command: invalid choice: 'trian'" in line for line in status.log_tail)
    assert "| reslab: error: argument command" in format_statuses(result.statuses)
    again = launch([slot], launch_options({"name": "local"}), folder, "test")  # not resubmitted without --retry
    assert again.submitted == [] and again.statuses[0].state == "failed"


# ---------------------------------------------------------------- SLURM, up to the sbatch script


def test_slurm_without_its_commands_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    assert main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--out", str(tmp_path / "s"),
                 "--launcher", "slurm"]) == 2
    assert "needs SLURM's commands" in capsys.readouterr().err


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, sacct, srun and scontrol stand-ins: sbatch keeps each script and answers with a
    job id; sacct answers from a states file the test writes."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": '#!/bin/bash\nd="$(dirname "$0")"\nn=$(( $(cat "$d/next" 2>/dev/null || echo 1000) + 1 ))\n'
                  'echo $n > "$d/next"\ncp "$1" "$d/script-$n.sh"\necho "Submitted batch job $n"\n',
        "sacct": '#!/bin/bash\necho "JobID|State|NodeList"\ncat "$(dirname "$0")/states" 2>/dev/null\n',
        "srun": "#!/bin/bash\nexit 1\n",
        "scontrol": "#!/bin/bash\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_the_sbatch_script_and_the_jobs_command(fake_slurm, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out", str(out),
                 *OVERRIDES, "--launcher", "slurm", "--partition", "gpu", "--gpus", "2", "--time", "2:00:00",
                 "--cpus", "8", "--mem-gb", "32", "--sbatch", "account=proj", "--sbatch", "qos=high",
                 "--setup", "source /opt/venv/bin/activate", "--jobs", "1"]) == 0
    assert "submitted as job 1001_0" in capsys.readouterr().err
    script = (fake_slurm / "script-1001.sh").read_text()  # one array of two jobs
    for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=120",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --signal=USR2@90", "#SBATCH --requeue", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --array=0-1%1", "#SBATCH --job-name=reslab-compare-demo-digits",
                 "source /opt/venv/bin/activate", "export SUBMITIT_EXECUTOR=slurm"]:
        assert line in script.splitlines(), line
    record = read_records(out / "jobs")["resnet8-digits-seed1"]
    command = script.strip().splitlines()[-1]
    assert command.startswith("srun --unbuffered --output") and command.endswith(
        f"-u -m submitit.core._submit {(out / 'jobs' / record['folder']).resolve()}")
    job = DelayedSubmission.load(job_paths((out / "jobs").resolve(), record).submitted_pickle).function
    config = (out / "jobs" / "resnet8-digits-seed1.yaml").resolve()
    assert job.command() == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "reslab", "train", "--config", str(config), "--no-progress"]


def test_slurm_jobs_pending_running_failed_and_retried(fake_slurm, tmp_path, in_process, capsys):
    out = tmp_path / "study"
    command = ["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out", str(out),
               *OVERRIDES, "--launcher", "slurm"]
    assert main(command) == 0
    (fake_slurm / "states").write_text("1001_0|RUNNING|node7\n1001_1|PENDING|\n")
    capsys.readouterr()
    assert main(command) == 0  # again: nothing submitted, the states shown
    shown = capsys.readouterr().out
    assert "running  1001_0" in shown and "pending  1001_1" in shown and "SLURM PENDING" in shown
    assert not (fake_slurm / "script-1002.sh").exists()
    (fake_slurm / "states").write_text("1001_0|FAILED|node7\n1001_1|RUNNING|node8\n")
    log = job_paths(out / "jobs", read_records(out / "jobs")[RUNS[0]]).stderr
    log.write_text("loading\nreslab: error: the training loss became nan at step 12\n")
    assert main(command + ["--status"]) == 2  # a failure is an error once the states are asked for
    captured = capsys.readouterr()
    assert "failed   1001_0" in captured.out and "| reslab: error: the training loss became nan" in captured.out
    assert "--retry" in captured.err
    shutil.copytree(in_process / RUNS[1], out / RUNS[1])  # seed 1 finished (its folder as a job would leave it)
    assert main(command + ["--retry"]) == 0
    shown = capsys.readouterr().out
    assert "pending  1002" in shown and "submitted again (attempt 2)" in shown and "done" in shown
    assert read_records(out / "jobs")[RUNS[0]]["attempt"] == 2
    job = DelayedSubmission.load(job_paths(out / "jobs", read_records(out / "jobs")[RUNS[0]]).submitted_pickle).function
    assert job.command()[3:5] == ["train", "--config"]  # seed 0 never started: a fresh run


# ---------------------------------------------------------------- a study folder never runs code


class Planted:
    """What someone else's study folder may hold: a pickle that, once loaded, creates a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


DEAD_PID = "99999999"  # above Linux's largest pid: never a live process


def plant_job(jobs: Path, name: str, job_id: str, launcher: str = "local") -> Path:
    """A jobs.json naming ``job_id`` for run ``name``, and submitit's result and submission
    pickles for it, each of which creates the returned marker file when unpickled."""
    import pickle

    marker = jobs.parent / "planted-code-ran"
    jobs.mkdir(parents=True, exist_ok=True)
    (jobs / "jobs.json").write_text(json.dumps(
        {"jobs": {name: {"name": name, "job_id": job_id, "launcher": launcher, "attempt": 1}}}))
    paths = JobPaths(jobs, job_id)
    paths.result_pickle.write_bytes(pickle.dumps(("success", Planted(marker))))
    paths.submitted_pickle.write_bytes(pickle.dumps(Planted(marker)))
    return marker


def test_compare_status_never_unpickles_a_planted_result(tmp_path, capsys):
    out = tmp_path / "shared-study"
    marker = plant_job(out / "jobs", RUNS[0], DEAD_PID)
    command = ["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out", str(out),
               *OVERRIDES, "--launcher", "local"]
    code = main(command + ["--status"])
    assert not marker.exists()
    assert code == 2  # its job ended without finishing the run: failed
    shown = capsys.readouterr().out
    assert f"failed   {DEAD_PID}" in shown and "ended without a result" in shown


def test_compare_in_process_never_unpickles_a_planted_result(tmp_path, in_process, capsys):
    out = tmp_path / "shared-study"
    for name in RUNS:  # both runs finished: compare gathers them after checking the folder's jobs
        shutil.copytree(in_process / name, out / name)
    marker = plant_job(out / "jobs", RUNS[0], DEAD_PID)
    code = main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out", str(out),
                 *OVERRIDES])
    assert not marker.exists()
    assert code == 0
    assert "2 runs (0 trained now)" in capsys.readouterr().out


def test_compare_retry_never_unpickles_a_planted_result(tmp_path, in_process, capsys):
    out = tmp_path / "shared-study"
    shutil.copytree(in_process / RUNS[1], out / RUNS[1])  # seed 1 finished; seed 0's job "failed"
    marker = plant_job(out / "jobs", RUNS[0], DEAD_PID)
    code = main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0,1", "--out", str(out),
                 *OVERRIDES, "--launcher", "local", "--retry", "--wait"])
    assert not marker.exists()  # neither here nor in the job that trained seed 0
    assert code == 0 and "2 runs finished" in capsys.readouterr().out
    record = read_records(out / "jobs")[RUNS[0]]
    assert record["attempt"] == 2 and record["job_id"] != DEAD_PID


def test_slurm_retry_never_unpickles_a_planted_result(fake_slurm, tmp_path, capsys):
    out = tmp_path / "shared-study"
    marker = plant_job(out / "jobs", RUNS[0], "77_0", launcher="slurm")
    (fake_slurm / "states").write_text("77_0|COMPLETED|node7\n")  # the job ended well, its run unfinished
    code = main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0", "--out", str(out),
                 *OVERRIDES, "--launcher", "slurm", "--retry"])
    assert not marker.exists()
    assert code == 0 and "submitted again (attempt 2)" in capsys.readouterr().out


def test_a_failed_jobs_error_is_the_last_line_of_its_log(tmp_path, capsys):
    out = tmp_path / "shared-study"
    marker = plant_job(out / "jobs", RUNS[0], DEAD_PID)
    JobPaths(out / "jobs", DEAD_PID).stderr.write_text(
        "reslab job: resnet8-digits-seed0 (attempt 1): python -m reslab train\n"
        "reslab: error: the training loss became nan at step 12\x1b[2J\n"
        "submitit ERROR (2026-01-01 10:00:00,000) - Submitted job triggered an exception\n"
        "Traceback (most recent call last):\n"
        "reslab.experiments.jobs.JobFailed: resnet8-digits-seed0: exited with status 2\n")
    code = main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--seeds", "0", "--out", str(out),
                 *OVERRIDES, "--launcher", "local", "--status"])
    shown = capsys.readouterr().out
    assert code == 2 and not marker.exists()
    (line,) = [line for line in shown.splitlines() if line.startswith(RUNS[0])]
    assert line.split()[1:3] == ["failed", DEAD_PID]
    assert line.endswith("reslab.experiments.jobs.JobFailed: resnet8-digits-seed0: exited with status 2")
    assert "| reslab: error: the training loss became nan at step 12?[2J" in shown  # no terminal control


def test_report_never_unpickles_from_a_study_folder(tmp_path, in_process, capsys):
    out = tmp_path / "shared-study"
    for name in RUNS:
        shutil.copytree(in_process / name, out / name)
    marker = plant_job(out / "jobs", RUNS[0], DEAD_PID)
    import pickle

    for name in RUNS:  # pickles where a run's checkpoints are
        (out / name / "checkpoints").mkdir(exist_ok=True)
        for checkpoint in ("last.pt", "best.pt", "epoch-1.pt"):
            (out / name / "checkpoints" / checkpoint).write_bytes(pickle.dumps(Planted(marker)))
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert not marker.exists() and "resnet8" in capsys.readouterr().out


@pytest.mark.parametrize("jobs, fragment", [
    ({RUNS[0]: {"job_id": "../../x", "launcher": "local"}}, "not one reslab writes"),
    ({RUNS[0]: {"job_id": "0", "launcher": "local"}}, "not one reslab writes"),  # 0: this process's group
    ({RUNS[0]: {"job_id": "12", "launcher": "pbs"}}, "not one reslab writes"),
    ({RUNS[0]: {"job_id": "12", "launcher": "local", "folder": "../elsewhere"}}, "not one reslab writes"),
    ([], "no jobs mapping"),
])
def test_a_jobs_file_reslab_did_not_write_is_one_line(tmp_path, capsys, jobs, fragment):
    (tmp_path / "s" / "jobs").mkdir(parents=True)
    (tmp_path / "s" / "jobs" / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    code = main(["compare", "--recipe", "demo-digits", "--models", "resnet8", "--out", str(tmp_path / "s"),
                 *OVERRIDES, "--launcher", "local", "--status"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1 and errors[0].startswith("reslab: error:") and fragment in errors[0]
