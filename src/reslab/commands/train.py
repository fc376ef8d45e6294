"""reslab train: one run, from a recipe and overrides, or resumed from its run folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReslabError
from .common import add_config_flags, config_overrides, is_main_process, print_metrics


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model (a run folder with metrics, curves, checkpoints)")
    add_config_flags(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..config import default_recipe, load, validate

    if args.resume:
        from ..train.run_folder import load_run_config

        if args.config:
            raise ReslabError("--config cannot be combined with --resume: a resumed run keeps its own config; "
                              "give the changes allowed (e.g. train.epochs=60) as section.key=value")
        config = validate(load_run_config(args.resume, config_overrides(args)))
    else:
        overrides = config_overrides(args)
        config = load(args.config or default_recipe(overrides), overrides)
    from torch.distributed.elastic.multiprocessing.errors import record

    from ..train.loop import train  # after the config: a bad one fails before PyTorch loads

    # record: under torchrun, a failing rank writes its error where torchrun reports it.
    result = record(train)(config, resume=Path(args.resume) if args.resume else None,
                           progress=not args.no_progress)
    if is_main_process():  # under torchrun, one table
        print_metrics(result.metrics)
        print(f"run folder: {result.run_dir}")
    return 0
