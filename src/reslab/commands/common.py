"""What several commands share: the config flags and overrides (train), the seed type,
the cluster-launcher flags and the report on launched jobs (compare, tune), and which
process prints under torchrun."""

from __future__ import annotations

import argparse
import os
import re

from ..errors import ReslabError

# Short flags, each a name for one config key (so a flag is always visible in the config).
FLAG_KEYS = {
    "model": "model.name", "data": "data.name", "data_root": "data.root", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "lr": "optim.lr", "device": "train.device", "seed": "train.seed",
    "out": "output.dir", "name": "output.name", "precision": "train.precision",
}

# A config override: section.key=value (a key may be nested, e.g. robustness.severities=1-3).
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)+=")


def is_main_process() -> bool:
    """Rank 0 under torchrun (which sets RANK), or a process on its own."""
    return os.environ.get("RANK", "0") == "0"


def seed_type(text: str) -> int:
    """A seed as NumPy's and PyTorch's generators all take it: a whole number in [0, 2**32)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 2**32):
        shown = text if len(text) <= 20 else f"{text[:20]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(f"a seed is a whole number in [0, 2**32), got {shown!r}")
    return int(text)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML file or a shipped recipe name (`reslab recipes`); default: scratch, "
                        "or finetune where model.pretrained is set (both sized to the data)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="any config key, e.g. train.epochs=30 optim.name=adam (anywhere on the line)")
    parser.set_defaults(overrides_into="overrides")
    group = parser.add_argument_group("shortcuts for common config keys")
    for flag, key in FLAG_KEYS.items():
        group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, metavar="VALUE", help=f"sets {key}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_overrides(args) -> list[str]:
    """The config flags as overrides, then the section.key=value ones (so those win)."""
    flags = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    if args.epochs is not None:  # --epochs means "this many epochs", not "at most, or 64k iterations"
        flags.append("train.max_iters=null")
    return flags + list(args.overrides)


def print_metrics(metrics: dict) -> None:
    from ..report.tables import metrics_table

    print(metrics_table(metrics))


def add_launcher_flags(parser: argparse.ArgumentParser, what: str) -> None:
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


def launcher(args, from_file: dict):
    """The launcher the flags and the study or space file ask for; None: in this process."""
    from ..experiments.launch import launch_options

    return launch_options(from_file, name=args.launcher, partition=args.partition, gpus=args.gpus, time=args.time,
                          cpus=args.cpus, mem_gb=args.mem_gb, jobs=args.jobs, sbatch=args.sbatch, setup=args.setup)


def jobs_finished(args, launched, finished: bool, *, unfinished: str, submit: str, jobs: str, resume: str) -> bool:
    """Prints the launched jobs' states; True once they have all finished. Otherwise says
    ``unfinished`` (and, after --status, to run without it to ``submit``) and returns False;
    failed jobs that --wait or --status has seen end in an error that points to --retry."""
    from ..experiments.launch import format_statuses

    print(format_statuses(launched.statuses))
    if finished:
        return True
    print(f"\n{unfinished}" + (f"; without --status to {submit}" if args.status and launched.count("new") else ""))
    failed = launched.count("failed")
    if failed and (args.wait or args.status):
        raise ReslabError(f"{failed} {jobs} failed (their log tails are above); run again with --retry to "
                          f"resubmit them: {resume} from their checkpoints")
    return False
