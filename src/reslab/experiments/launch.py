"""Study runs and tuning workers as cluster jobs, through submitit.

``reslab compare --launcher slurm`` sends each run of a study (one model, dataset,
variant and seed) as one job; ``reslab tune --launcher slurm --jobs N`` sends N workers
that share one Optuna study. ``--launcher local`` runs the same jobs as local processes
(submitit's local executor), which is how this file is tested without a cluster.

A job is a supervisor around one reslab command line (jobs.py): a time limit or a
pre-emption stops the run with its state saved and submitit requeues the job, which
resumes it. A job killed outright leaves its run folder with the last epoch checkpoint;
running the command again with ``--retry`` resubmits it, and it resumes from there.

Everything a later ``reslab compare``/``tune`` needs to show where the jobs are is on
disk, in ``<out>/jobs/``: ``jobs.json`` (job ids and attempts), the job's own
``<name>.process.json`` (host, process ids and, once its command has ended, how) and, for
study runs, the config each run starts from (``<name>.yaml``). Each submission gets a
folder of its own for submitit's pickles and logs, ``<out>/jobs/<time>-<random>/``,
created empty then: a job never loads a pickle that was in the folder before.

Loading a file never runs code from it, and study folders are shared: reslab never loads
submitit's pickles. A job's state comes from its run (metrics.json: done), from SLURM
(sacct) or, for a local job, from its process (the controller's process id, start time
and command line), and from the job's JSON record of how it ended; its error is the last
line of its log, read as text.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..config import config_field, parse_fields
from ..errors import ReslabError
from ..extras import missing_extra
from ..runfs import atomic_write_json, read_capped

if TYPE_CHECKING:
    from .jobs import ReslabJob

logger = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
# sacct's job states, as reslab shows them
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
LOG_TAIL_LINES = 8
JOB_IDS = {"local": re.compile(r"[1-9][0-9]{0,8}"),  # the controller's process id (0 would be our group)
           "slurm": re.compile(r"[0-9]+(?:_[0-9]+)?")}  # SLURM's job id, with its index in an array
FOLDER_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]*")  # a submission's folder, inside jobs/
MAX_RECORD_BYTES = 16 << 20  # jobs.json holds a few hundred bytes per job


# ---------------------------------------------------------------- what a launcher is asked for


def minutes(value) -> int:
    """A time limit as SLURM writes it (``90``, ``1:30:00``, ``2-00:00:00``) in whole minutes;
    ValueError says what it must be (``launcher.time``'s converter)."""
    if isinstance(value, int) and not isinstance(value, bool):
        total = value
    else:
        text = value.strip() if isinstance(value, str) else ""  # bounded digits: int() of 4,300 or more raises
        match = re.fullmatch(r"(?:(\d{1,6})-)?(\d{1,9})(?::(\d{1,9}))?(?::(\d{1,9}))?", text)
        if not match:
            raise ValueError("must be minutes or [D-]HH:MM[:SS] (e.g. 90, 24:00:00, 2-00:00:00)")
        days, first, second, third = match.groups()
        if second is None:  # plain minutes
            total = int(first) + 24 * 60 * int(days or 0)
        else:
            seconds = int(third or 0)
            total = 24 * 60 * int(days or 0) + 60 * int(first) + int(second) + (seconds + 59) // 60
    if total < 1:
        raise ValueError("must be at least one minute")
    return total


def _sbatch_options(value) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValueError("must map sbatch options to values, e.g. {account: proj, qos: high}")
    return value


@dataclass
class LaunchOptions:
    """A study or space file's ``launcher:`` section (or just its name), the flags over it."""

    name: Literal["local", "slurm", "none"] | None = None  # None or none: the runs train in this process
    partition: str | None = None
    gpus: int = config_field(0, least=0)  # per job; above 1 the job runs reslab under torchrun, one process per GPU
    # the job's time limit in minutes (written 90, 24:00:00 or 2-00:00:00); before it, the job saves and requeues
    time: int = config_field(24 * 60, convert=minutes, null_is_default=True)
    cpus: int | None = config_field(None, least=1)  # per job (sbatch --cpus-per-task)
    mem_gb: float | None = None
    jobs: int | None = config_field(None, least=1)  # compare: at most this many jobs at once; tune: this many workers
    # any other sbatch option, e.g. {"account": "proj"}
    sbatch: dict[str, object] = config_field(default_factory=dict, convert=_sbatch_options, null_is_default=True)
    setup: list[str] = config_field(default_factory=list, null_is_default=True)  # shell lines run before the job
    signal_delay: int = config_field(90, least=1)  # seconds between the warning signal and the time limit
    max_requeue: int = config_field(10, least=0)  # requeues after time-outs (pre-emptions do not count)


def launch_options(data: dict | str | None = None, **flags) -> LaunchOptions | None:
    """The launcher a study or space file's ``launcher:`` section and the command-line flags
    ask for (flags win; --sbatch and --setup add to the file's); None when neither names one
    (the runs train in this process)."""
    if isinstance(data, str):  # launcher: slurm
        data = {"name": data}
    more_sbatch, more_setup = flags.pop("sbatch", None) or [], flags.pop("setup", None) or []
    given = {key: value for key, value in flags.items() if value is not None}
    options = parse_fields(LaunchOptions, {**data, **given} if isinstance(data, dict) else data or given, "launcher")
    if options.name in (None, "none"):
        return None
    options.sbatch = {**options.sbatch, **_sbatch_pairs(more_sbatch)}
    options.setup = [*options.setup, *map(str, more_setup)]
    if options.signal_delay >= options.time * 60:
        raise ReslabError(f"the job's time limit ({options.time} min) must be longer than the warning "
                          f"before it (signal_delay {options.signal_delay} s)")
    return options


def _sbatch_pairs(items: list[str]) -> dict[str, object]:
    """``--sbatch account=proj --sbatch exclusive`` (or ``--account=proj``) as sbatch options."""
    pairs = {}
    for item in items:
        key, sep, value = str(item).lstrip("-").partition("=")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ReslabError(f"--sbatch takes an sbatch option as KEY=VALUE (e.g. account=proj) or KEY, got {item!r}")
        pairs[key] = value if sep else True
    return pairs


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


# ---------------------------------------------------------------- executors


def slurm_parameters(options: LaunchOptions, job_name: str) -> dict:
    """submitit's SlurmExecutor parameters: one node and one task per job (torchrun starts
    one process per GPU), the warning signal ``signal_delay`` seconds before the limit,
    ``--requeue`` so that a pre-empted or failed node's job comes back."""
    parameters = {"job_name": job_name, "time": options.time, "nodes": 1, "ntasks_per_node": 1,
                  "signal_delay_s": options.signal_delay,
                  "additional_parameters": {"requeue": True, **options.sbatch}}
    if options.partition:
        parameters["partition"] = options.partition
    if options.gpus:
        parameters["gpus_per_node"] = options.gpus
    if options.cpus:
        parameters["cpus_per_task"] = options.cpus
    if options.mem_gb:
        parameters["mem"] = f"{int(options.mem_gb)}GB" if options.mem_gb == int(options.mem_gb) \
            else f"{int(options.mem_gb * 1024)}MB"
    if options.setup:
        parameters["setup"] = list(options.setup)
    if options.jobs:
        parameters["array_parallelism"] = options.jobs
    return parameters


def need_submitit():
    """submitit, or one line saying how to install it (an optional dependency)."""
    try:
        import submitit
    except ImportError:
        raise missing_extra("cluster jobs", "cluster") from None
    return submitit


def make_executor(options: LaunchOptions, folder: Path, job_name: str):
    submitit = need_submitit()
    folder.mkdir(parents=True, exist_ok=True)
    if options.name == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=options.max_requeue)
        executor.update_parameters(timeout_min=options.time, gpus_per_node=options.gpus,
                                   signal_delay_s=options.signal_delay, setup=list(options.setup))
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeue)
    except RuntimeError:
        raise ReslabError("--launcher slurm needs SLURM's commands (srun, sbatch, sacct) on this machine; run it "
                          "on the cluster's login node, or use --launcher local") from None
    try:
        executor.update_parameters(**slurm_parameters(options, job_name))
    except ValueError as exc:
        raise ReslabError(f"bad sbatch options: {str(exc).splitlines()[0]}") from None
    return executor


