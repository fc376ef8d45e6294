"""The command line: parses, builds a config, calls the library. Errors a user can
cause end in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from . import __version__
from .errors import Interrupted, ReslabError

# Short flags, each a name for one config key (so a flag is always visible in the config).
FLAG_KEYS = {
    "model": "model.name", "data": "data.name", "data_root": "data.root", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "lr": "optim.lr", "device": "train.device", "seed": "train.seed",
    "out": "output.dir", "name": "output.name", "precision": "train.precision",
}


def seed_type(text: str) -> int:
    """A seed as NumPy's and PyTorch's generators all take it: a whole number in [0, 2**32)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 2**32):
        shown = text if len(text) <= 20 else f"{text[:20]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(f"a seed is a whole number in [0, 2**32), got {shown!r}")
    return int(text)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML file or a shipped recipe name (`reslab recipes`); default: scratch, "
                        "or finetune where model.pretrained is set (both sized to the data)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="any config key, e.g. train.epochs=30 optim.name=adam (anywhere on the line)")
    parser.set_defaults(overrides_into="overrides")
    group = parser.add_argument_group("shortcuts for common config keys")
    for flag, key in FLAG_KEYS.items():
        group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, metavar="VALUE", help=f"sets {key}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args) -> list[str]:
    flags = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    if args.epochs is not None:  # --epochs means "this many epochs", not "at most, or 64k iterations"
        flags.append("train.max_iters=null")
    return flags + list(args.overrides)


