"""What runs inside a cluster job (experiments/launch.py submits it): a supervisor around
one reslab command line, run as a child process, under torchrun when the job has several
GPUs. It imports little (no PyTorch) and starts in a fraction of a second.

- SLURM's warning before a time limit (``--signal=USR2@90``, submitit's) reaches the
  supervisor only (the child ignores it): submitit calls ``checkpoint``, which stops the
  child with SIGTERM (reslab saves its state at the next step and exits), then requeues
  the job; the requeued job resumes the run.
- A pre-emption's SIGTERM is passed on to the child the same way; a killed supervisor
  takes its child with it (SIGTERM, Linux's parent-death signal).

The job keeps ``<name>.process.json`` in the launcher's jobs/ folder: where it runs, and,
once its command has ended, how (finished, failed or stopped). The launcher reads that
JSON, never submitit's result pickle (loading a pickle can run code: launch.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import submitit
from submitit.core.utils import DelayedSubmission

from ..runfs import atomic_write_json

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # reslab saves its state on these (train/stop.py)


class ReslabJob(submitit.helpers.Checkpointable):
    """One reslab command line in a job (see the module's docstring). ``arguments()`` is
    computed when the job starts, so a requeued job can choose to resume."""

    def __init__(self, name: str, folder: Path, gpus: int = 0, cwd: str | None = None, stop_seconds: int = 60):
        self.name = name
        self.folder = Path(folder)  # the launcher's jobs/ folder
        self.gpus = gpus
        self.cwd = cwd or os.getcwd()
        self.stop_seconds = stop_seconds  # how long a stopping run may take to save before it is killed
        self.attempt = 0
        self._started: str | None = None  # when this attempt began
        self._child: subprocess.Popen | None = None

    def arguments(self) -> list[str] | None:
        """reslab's command-line arguments, or None when there is nothing left to do."""
        raise NotImplementedError

    def command(self) -> list[str] | None:
        arguments = self.arguments()
        if arguments is None:
            return None
        if self.gpus > 1:  # one process per GPU; --standalone: a rendezvous on this node, on a free port
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.gpus}",
                    "-m", "reslab", *arguments]
        return [sys.executable, "-m", "reslab", *arguments]

    def __call__(self) -> dict:
        _log_to_stderr()
        self.attempt += 1
        self._started = _now()
        command = self.command()
        if command is None:
            logger.info("%s: nothing left to do", self.name)
            self._write_process_record(None, outcome="finished", exit_code=0)
            return {"name": self.name, "status": "finished", "attempt": self.attempt}
        logger.info("%s (attempt %d): %s", self.name, self.attempt, shlex.join(command))
        libc = _libc()
        preempt = submitit.JobEnvironment._usr_sig()

        def child_setup():
            # The warning before a time limit is the supervisor's to act on: the run stops
            # in order when the supervisor passes on SIGTERM, not by the signal's default.
            signal.signal(preempt, signal.SIG_IGN)
            if libc is not None:
                libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a killed supervisor stops its run too

        child = self._child = subprocess.Popen(command, cwd=self.cwd, preexec_fn=child_setup)
        self._write_process_record(command, child.pid)
        previous = signal.signal(signal.SIGTERM, self._pass_on)
        try:
            code = child.wait()
        except BaseException:  # a cancelled job (SIGINT), or submitit exiting after a requeue
            self._stop_child()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        self._child = None
        stopped = code - 128 in [int(s) for s in STOP_SIGNALS]
        outcome = "finished" if code == 0 else "stopped" if stopped else "failed"
        self._write_process_record(command, child.pid, outcome=outcome, exit_code=code)
        if code == 0:
            return {"name": self.name, "status": "finished", "attempt": self.attempt}
        if stopped:
            raise JobStopped(f"{self.name}: stopped by {signal.Signals(code - 128).name} with its state saved; it "
                             "continues when the job is requeued or when the same command runs again with --retry")
        raise JobFailed(f"{self.name}: {shlex.join(command)} exited with status {code} (its output is above)")

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """submitit calls this on its warning signal: stop the run (saved at its next step),
        then hand submitit this job again, to be requeued."""
        child, self._child = self._child, None
        if child is not None:
            logger.info("%s: time limit or pre-emption ahead: stopping the run, which saves its state", self.name)
            _stop_process(child.pid, self.stop_seconds)
        return super().checkpoint(*args, **kwargs)

    def _pass_on(self, number, _frame) -> None:
        child = self._child
        if child is not None:
            try:
                os.kill(child.pid, number)
            except ProcessLookupError:
                pass

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            _stop_process(child.pid, self.stop_seconds)

    def _write_process_record(self, command: list[str] | None, child: int | None = None, **ending) -> None:
        """Where this attempt runs; with ``ending`` (outcome, exit_code), how its command ended."""
        try:
            job_id = submitit.JobEnvironment().job_id
        except Exception:
            job_id = None
        record = {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "child": child,
                  "job_id": job_id, "attempt": self.attempt, "command": command,
                  "started": self._started}
        if ending:
            record.update(ended=_now(), **ending)
        atomic_write_json(self.folder / f"{self.name}.process.json", record)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_child"] = None  # a process is not part of what is requeued
        return state


class TrainJob(ReslabJob):
    """One run of a study: ``reslab train --config <its config>``, or ``--resume`` once its
    folder holds a config (a requeued or resubmitted job continues the run)."""

    def __init__(self, name: str, folder: Path, run_dir: Path, config_file: Path, gpus: int = 0,
                 cwd: str | None = None):
        super().__init__(name, folder, gpus, cwd)
        self.run_dir = Path(run_dir)
        self.config_file = Path(config_file)

    def arguments(self) -> list[str] | None:
        if (self.run_dir / "metrics.json").is_file():
            return None
        if (self.run_dir / "config.yaml").is_file():
            return ["train", "--resume", str(self.run_dir), "--no-progress"]
        if self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # killed before its first file: nothing to lose
        return ["train", "--config", str(self.config_file), "--no-progress"]


class CommandJob(ReslabJob):
    """A fixed reslab command line (a tuning worker)."""

    def __init__(self, name: str, folder: Path, arguments: list[str], gpus: int = 0, cwd: str | None = None):
        super().__init__(name, folder, gpus, cwd)
        self.fixed_arguments = list(arguments)

    def arguments(self) -> list[str] | None:
        return list(self.fixed_arguments)


class JobStopped(RuntimeError):
    """The run was stopped by a signal and saved its state."""


class JobFailed(RuntimeError):
    """The run ended with an error."""


def _stop_process(pid: int, seconds: float) -> None:
    """SIGTERM (reslab saves at its next step and exits), then SIGKILL after ``seconds``.
    Reaps with waitpid directly: this may run inside a signal handler that interrupted a
    Popen.wait of the same process."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _log_to_stderr() -> None:
    """In a job there is no command line to set up logging: reslab's lines go to the job's log."""
    root = logging.getLogger("reslab")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("reslab job: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