# ---------------------------------------------------------------- records and states


@dataclass
class Slot:
    """Something a launcher keeps a job for: a study run, or a tuning worker."""

    name: str
    make_job: Callable[[], ReslabJob]
    finished: Callable[[], bool]  # nothing left for a job to do
    progress: Callable[[], str] = lambda: ""  # a word on a running job (e.g. "epoch 3/40")
    check: Callable[[], None] = lambda: None  # before (re)submitting: refuse what cannot be resumed


@dataclass
class JobStatus:
    name: str
    state: str  # done, running, pending, failed, new
    job_id: str | None = None
    detail: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ("running", "pending") and self.job_id is not None


def read_records(folder: Path) -> dict:
    path = Path(folder) / "jobs.json"
    if not path.is_file():
        return {}
    raw = read_capped(path, "jobs file", MAX_RECORD_BYTES)  # a huge file is refused unread
    try:
        data = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, bad UTF-8, huge integers
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise ReslabError(f"{path} is not readable JSON ({reason}); move it away to start the jobs afresh (run "
                          "folders are kept)") from None
    records = data.get("jobs", {}) if isinstance(data, dict) else None
    if not isinstance(records, dict):
        raise ReslabError(f"{path} is not a reslab jobs file (no jobs mapping); move it away to start the jobs "
                          "afresh (run folders are kept)")
    for name, record in records.items():
        if not _well_formed(record):
            raise ReslabError(f"{path}: the record of job {name!r} is not one reslab writes (a job id, a launcher "
                              "of local or slurm, a submission folder in jobs/); move the file away to start the "
                              "jobs afresh (run folders are kept)")
    return records


