"""Workers as jobs: ``reslab tune --launcher local|slurm --jobs N`` sends N ``reslab tune``
workers that share the study (experiments/launch.py submits and follows them)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from ...errors import ReslabError
from ...runfs import atomic_write_text
from .settings import TuneSettings
from .study import Ledger, open_study

logger = logging.getLogger(__name__)


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
    from ..launch import Slot, launch, need_submitit

    need_submitit()
    from ..jobs import CommandJob

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
