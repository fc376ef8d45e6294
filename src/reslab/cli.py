"""The command line: parses, builds a config, calls the library. Errors a user can
cause end in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from . import __version__
from .errors import ReslabError

# Short flags, each a name for one config key (so a flag is always visible in the config).
FLAG_KEYS = {
    "model": "model.name", "data": "data.name", "data_root": "data.root", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "lr": "optim.lr", "device": "train.device", "seed": "train.seed",
    "out": "output.dir", "name": "output.name", "precision": "train.precision",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML file or a shipped recipe name (`reslab recipes`)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="any config key, e.g. train.epochs=30 optim.name=adam")
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
    from .config import load, validate
    from .train.loop import load_run_config, train

    if args.resume:
        config = validate(load_run_config(args.resume, _overrides(args)))
    else:
        config = load(args.config, _overrides(args))
    result = train(config, resume=Path(args.resume) if args.resume else None, progress=not args.no_progress)
    _print_metrics(result.metrics)
    print(f"run folder: {result.run_dir}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from .report.tables import metrics_table

    print(metrics_table(metrics))


def cmd_evaluate(args) -> int:
    from .evaluate.runner import evaluate_checkpoint
    from .report.tables import metrics_table
    from .runfs import atomic_write_json

    metrics = evaluate_checkpoint(Path(args.checkpoint), data=args.data, data_root=args.data_root, split=args.split,
                                  device=args.device, model=args.model)
    print(metrics_table(metrics))
    if args.output:
        atomic_write_json(Path(args.output), metrics)
        print(f"written: {args.output}")
    return 0


def cmd_demo(args) -> int:
    from .config import load
    from .report.compare import comparison_rows, write_comparison
    from .report.plots import plot_error_curves
    from .runfs import new_run_dir
    from .train.loop import train

    folder = new_run_dir(Path(args.out), f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    results = []
    for model in ("resnet20", "plain20"):
        overrides = [f"model.name={model}", f"output.dir={folder}", f"output.name={model}"]
        if args.epochs:
            overrides.append(f"train.epochs={args.epochs}")
        print(f"== training {model} on scikit-learn's digits ==", flush=True)
        results.append(train(load("demo-digits", overrides), progress=not args.no_progress))
    rows = comparison_rows([r.metrics for r in results])
    note = ("Test split: 20% of the 1,797 digits held out (data.split_seed 0); best epoch chosen on a 10% "
            "validation split; error = 1 - accuracy; precision, recall and F1 are macro averages.")
    table = write_comparison(rows, folder, note)
    plot_error_curves({r.metrics["model"]: r.history for r in results}, folder / "error_curves.png",
                      title="ResNet-20 vs Plain-20 on digits")
    print()
    print(table)
    print(f"\nrun folder: {folder}  (comparison.md, error_curves.png, and one folder per model)")
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
    from .config import recipe_names

    print("\n".join(recipe_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reslab", description="Deep residual networks for image recognition.")
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (a run folder with metrics, curves, checkpoints)")
    _add_config_flags(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved checkpoint or run folder")
    evaluate.add_argument("checkpoint", help="a run folder (uses its best checkpoint) or a .pt file")
    evaluate.add_argument("--data", help="dataset name (default: the one it was trained on)")
    evaluate.add_argument("--data-root", help="where the dataset is (default: as in training)")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--model", help="refuse the checkpoint unless it is of this model")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = commands.add_parser("demo", help="the main job: ResNet-20 vs Plain-20 on the embedded digits")
    demo.add_argument("--out", default="runs", help="parent folder of the demo's run folder")
    demo.add_argument("--epochs", type=int, help="epochs per model (recipe: 40)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    summary = commands.add_parser("summary", help="layer table, parameter counts and MACs of a model")
    summary.add_argument("model")
    summary.add_argument("--input-size", default="3,32,32", help="C,H,W (default 3,32,32)")
    summary.add_argument("--num-classes", type=int, default=10)
    summary.add_argument("--depth", type=int, default=None, help="one row per module nested this deep (2: one per block) instead of per layer")
    summary.set_defaults(func=cmd_summary)

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("pattern", nargs="?", help="only names containing this")
    models.set_defaults(func=cmd_models)

    recipes = commands.add_parser("recipes", help="list the shipped recipes (for --config)")
    recipes.set_defaults(func=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train.loop import Interrupted

    try:
        return args.func(args)
    except Interrupted as exc:  # preemption or Ctrl-C, state saved
        print(f"reslab: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    except ReslabError as exc:
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