def _well_formed(record) -> bool:
    if not isinstance(record, dict) or record.get("launcher") not in LAUNCHERS:
        return False
    job_id, folder = record.get("job_id"), record.get("folder")
    return (isinstance(job_id, str) and JOB_IDS[record["launcher"]].fullmatch(job_id) is not None
            and (folder is None or (isinstance(folder, str) and FOLDER_NAME.fullmatch(folder) is not None)))


def job_paths(folder: Path, record: dict):
    """submitit's file names (logs, pickles) of a recorded job: in its submission's folder,
    or in jobs/ itself for jobs recorded before submissions had folders."""
    need_submitit()
    from submitit.core.utils import JobPaths

    return JobPaths(Path(folder) / (record.get("folder") or ""), job_id=record["job_id"], task_id=0)


def _write_records(folder: Path, records: dict) -> None:
    atomic_write_json(Path(folder) / "jobs.json", {"jobs": records})


@contextmanager
def _locked(folder: Path):
    """One submitting process at a time per folder (two would submit the same runs twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def active_jobs(folder: Path) -> list[str]:
    """Names of the slots in ``folder`` whose last job is still pending or running."""
    records = read_records(folder)
    states = slurm_states(records)
    return [name for name, record in records.items()
            if _job_state(name, record, Path(folder), states)[0] in ("running", "pending")]


def slurm_states(records: dict) -> dict[str, str]:
    """sacct's state of every SLURM job among ``records``, in one call (none without SLURM jobs)."""
    job_ids = [str(r["job_id"]) for r in records.values() if r.get("launcher") == "slurm"]
    if not job_ids:
        return {}
    need_submitit()
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher()  # a fresh one: submitit's shared watcher keeps finished states for good
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    return {job_id: (watcher.get_state(job_id, mode="cache") or "UNKNOWN").split()[0].upper() for job_id in job_ids}


def slot_status(slot: Slot, record: dict | None, folder: Path, states: dict[str, str] | None = None) -> JobStatus:
    if slot.finished():
        return JobStatus(slot.name, "done", record.get("job_id") if record else None)
    if record is None:
        return JobStatus(slot.name, "new")
    state, detail, tail = _job_state(slot.name, record, folder, states or {})
    if state == "running":
        detail = ", ".join(part for part in (slot.progress(), detail) if part)
    elif state == "ended":  # the job ended well but left work (a tuning worker before a larger budget)
        state, detail = "new", "its last job ended before the work did"
    return JobStatus(slot.name, state, record.get("job_id"), detail, tail)


