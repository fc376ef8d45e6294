"""reslab compare: a study (models x datasets x seeds), in this process or as cluster jobs,
resumable, then its report."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReslabError
from .common import add_launcher_flags, jobs_finished, launcher


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="run a study (models x datasets x seeds), resumable, then report it",
        description="reslab compare STUDY.yaml [section.key=value ...]  or  "
                    "reslab compare --recipe R --models a,b --seeds 0,1 --out DIR [section.key=value ...]. "
                    "Run again after a stop: finished runs are reused, interrupted ones resumed.")
    parser.add_argument("items", nargs="*", metavar="STUDY.yaml | section.key=value",
                        help="a study file or shipped study (digits-depth, cifar10-depth), and overrides for "
                             "every run")
    parser.add_argument("--recipe", help="a recipe name or YAML file; {model} is replaced by each model's name")
    parser.add_argument("--models", help="comma-separated model names")
    parser.add_argument("--seeds", help="comma-separated training seeds (default 0)")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: the recipe's)")
    parser.add_argument("--out", help="the study's folder (default runs/<study name>)")
    parser.add_argument("--epochs", type=int, help="sets train.epochs for every run (and train.max_iters=null)")
    parser.add_argument("--device", help="sets train.device")
    parser.add_argument("--data-root", help="sets data.root")
    parser.add_argument("--no-report", action="store_true", help="train only")
    parser.add_argument("--robustness", action="store_true",
                        help="then measure each run's corruption errors (mCE) and calibration (ECE) and report them; "
                             "settings from the study's robustness: section (default: all 15 corruptions x 5 "
                             "severities on every test image)")
    parser.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    add_launcher_flags(parser, "each run is one job; --jobs: at most this many at once")
    parser.set_defaults(func=run, overrides_into="items")


def run(args) -> int:
    from ..experiments.study import run_study, study_from_command
    from ..report.report import build_report, report_text

    study = study_from_command(args.items, models=args.models, seeds=args.seeds, datasets=args.datasets,
                               recipe=args.recipe, out=args.out, epochs=args.epochs, device=args.device,
                               data_root=args.data_root)
    options = launcher(args, study.launcher)
    if options is not None:
        return run_as_jobs(args, study, options)
    refuse_while_jobs_run(study.out / "jobs", "reslab compare ... --launcher {local,slurm} --status")
    result = run_study(study, progress=not args.no_progress)
    print(f"\nstudy {study.name}: {len(result.runs)} runs ({result.trained} trained now) in {result.seconds:.0f} s; "
          f"run folders in {study.out}")
    measure_robustness(args, study, result.run_dirs)
    if not args.no_report:
        print()
        print(report_text(build_report(result.run_dirs, study.out / "report", title=f"Study {study.name}")))
    return 0


def run_as_jobs(args, study, options) -> int:
    from ..experiments.launch import launch_study
    from ..report.report import build_report, report_text

    runs, launched = launch_study(study, options, status_only=args.status, retry=args.retry, wait=args.wait)
    if not jobs_finished(args, launched, launched.done,
                         unfinished=f"study {study.name}: {launched.count('done')} of {len(runs)} runs finished; run "
                                    "the same command again to see the jobs, and to gather the report once every "
                                    "run is done",
                         submit="submit those not submitted", jobs="job(s)", resume="they resume"):
        return 0
    run_dirs = [study_run.run_dir for study_run in runs]
    print(f"\nstudy {study.name}: {len(runs)} runs finished; run folders in {study.out}")
    measure_robustness(args, study, run_dirs)
    if not args.no_report:
        print()
        print(report_text(build_report(run_dirs, study.out / "report", title=f"Study {study.name}")))
    return 0


def refuse_while_jobs_run(folder: Path, see: str) -> None:
    if (folder / "jobs.json").is_file():
        from ..experiments.launch import active_jobs

        busy = active_jobs(folder)
        if busy:
            raise ReslabError(f"{len(busy)} job(s) of this folder are still pending or running ({', '.join(busy[:3])}"
                              f"{', ...' if len(busy) > 3 else ''}); training here too would share their run "
                              f"folders: see them with {see}")


def measure_robustness(args, study, run_dirs) -> None:
    """compare --robustness (or a study with a robustness: section): each run's corruption
    errors and calibration, kept in its folder, for the report's robustness section."""
    if not (args.robustness or study.robustness is not None):
        return
    from ..evaluate.robustness import RobustnessSettings, study_robustness

    settings = RobustnessSettings.from_dict(study.robustness)
    print(f"\nrobustness: {len(settings.corruptions)} corruptions x {len(settings.severities)} severities on "
          f"{settings.images or 'all the'} test images of each of {len(run_dirs)} runs"
          + (f", mCE against {settings.baseline}" if settings.baseline else ""))
    study_robustness(run_dirs, settings, device=args.device or "auto")
