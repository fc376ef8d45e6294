"""reslab evaluate: a checkpoint's metrics on a split, and its errors under common corruptions."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReslabError
from .common import print_metrics


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a saved checkpoint or run folder")
    parser.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file, or a hub folder "
                        "or hf-hub:org/name (give --data unless it names its dataset)")
    parser.add_argument("--data", help="dataset name (default: the one it was trained on)")
    parser.add_argument("--data-root", help="where the dataset is (default: as in training)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--model", help="refuse the checkpoint unless it is of this model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    corruption = parser.add_argument_group("common corruptions (Hendrycks & Dietterich 2019)")
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
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate.runner import evaluate_checkpoint, write_reliability
    from ..runfs import atomic_write_json, check_output_file

    if args.output:
        check_output_file(Path(args.output))
    settings = robustness_settings(args)  # bad flags fail before the evaluation
    if settings is not None:
        from ..models.weights.hub import is_hub_source

        if is_hub_source(args.checkpoint):
            raise ReslabError(f"{args.checkpoint} is a hub folder: --corruptions takes a run folder or checkpoint")
    metrics = evaluate_checkpoint(Path(args.checkpoint), data=args.data, data_root=args.data_root, split=args.split,
                                  device=args.device, model=args.model)
    print_metrics(metrics)
    figure = write_reliability(Path(args.checkpoint), metrics)
    if figure is not None:
        print(f"reliability diagram: {figure}")
    if settings is not None:
        from ..evaluate.robustness import evaluate_robustness, robustness_table

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


def robustness_settings(args):
    """The corruption evaluation the evaluate flags ask for, or None without --corruptions."""
    if args.corruptions is None and args.corruptions_from is not None:
        args.corruptions = "all"
    if args.corruptions is None:
        given = [flag for flag, value in (("--severities", args.severities), ("--baseline", args.baseline),
                                          ("--corruption-images", args.corruption_images)) if value is not None]
        if given:
            raise ReslabError(f"{given[0]} goes with --corruptions (all, or names such as gaussian_noise,fog)")
        return None
    from ..evaluate.robustness import RobustnessSettings

    if args.baseline is not None and not Path(args.baseline).exists():
        raise ReslabError(f"--baseline {args.baseline} does not exist; give a run folder or checkpoint")
    return RobustnessSettings.from_dict({"corruptions": args.corruptions, "severities": args.severities or "1-5",
                                         "images": args.corruption_images, "seed": args.corruption_seed,
                                         "baseline": args.baseline, "corruptions_from": args.corruptions_from})