def _job_state(name: str, record: dict, folder: Path, states: dict[str, str]) -> tuple[str, str, list[str]]:
    """(running | pending | failed | ended, detail, log tail) of a submitted job whose work
    is not done. Never from submitit's result pickle: loading one runs whatever it holds."""
    paths = job_paths(folder, record)
    if record["launcher"] == "slurm":
        cluster_state = states.get(record["job_id"], "UNKNOWN")
        if cluster_state in SLURM_PENDING:
            return "pending", f"SLURM {cluster_state}", []
        if cluster_state in SLURM_RUNNING:
            return "running", f"on {_host(folder, name)}" if _host(folder, name) else "", []
        if cluster_state == "COMPLETED":  # the job's command exited 0 (submitit exits 1 on an exception)
            return "ended", "", []
        if cluster_state != "UNKNOWN":
            return "failed", f"SLURM {cluster_state}", _log_tail(paths)
        if _ending(folder, name, record) is None:  # not in sacct: submitted a moment ago, or forgotten
            return "pending", "not in sacct yet", []
    elif _local_alive(record):
        return "running", "", []
    ending = _ending(folder, name, record)  # read after the process: a job writes it before it ends
    if ending is not None and ending.get("outcome") == "finished":
        return "ended", "", []
    detail = _error_line(paths) or ("it ended without finishing its run" if ending is not None
                                    else "it ended without a result (killed?)")
    return "failed", detail, _log_tail(paths)


def _process_record(folder: Path, name: str) -> dict:
    """The job's own ``<name>.process.json`` (jobs.py), or {}."""
    try:
        raw = read_capped(Path(folder) / f"{name}.process.json", "job record", MAX_RECORD_BYTES)
        data = json.loads(raw.decode())
    except (ReslabError, ValueError, RecursionError):  # missing, huge or damaged: no record
        return {}
    return data if isinstance(data, dict) else {}


def _host(folder: Path, name: str) -> str:
    """The host a job's record names, printable (a record from someone else's folder must not
    drive the terminal)."""
    host = _process_record(folder, name).get("host")
    return "".join(c if c.isprintable() else "?" for c in host[:100]) if isinstance(host, str) else ""


def _ending(folder: Path, name: str, record: dict) -> dict | None:
    """How the recorded job's command ended, as the job wrote it (JSON), or None while it has
    not (or when the record is another job's)."""
    data = _process_record(folder, name)
    if str(data.get("job_id")) != record["job_id"] or data.get("outcome") is None:
        return None
    return data


def _local_alive(record: dict) -> bool:
    """Whether a local job's controller runs: the process of its id, not a zombie, started
    when the job was submitted, and running submitit's controller. A process id alone is
    not enough: it is reused, and a folder from elsewhere may name any live process."""
    pid = int(record["job_id"])
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that has ended
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: another user's process
        return False
    facts = _process_facts(pid)
    if facts is None:  # ended a moment ago; or no /proc (not Linux), where the process id is all there is
        return not Path("/proc/self").is_dir()
    state, started, command = facts
    if state == "Z" or "submitit.local._local" not in command:
        return False
    return record.get("process_start") in (None, started)


def _process_facts(pid: int) -> tuple[str, str, str] | None:
    """(state, start time in clock ticks after boot, command line) from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return fields[0], fields[19], command  # fields 3 and 22 of proc(5)
    except (OSError, IndexError):
        return None


def _error_line(paths) -> str:
    """The exception a job ended with: the last line of the traceback submitit logs after
    "Submitted job triggered an exception" (the log, read as text)."""
    lines = _log_lines(paths.stderr)
    marks = [i for i, line in enumerate(lines) if "Submitted job triggered an exception" in line]
    after = lines[marks[-1] + 1:] if marks else []
    return after[-1][:300] if after else ""


def _log_tail(paths, count: int = LOG_TAIL_LINES) -> list[str]:
    for path in (paths.stderr, paths.stdout):
        lines = _log_lines(path)
        # submitit's own traceback of the job's exception repeats the detail: show what led to it
        wrapper = [i for i, line in enumerate(lines) if "Submitted job triggered an exception" in line]
        if wrapper and wrapper[-1] > 0:
            lines = lines[:wrapper[-1]]
        if lines:
            return lines[-count:]
    return []


def _log_lines(path: Path, size: int = 8192) -> list[str]:
    """The non-blank lines of a log's last ``size`` bytes, without control characters (a
    log from someone else's folder must not drive the terminal)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    lines = text.replace("\r", "\n").splitlines()
    return ["".join(c if c.isprintable() else "?" for c in line.rstrip()) for line in lines if line.strip()]