def cmd_train(args) -> int:
    from .config import default_recipe, load, validate

    if args.resume:
        from .train.run_folder import load_run_config

        if args.config:
            raise ReslabError("--config cannot be combined with --resume: a resumed run keeps its own config; "
                              "give the changes allowed (e.g. train.epochs=60) as section.key=value")
        config = validate(load_run_config(args.resume, _overrides(args)))
    else:
        overrides = _overrides(args)
        config = load(args.config or default_recipe(overrides), overrides)
    from torch.distributed.elastic.multiprocessing.errors import record

    from .train.loop import train  # after the config: a bad one fails before PyTorch loads

    # record: under torchrun, a failing rank writes its error where torchrun reports it.
    result = record(train)(config, resume=Path(args.resume) if args.resume else None,
                           progress=not args.no_progress)
    if is_main_process():  # under torchrun, one table
        _print_metrics(result.metrics)
        print(f"run folder: {result.run_dir}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from .report.tables import metrics_table

    print(metrics_table(metrics))


def cmd_evaluate(args) -> int:
    from .evaluate.runner import evaluate_checkpoint, write_reliability
    from .runfs import atomic_write_json, check_output_file

    if args.output:
        check_output_file(Path(args.output))
    settings = _robustness_settings(args)  # bad flags fail before the evaluation
    if settings is not None:
        from .models.weights.hub import is_hub_source

        if is_hub_source(args.checkpoint):
            raise ReslabError(f"{args.checkpoint} is a hub folder: --corruptions takes a run folder or checkpoint")
    metrics = evaluate_checkpoint(Path(args.checkpoint), data=args.data, data_root=args.data_root, split=args.split,
                                  device=args.device, model=args.model)
    _print_metrics(metrics)
    figure = write_reliability(Path(args.checkpoint), metrics)
    if figure is not None:
        print(f"reliability diagram: {figure}")
    if settings is not None:
        from .evaluate.robustness import evaluate_robustness, robustness_table

        robustness = evaluate_robustness(Path(args.checkpoint), settings, split=args.split, device=args.device,
                                         data=args.data, data_root=args.data_root)
        metrics["robustness"] = robustness
        print()
        print(robustness_table(robustness["result"], robustness["summary"]))
        for path in robustness["files"]:
            print(f"written: {path}")
    if args.output:
        atomic_write_json(Path(args.output), metrics)
        print(f"written: {args.output}")
    return 0


def _robustness_settings(args):
    """The corruption evaluation the evaluate flags ask for, or None without --corruptions."""
    if args.corruptions is None and args.corruptions_from is not None:
        args.corruptions = "all"
    if args.corruptions is None:
        given = [flag for flag, value in (("--severities", args.severities), ("--baseline", args.baseline),
                                          ("--corruption-images", args.corruption_images)) if value is not None]
        if given:
            raise ReslabError(f"{given[0]} goes with --corruptions (all, or names such as gaussian_noise,fog)")
        return None
    from .evaluate.robustness import RobustnessSettings

    if args.baseline is not None and not Path(args.baseline).exists():
        raise ReslabError(f"--baseline {args.baseline} does not exist; give a run folder or checkpoint")
    return RobustnessSettings.from_dict({"corruptions": args.corruptions, "severities": args.severities or "1-5",
                                         "images": args.corruption_images, "seed": args.corruption_seed,
                                         "baseline": args.baseline, "corruptions_from": args.corruptions_from})


def cmd_calibrate(args) -> int:
    from .evaluate.calibrate import calibrate_run, calibration_table

    record = calibrate_run(Path(args.run), device=args.device, data_root=args.data_root)
    print(calibration_table(record))
    print(f"\nwritten: calibration.json and {record['figure']} in the run folder; reslab predict and serve now divide "
          f"{record['checkpoint']}'s logits by T = {record['temperature']:.4f}")
    return 0


def _study_robustness(args, study, run_dirs) -> None:
    """compare --robustness (or a study with a robustness: section): each run's corruption
    errors and calibration, kept in its folder, for the report's robustness section."""
    if not (args.robustness or study.robustness is not None):
        return
    from .evaluate.robustness import RobustnessSettings, study_robustness

    settings = RobustnessSettings.from_dict(study.robustness)
    print(f"\nrobustness: {len(settings.corruptions)} corruptions x {len(settings.severities)} severities on "
          f"{settings.images or 'all the'} test images of each of {len(run_dirs)} runs"
          + (f", mCE against {settings.baseline}" if settings.baseline else ""))
    study_robustness(run_dirs, settings, device=args.device or "auto")


def cmd_demo(args) -> int:
    from .experiments.demo import run_demo
    from .report.report import build_report, report_text

    demo = run_demo(Path(args.out), epochs=args.epochs, progress=not args.no_progress)
    report = build_report(demo.run_dirs, demo.folder / "report", title="ResNet-20 vs Plain-20 on digits")
    print()
    print(report_text(report, table=demo.table))
    print(f"\nrun folder: {demo.folder}  (comparison.md, error_curves.png, report/report.html, and one folder "
          "per model)")
    return 0


def cmd_summary(args) -> int:
    from .models import create_model
    from .models.summary import format_summary

    try:
        shape = tuple(int(v) for v in args.input_size.split(","))
    except ValueError:
        raise ReslabError(f"--input-size must be C,H,W (e.g. 3,32,32), got {args.input_size!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ReslabError(f"--input-size must be three positive numbers C,H,W, got {args.input_size!r}")
    model = create_model(args.model, num_classes=args.num_classes, in_channels=shape[0])
    print(format_summary(model, args.model, shape, depth=args.depth))
    return 0


def cmd_models(args) -> int:
    from .models import describe_model, list_models

    names = list_models(args.pattern or "")
    width = max((len(n) for n in names), default=10)
    for name in names:
        print(f"{name:<{width}}  {describe_model(name)}")
    return 0


def cmd_recipes(args) -> int:
    from .config import shipped_names

    for kind, use in (("recipe", "reslab train --config NAME"), ("study", "reslab compare NAME"),
                      ("space", "reslab tune NAME")):
        print(f"{kind.replace('study', 'studie')}s ({use}):")
        print("\n".join(f"  {name}" for name in shipped_names(kind)))
    return 0


def cmd_config(args) -> int:
    from .config import default_recipe, load
    from .config_help import annotated_yaml, key_reference

    if args.reference:
        print(key_reference(), end="")
        return 0
    overrides = list(args.overrides)
    if args.recipe is not None and OVERRIDE.match(args.recipe):  # no recipe named: the first word is an override
        args.recipe, overrides = None, [args.recipe, *overrides]
    recipe = args.recipe or default_recipe(overrides)
    config = load(recipe, overrides)
    shown = " ".join([recipe, *overrides])
    print(annotated_yaml(config, f"reslab config {shown}: every key, resolved (save it and use --config FILE)"), end="")
    return 0


def cmd_compare(args) -> int:
    from .experiments.study import run_study, study_from_command
    from .report.report import build_report, report_text

    study = study_from_command(args.items, models=args.models, seeds=args.seeds, datasets=args.datasets,
                               recipe=args.recipe, out=args.out, epochs=args.epochs, device=args.device,
                               data_root=args.data_root)
    options = _launcher(args, study.launcher)
    if options is not None:
        return _compare_as_jobs(args, study, options)
    _refuse_while_jobs_run(study.out / "jobs", "reslab compare ... --launcher {local,slurm} --status")
    result = run_study(study, progress=not args.no_progress)
    print(f"\nstudy {study.name}: {len(result.runs)} runs ({result.trained} trained now) in {result.seconds:.0f} s; "
          f"run folders in {study.out}")
    _study_robustness(args, study, result.run_dirs)
    if not args.no_report:
        print()
        print(report_text(build_report(result.run_dirs, study.out / "report", title=f"Study {study.name}")))
    return 0


def _launcher(args, from_file: dict):
    """The launcher the flags and the study or space file ask for; None: in this process."""
    from .experiments.launch import launch_options

    return launch_options(from_file, name=args.launcher, partition=args.partition, gpus=args.gpus, time=args.time,
                          cpus=args.cpus, mem_gb=args.mem_gb, jobs=args.jobs, sbatch=args.sbatch, setup=args.setup)


def _refuse_while_jobs_run(folder: Path, see: str) -> None:
    if (folder / "jobs.json").is_file():
        from .experiments.launch import active_jobs

        busy = active_jobs(folder)
        if busy:
            raise ReslabError(f"{len(busy)} job(s) of this folder are still pending or running ({', '.join(busy[:3])}"
                              f"{', ...' if len(busy) > 3 else ''}); training here too would share their run "
                              f"folders: see them with {see}")


def _compare_as_jobs(args, study, options) -> int:
    from .experiments.launch import format_statuses, launch_study
    from .report.report import build_report, report_text

    runs, launched = launch_study(study, options, status_only=args.status, retry=args.retry, wait=args.wait)
    print(format_statuses(launched.statuses))
    if not launched.done:
        failed = launched.count("failed")
        print(f"\nstudy {study.name}: {launched.count('done')} of {len(runs)} runs finished; run the same command "
              "again to see the jobs, and to gather the report once every run is done"
              + ("; without --status to submit those not submitted" if args.status and launched.count("new") else ""))
        if failed and (args.wait or args.status):
            raise ReslabError(f"{failed} job(s) failed (their log tails are above); run again with --retry to "
                              "resubmit them: they resume from their checkpoints")
        return 0
    print(f"\nstudy {study.name}: {len(runs)} runs finished; run folders in {study.out}")
    _study_robustness(args, study, [run.run_dir for run in runs])
    if not args.no_report:
        print()
        print(report_text(build_report([run.run_dir for run in runs], study.out / "report",
                                       title=f"Study {study.name}")))
    return 0


def cmd_tune(args) -> int:
    from .experiments.launch import format_statuses
    from .experiments.tune import launch_tune, run_worker, tune_settings
    from .report.tune import build_tune_report, summarize, tune_text, write_outputs

    settings = tune_settings(args.items, recipe=args.recipe, trials=args.trials, out=args.out, storage=args.storage,
                             metric=args.metric, pruner=args.pruner, epochs=args.epochs, seed=args.seed,
                             heartbeat=args.heartbeat, study_name=args.study_name)
    options = _launcher(args, settings.launcher)
    if options is None:  # this process is one worker (others, and worker jobs, may share the study)
        worker = run_worker(settings, progress=not args.no_progress)
        if args.no_report:
            print(f"worker finished: trials {', '.join(map(str, worker.ran)) or 'none'} in {worker.seconds:.0f} s; "
                  f"the study has {worker.finished} of {settings.trials} finished")
            return 0
    else:
        launched, finished = launch_tune(settings, options, status_only=args.status, retry=args.retry,
                                         wait=args.wait)
        print(format_statuses(launched.statuses))
        if not finished:
            print(f"\nstudy {settings.name}: not finished yet; run the same command again to see the workers, and "
                  "to write the best recipe and the report once the study is done"
                  + ("; without --status to submit workers" if args.status and launched.count("new") else ""))
            failed = launched.count("failed")
            if failed and (args.wait or args.status):
                raise ReslabError(f"{failed} worker job(s) failed (their log tails are above); run again with "
                                  "--retry to resubmit them: their trials resume from their checkpoints")
            return 0
        print()
    summary = summarize(settings)
    written = write_outputs(summary)
    report = None if args.no_report else build_tune_report(summary, settings.out / "report")
    print(tune_text(summary, written.get("best"), report))
    return 0


def cmd_report(args) -> int:
    from .report.report import build_report, load_bench, report_text

    if args.out is None and len(args.runs) > 1:
        raise ReslabError("give --out DIR for a report on several folders (one folder's report goes to "
                          "FOLDER/report by default)")
    out = Path(args.out) if args.out is not None else Path(args.runs[0]) / "report"
    bench = load_bench(args.bench) if args.bench else None
    print(report_text(build_report(args.runs, out, title=args.title, bench=bench)))
    return 0


def cmd_bench(args) -> int:
    if args.run is not None:
        from .inference.engines import cmd_bench_engines

        return cmd_bench_engines(args)
    if not args.models:
        raise ReslabError("give --models NAMES to time models, or a run folder or checkpoint to compare inference "
                          "engines")
    from .experiments.bench import format_bench, parse_input_sizes, run_bench, write_bench

    def numbers(text: str, flag: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ReslabError(f"{flag} must be numbers separated by commas, got {text!r}") from None

    bench = run_bench([m.strip() for m in args.models.split(",") if m.strip()],
                      numbers(args.batch_sizes, "--batch-sizes"), parse_input_sizes(args.input_size),
                      [p.strip() for p in args.precisions.split(",") if p.strip()], device=args.device,
                      num_classes=args.num_classes, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                      channels_last=args.channels_last)
    print(format_bench(bench))
    if args.json:
        write_bench(bench, Path(args.json))
        print(f"written: {args.json}")
    return 0


def cmd_predict(args) -> int:
    from .inference.predict_command import run_predict

    print(run_predict(args.checkpoint, args.images, top_k=args.top_k, style=args.format, threshold=args.threshold,
                      explain=args.explain, target_class=args.target_class, batch_size=args.batch_size,
                      device=args.device, note=lambda line: print(line, file=sys.stderr)))
    return 0


def cmd_export(args) -> int:
    from .inference.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.format, args.output).describe())
    return 0


def cmd_serve(args) -> int:
    from .inference.server import serve

    return serve(args.checkpoint, host=args.host, port=args.port, top_k=args.top_k, threshold=args.threshold,
                 max_upload_mb=args.max_upload_mb, device=args.device)


def _add_launcher_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """Cluster jobs through submitit (experiments/launch.py); the study or space file's
    launcher: section gives the same settings, the flags win."""
    group = parser.add_argument_group(f"cluster jobs ({what})")
    group.add_argument("--launcher", choices=("none", "local", "slurm"),
                       help="slurm: sbatch jobs; local: the same jobs as local processes; none: in this process")
    group.add_argument("--jobs", type=int, metavar="N")
    group.add_argument("--partition", help="sbatch --partition")
    group.add_argument("--gpus", type=int, metavar="G", help="GPUs per job; above 1 the job runs under torchrun")
    group.add_argument("--time", metavar="LIMIT", help="each job's time limit: minutes or [D-]HH:MM:SS (default "
                       "24:00:00); 90 s before it the job saves its state and requeues")
    group.add_argument("--cpus", type=int, metavar="C", help="sbatch --cpus-per-task")
    group.add_argument("--mem-gb", type=float, metavar="GB", help="sbatch --mem")
    group.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch account=proj --sbatch qos=high (repeatable)")
    group.add_argument("--setup", action="append", metavar="COMMAND",
                       help="a shell line run before each job, e.g. 'module load cuda' (repeatable)")
    group.add_argument("--wait", action="store_true", help="wait until every job has ended")
    group.add_argument("--status", action="store_true", help="only show the jobs' states; submit nothing")
    group.add_argument("--retry", action="store_true", help="resubmit failed jobs (they resume from checkpoints)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reslab", description="Deep residual networks for image recognition.")
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (a run folder with metrics, curves, checkpoints)")
    _add_config_flags(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved checkpoint or run folder")
    evaluate.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file, or a hub folder "
                          "or hf-hub:org/name (give --data unless it names its dataset)")
    evaluate.add_argument("--data", help="dataset name (default: the one it was trained on)")
    evaluate.add_argument("--data-root", help="where the dataset is (default: as in training)")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--model", help="refuse the checkpoint unless it is of this model")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    corruption = evaluate.add_argument_group("common corruptions (Hendrycks & Dietterich 2019)")
    corruption.add_argument("--corruptions", metavar="all|NAMES",
                            help="also measure the error under these corruptions: all, a category (noise, blur, "
                                 "weather, digital) or comma-separated names")
    corruption.add_argument("--severities", metavar="1-5", help="severities, e.g. 1-5 or 1,3,5 (default 1-5)")
    corruption.add_argument("--baseline", metavar="RUN", help="a run folder or checkpoint to normalise mCE by "
                            "(evaluated with the same settings)")
    corruption.add_argument("--corruption-images", type=int, metavar="N",
                            help="a fixed random subset of N images of the split, for speed (default: all)")
    corruption.add_argument("--corruption-seed", type=int, default=0, help="seed of the corruptions (default 0)")
    corruption.add_argument("--corruptions-from", metavar="DIR",
                            help="read the corrupted images from published files instead of generating them: the "
                                 "folder of CIFAR-10-C/CIFAR-100-C's .npy files, or of ImageNet-C's "
                                 "<corruption>/<severity>/<class>/ folders (default --corruptions: all)")
    evaluate.set_defaults(func=cmd_evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="temperature scaling on the validation split; predict and serve then use it",
        description="Fits one temperature T on the run's validation split (Guo et al. 2017), reports ECE, MCE, NLL "
                    "and Brier before and after on the validation and test splits, and writes calibration.json "
                    "and calibration.png into the run folder (best.pt is not rewritten).")
    calibrate.add_argument("run", help="a run folder (its best checkpoint) or a checkpoint in its checkpoints/")
    calibrate.add_argument("--data-root", help="where the dataset is (default: as in training)")
    calibrate.add_argument("--device", default="auto")
    calibrate.set_defaults(func=cmd_calibrate)

    demo = commands.add_parser("demo", help="the main job: ResNet-20 vs Plain-20 on the embedded digits")
    demo.add_argument("--out", default="runs", help="parent folder of the demo's run folder")
    demo.add_argument("--epochs", type=int, help="epochs per model (recipe: 40)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    summary = commands.add_parser("summary", help="layer table, parameter counts and MACs of a model")
    summary.add_argument("model")
    summary.add_argument("--input-size", default="3,32,32", help="C,H,W (default 3,32,32)")
    summary.add_argument("--num-classes", type=int, help="default: the family's (ImageNet nets 1000, CIFAR nets 10)")
    summary.add_argument("--depth", type=int, default=None,
                         help="one row per module nested this deep (2: one per block) instead of per layer")
    summary.set_defaults(func=cmd_summary)

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("pattern", nargs="?", help="only names containing this")
    models.set_defaults(func=cmd_models)

    recipes = commands.add_parser("recipes", help="list the shipped recipes (--config), studies (compare) and "
                                                  "search spaces (tune)")
    recipes.set_defaults(func=cmd_recipes)

    config = commands.add_parser("config", help="print a recipe's config, resolved, with each key's help",
                                 description="reslab config [RECIPE] [section.key=value ...]: the YAML that "
                                             "reslab train --config RECIPE would use, each key with its help.")
    config.add_argument("recipe", nargs="?", help="a recipe name or YAML file (default: what a bare train uses)")
    config.add_argument("--reference", action="store_true",
                        help="every key with its type, default and help, as Markdown (docs/config-keys.md)")
    config.add_argument("overrides", nargs="*", help="section.key=value")
    config.set_defaults(func=cmd_config, overrides_into="overrides")

    compare = commands.add_parser(
        "compare", help="run a study (models x datasets x seeds), resumable, then report it",
        description="reslab compare STUDY.yaml [section.key=value ...]  or  "
                    "reslab compare --recipe R --models a,b --seeds 0,1 --out DIR [section.key=value ...]. "
                    "Run again after a stop: finished runs are reused, interrupted ones resumed.")
    compare.add_argument("items", nargs="*", metavar="STUDY.yaml | section.key=value",
                         help="a study file or shipped study (digits-depth, cifar10-depth), and overrides for "
                              "every run")
    compare.add_argument("--recipe", help="a recipe name or YAML file; {model} is replaced by each model's name")
    compare.add_argument("--models", help="comma-separated model names")
    compare.add_argument("--seeds", help="comma-separated training seeds (default 0)")
    compare.add_argument("--datasets", help="comma-separated dataset names (default: the recipe's)")
    compare.add_argument("--out", help="the study's folder (default runs/<study name>)")
    compare.add_argument("--epochs", type=int, help="sets train.epochs for every run (and train.max_iters=null)")
    compare.add_argument("--device", help="sets train.device")
    compare.add_argument("--data-root", help="sets data.root")
    compare.add_argument("--no-report", action="store_true", help="train only")
    compare.add_argument("--robustness", action="store_true",
                         help="then measure each run's corruption errors (mCE) and calibration (ECE) and report them; "
                              "settings from the study's robustness: section (default: all 15 corruptions x 5 "
                              "severities on every test image)")
    compare.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    _add_launcher_flags(compare, "each run is one job; --jobs: at most this many at once")
    compare.set_defaults(func=cmd_compare, overrides_into="items")

    tune = commands.add_parser(
        "tune", help="hyper-parameter search on Optuna (TPE, median/Hyperband pruning), resumable and shareable",
        description="reslab tune SPACE.yaml [section.key=value ...]: a search space next to a base recipe "
                    "(shipped: digits). The study is kept in <out>/study.db or --storage; run the same command "
                    "again after a stop, or several at once, to continue or share it. Writes <out>/best.yaml "
                    "(reslab train --config), trials.csv and a report.")
    tune.add_argument("items", nargs="+", metavar="SPACE.yaml | section.key=value",
                      help="a space file or shipped space, and overrides for every trial")
    tune.add_argument("--recipe", help="the base recipe (default: the space file's recipe:)")
    tune.add_argument("--trials", type=int, help="the study's budget of finished trials (default: the file's, or 20)")
    tune.add_argument("--out", help="the tuning folder (default runs/tune-<space name>)")
    tune.add_argument("--storage", metavar="URL", help="an Optuna storage: sqlite:///path.db (default "
                      "<out>/study.db) or postgresql://user@host/db for many workers")
    tune.add_argument("--study-name", help="the study's name in the storage (default: the space's name)")
    tune.add_argument("--metric", help="a history column to optimise (default val_accuracy; loss and error are "
                      "minimised)")
    tune.add_argument("--pruner", choices=("median", "hyperband", "none"), help="(default: the file's, or median)")
    tune.add_argument("--epochs", type=int, help="sets train.epochs for every trial (and train.max_iters=null)")
    tune.add_argument("--seed", type=seed_type, help="the sampler's seed (default: random)")
    tune.add_argument("--heartbeat", type=int, metavar="SECONDS",
                      help="a running trial's heartbeat; one silent for 3 beats is taken as dead and queued again "
                           "(default 30)")
    tune.add_argument("--no-report", action="store_true", help="only run trials (what a worker job does)")
    tune.add_argument("--no-progress", action="store_true", help="no per-trial progress bar")
    _add_launcher_flags(tune, "each job is one worker; --jobs: how many workers (default 1)")
    tune.set_defaults(func=cmd_tune, overrides_into="items")

    report = commands.add_parser("report", help="Markdown/HTML report, CSV/JSON and figures from run folders")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, a study folder or a demo folder")
    report.add_argument("--out", help="folder for report.md, report.html, CSV, JSON and figures/ (default: "
                        "FOLDER/report for one folder)")
    report.add_argument("--title", help="the report's title")
    report.add_argument("--bench", metavar="JSON", help="include a reslab bench --json file")
    report.set_defaults(func=cmd_report)

    bench = commands.add_parser("bench", help="training and inference throughput, latency and peak memory; or a "
                                "run's CPU inference through eager, compiled, ONNX Runtime and int8 engines")
    bench.add_argument("run", nargs="?", metavar="RUN", help="a run folder or checkpoint: compare CPU inference "
                       "engines on it (images/s, test accuracy) instead of timing --models")
    bench.add_argument("--models", help="comma-separated model names")
    bench.add_argument("--batch-sizes", default="1,128", help="comma-separated (default 1,128)")
    bench.add_argument("--input-size", default="3,32,32", help="C,H,W; several separated by ';' (default 3,32,32)")
    bench.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16 (GPU) (default fp32)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--num-classes", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    bench.add_argument("--repeats", type=int, default=10, help="timed iterations; the median is reported (default 10)")
    bench.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    bench.add_argument("--channels-last", action="store_true")
    bench.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    bench.add_argument("--engines", default="eager,compiled,onnxruntime,int8",
                       help="with RUN: comma-separated, of eager, compiled, onnxruntime, int8 (default all)")
    bench.add_argument("--images", type=int, help="with RUN: accuracy over the first N test images (default all)")
    bench.add_argument("--data-root", help="with RUN: where its dataset is, if it moved since training")
    bench.set_defaults(func=cmd_bench)

    predict = commands.add_parser("predict", help="classify image files with a trained model (top-k, Grad-CAM)")
    predict.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file, a hub folder "
                         "(timm's layout: config.json + model.safetensors) or hf-hub:org/name")
    predict.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    predict.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    predict.add_argument("--format", choices=("table", "csv", "json"), default="table")
    predict.add_argument("--threshold", type=float,
                         help="multi-label checkpoints: show every label over this probability (default 0.5)")
    predict.add_argument("--explain", metavar="DIR", help="also write a Grad-CAM overlay PNG per image into DIR")
    predict.add_argument("--class", dest="target_class", metavar="NAME",
                         help="with --explain: explain this class (name or index), not the predicted one")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.add_argument("--device", default="auto")
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="export to ONNX, torch.export (.pt2), TorchScript (deprecated), "
                                 "safetensors or a hub folder (timm's layout), with a parity check")
    export.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file or a hub folder "
                        "(timm's layout)")
    export.add_argument("--format", choices=("onnx", "pt2", "torchscript", "safetensors", "hub"), required=True,
                        help="pt2: a torch.export program, any batch size; torchscript: PyTorch deprecates it")
    export.add_argument("--output", help="file to write, or folder for hub (default: the run's name with .onnx, .pt2, "
                        ".pt, .safetensors or -hub, here)")
    export.set_defaults(func=cmd_export)

    serve = commands.add_parser("serve", help="a local web page: upload an image, see predictions and Grad-CAM")
    serve.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file or a hub folder "
                       "(timm's layout)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--top-k", type=int, default=5)
    serve.add_argument("--threshold", type=float, default=0.5, help="multi-label checkpoints: a label counts over this")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10)")
    serve.add_argument("--device", default="auto")
    serve.set_defaults(func=cmd_serve)
    return parser


