"""reslab tune: a hyper-parameter search on Optuna, as this process's worker or as worker
jobs, resumable and shareable; then the best recipe and a report."""

from __future__ import annotations

from .common import add_launcher_flags, jobs_finished, launcher, seed_type


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="hyper-parameter search on Optuna (TPE, median/Hyperband pruning), resumable and shareable",
        description="reslab tune SPACE.yaml [section.key=value ...]: a search space next to a base recipe "
                    "(shipped: digits). The study is kept in <out>/study.db or --storage; run the same command "
                    "again after a stop, or several at once, to continue or share it. Writes <out>/best.yaml "
                    "(reslab train --config), trials.csv and a report.")
    parser.add_argument("items", nargs="+", metavar="SPACE.yaml | section.key=value",
                        help="a space file or shipped space, and overrides for every trial")
    parser.add_argument("--recipe", help="the base recipe (default: the space file's recipe:)")
    parser.add_argument("--trials", type=int, help="the study's budget of finished trials (default: the file's, or 20)")
    parser.add_argument("--out", help="the tuning folder (default runs/tune-<space name>)")
    parser.add_argument("--storage", metavar="URL", help="an Optuna storage: sqlite:///path.db (default "
                        "<out>/study.db) or postgresql://user@host/db for many workers")
    parser.add_argument("--study-name", help="the study's name in the storage (default: the space's name)")
    parser.add_argument("--metric", help="a history column to optimise (default val_accuracy; loss and error are "
                        "minimised)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), help="(default: the file's, or median)")
    parser.add_argument("--epochs", type=int, help="sets train.epochs for every trial (and train.max_iters=null)")
    parser.add_argument("--seed", type=seed_type, help="the sampler's seed (default: random)")
    parser.add_argument("--heartbeat", type=int, metavar="SECONDS",
                        help="a running trial's heartbeat; one silent for 3 beats is taken as dead and queued again "
                             "(default 30)")
    parser.add_argument("--no-report", action="store_true", help="only run trials (what a worker job does)")
    parser.add_argument("--no-progress", action="store_true", help="no per-trial progress bar")
    add_launcher_flags(parser, "each job is one worker; --jobs: how many workers (default 1)")
    parser.set_defaults(func=run, overrides_into="items")


def run(args) -> int:
    from ..experiments.tune import launch_tune, run_worker, tune_settings
    from ..report.tune import build_tune_report, summarize, tune_text, write_outputs

    settings = tune_settings(args.items, recipe=args.recipe, trials=args.trials, out=args.out, storage=args.storage,
                             metric=args.metric, pruner=args.pruner, epochs=args.epochs, seed=args.seed,
                             heartbeat=args.heartbeat, study_name=args.study_name)
    options = launcher(args, settings.launcher)
    if options is None:  # this process is one worker (others, and worker jobs, may share the study)
        worker = run_worker(settings, progress=not args.no_progress)
        if args.no_report:
            print(f"worker finished: trials {', '.join(map(str, worker.ran)) or 'none'} in {worker.seconds:.0f} s; "
                  f"the study has {worker.finished} of {settings.trials} finished")
            return 0
    else:
        launched, finished = launch_tune(settings, options, status_only=args.status, retry=args.retry,
                                         wait=args.wait)
        if not jobs_finished(args, launched, finished,
                             unfinished=f"study {settings.name}: not finished yet; run the same command again to see "
                                        "the workers, and to write the best recipe and the report once the study is "
                                        "done",
                             submit="submit workers", jobs="worker job(s)", resume="their trials resume"):
            return 0
        print()
    summary = summarize(settings)
    written = write_outputs(summary)
    report = None if args.no_report else build_tune_report(summary, settings.out / "report")
    print(tune_text(summary, written.get("best"), report))
    return 0