# ---------------------------------------------------------------- launching


@dataclass
class Launch:
    statuses: list[JobStatus]
    submitted: list[str]

    def count(self, state: str) -> int:
        return sum(status.state == state for status in self.statuses)

    @property
    def done(self) -> bool:
        return all(status.state == "done" for status in self.statuses)


def launch(slots: list[Slot], options: LaunchOptions, folder: Path, job_name: str, status_only: bool = False,
           retry: bool = False, wait: bool = False, poll_seconds: float | None = None, log=None) -> Launch:
    """Submit a job for every slot with work left and no live job (failed ones only with
    ``retry``), at most ``options.jobs`` at once; with ``wait``, keep submitting as jobs
    end until none is left running. Returns every slot's state."""
    need_submitit()
    log = log or logger.info
    folder = Path(folder)
    poll = poll_seconds if poll_seconds is not None else (1.0 if options.name == "local" else 30.0)
    submitted_now: list[str] = []
    with _locked(folder):
        statuses = _submit_round(slots, options, folder, job_name, status_only, retry, submitted_now, log)
    while wait and any(status.active for status in statuses):
        time.sleep(poll)
        with _locked(folder):
            statuses = _submit_round(slots, options, folder, job_name, status_only, False, submitted_now, log)
    return Launch(statuses, submitted_now)


def _submit_round(slots, options, folder, job_name, status_only, retry, submitted_now, log) -> list[JobStatus]:
    records = read_records(folder)
    states = slurm_states(records)
    statuses = {slot.name: slot_status(slot, records.get(slot.name), folder, states) for slot in slots}
    wanted = [slot for slot in slots
              if statuses[slot.name].state == "new" or (retry and statuses[slot.name].state == "failed")]
    if status_only or not wanted:
        return [statuses[slot.name] for slot in slots]
    busy = sum(status.active for status in statuses.values())
    # SLURM runs at most options.jobs of an array at once by itself (--array=...%N); locally, hold back
    room = len(wanted) if options.jobs is None or options.name == "slurm" else max(0, options.jobs - busy)
    chosen, held = wanted[:room], wanted[room:]
    for slot in chosen:
        slot.check()
    if chosen:
        submission = _new_folder(folder)
        executor = make_executor(options, submission, job_name)
        jobs = [slot.make_job() for slot in chosen]
        if options.name == "slurm" and len(jobs) > 1:
            with executor.batch():  # one job array
                handles = [executor.submit(job) for job in jobs]
        else:
            handles = [executor.submit(job) for job in jobs]
        for slot, handle in zip(chosen, handles):
            previous = records.get(slot.name, {})
            records[slot.name] = {"name": slot.name, "job_id": str(handle.job_id), "launcher": options.name,
                                  "folder": submission.name, "attempt": previous.get("attempt", 0) + 1,
                                  "submitted": _now()}
            if options.name == "local":  # what tells this job's process from a later one with its id
                facts = _process_facts(int(handle.job_id))
                records[slot.name]["process_start"] = facts[1] if facts else None
            statuses[slot.name] = JobStatus(slot.name, "pending", str(handle.job_id),
                                            "submitted" + (f" again (attempt {records[slot.name]['attempt']})"
                                                           if previous else ""))
            submitted_now.append(slot.name)
            log(f"{slot.name}: submitted as job {handle.job_id} ({options.name})")
        _write_records(folder, records)
    for slot in held:
        statuses[slot.name] = JobStatus(slot.name, "pending", None,
                                        f"not submitted yet: at most {options.jobs} jobs at once (--jobs); "
                                        "submitted as others end (--wait) or when the command runs again")
    return [statuses[slot.name] for slot in slots]