def is_main_process() -> bool:
    """Rank 0 under torchrun (which sets RANK), or a process on its own."""
    return os.environ.get("RANK", "0") == "0"


class _TqdmAwareHandler(logging.Handler):
    """Log lines on (the current) stderr, written around an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging() -> None:
    """The library logs through ``logging``; the command line shows its messages on stderr
    as ``reslab: ...`` lines (rank 0 only under torchrun)."""
    logger = logging.getLogger("reslab")
    if any(isinstance(h, _TqdmAwareHandler) for h in logger.handlers):
        return
    handler = _TqdmAwareHandler()
    handler.setFormatter(logging.Formatter("reslab: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main_process() else logging.ERROR)
    logger.propagate = False


# A config override: section.key=value (a key may be nested, e.g. robustness.severities=1-3).
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)+=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``section.key=value`` overrides accepted anywhere: argparse
    alone takes a positional list only before the flags that follow it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    into = getattr(args, "overrides_into", None)
    unknown = [item for item in extra if not (into and OVERRIDE.match(item))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if into:
        setattr(args, into, [*getattr(args, into), *(item for item in extra if OVERRIDE.match(item))])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except ReslabError as exc:
        if isinstance(exc, Interrupted):  # preemption or Ctrl-C, state saved
            print(f"reslab: {exc}", file=sys.stderr)
            return 128 + exc.signal_number
        print(f"reslab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reslab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