def _new_folder(parent: Path) -> Path:
    """A submission's folder for submitit's pickles and logs, made now and so empty:
    submitit's job loads its submission pickle by name, and one planted under that name in
    a shared jobs/ folder would run instead (mkdir fails on any name already there)."""
    while True:
        path = parent / f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def format_statuses(statuses: list[JobStatus]) -> str:
    """A table of the jobs' states, with the log tail under each failed one."""
    width = max([len(s.name) for s in statuses] + [3])
    lines = [f"{'job':<{width}}  {'state':<8} {'id':<12} detail"]
    for status in statuses:
        lines.append(f"{status.name:<{width}}  {status.state:<8} {status.job_id or '-':<12} {status.detail}".rstrip())
        if status.state == "failed":
            lines += [f"{'':<{width}}    | {line}" for line in status.log_tail]
    counts = {state: sum(s.state == state for s in statuses) for state in ("done", "running", "pending", "failed",
                                                                            "new")}
    lines.append(", ".join(f"{count} {state}" for state, count in counts.items() if count))
    return "\n".join(lines)


# ---------------------------------------------------------------- a study's runs as jobs


def study_slots(study, runs, folder: Path, gpus: int) -> list[Slot]:
    """One slot per planned run: its job trains (or resumes) the run folder."""
    import copy

    from ..data import resolve_defaults
    from ..train.run_folder import check_resumable
    from .jobs import TrainJob
    from .study import run_state

    cwd = os.getcwd()
    slots = []
    for run in runs:
        run_dir = run.run_dir.resolve()
        config_file = folder / f"{run.name}.yaml"

        def make_job(run=run, run_dir=run_dir, config_file=config_file):
            config = copy.deepcopy(run.config)
            config.output.dir = str(run_dir.parent)  # the job's working folder may differ
            config.save(config_file)
            return TrainJob(run.name, folder, run_dir, config_file, gpus, cwd)

        def check(run=run):
            if run_state(run.run_dir) != "new":  # the rule of train --resume, as for runs in this process
                check_resumable(run.run_dir, resolve_defaults(copy.deepcopy(run.config)))

        slots.append(Slot(run.name, make_job, finished=lambda d=run_dir: (d / "metrics.json").is_file(),
                          progress=lambda d=run_dir, run=run: _epochs_done(d, run.config), check=check))
    return slots


def _epochs_done(run_dir: Path, config) -> str:
    from ..train.run_folder import read_history  # here: watching jobs does not load torch

    try:
        rows = len(read_history(run_dir))
    except ReslabError:  # a damaged history: the run's own report says so
        return ""
    if not rows:
        return "starting"
    return f"epoch {rows}/{config.train.epochs}" if config.train.epochs else f"{rows} epochs"


def launch_study(study, options: LaunchOptions, status_only: bool = False, retry: bool = False, wait: bool = False,
                 poll_seconds: float | None = None, log=None) -> tuple[list, Launch]:
    """The runs of ``study`` as jobs; returns (planned runs, their job states). The study's
    manifest (study.json) is written with the states, so that ``reslab report`` and a later
    ``reslab compare`` in this process find the same runs."""
    from .study import _write_manifest, plan

    need_submitit()
    runs = plan(study)
    if options.gpus > 1 and any(run.config.train.device == "cpu" for run in runs):
        raise ReslabError("train.device=cpu with --gpus above 1: torchrun would start one CPU process per GPU; "
                          "leave train.device at auto (or cuda)")
    folder = study.out / "jobs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create study folder {study.out}: {exc.strerror}") from None
    slots = study_slots(study, runs, folder.resolve(), options.gpus)
    result = launch(slots, options, folder.resolve(), f"reslab-{study.name}", status_only, retry, wait,
                    poll_seconds, log)
    words = {"done": "finished", "running": "running", "pending": "pending", "failed": "failed", "new": "pending"}
    _write_manifest(study, runs, {status.name: words[status.state] for status in result.statuses})
    return runs, result
