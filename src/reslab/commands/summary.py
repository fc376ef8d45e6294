"""reslab summary: a model's layer table, parameter counts and MACs."""

from __future__ import annotations

from ..errors import ReslabError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("summary", help="layer table, parameter counts and MACs of a model")
    parser.add_argument("model")
    parser.add_argument("--input-size", default="3,32,32", help="C,H,W (default 3,32,32)")
    parser.add_argument("--num-classes", type=int, help="default: the family's (ImageNet nets 1000, CIFAR nets 10)")
    parser.add_argument("--depth", type=int, default=None,
                        help="one row per module nested this deep (2: one per block) instead of per layer")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..models import create_model
    from ..models.summary import format_summary

    try:
        shape = tuple(int(v) for v in args.input_size.split(","))
    except ValueError:
        raise ReslabError(f"--input-size must be C,H,W (e.g. 3,32,32), got {args.input_size!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ReslabError(f"--input-size must be three positive numbers C,H,W, got {args.input_size!r}")
    model = create_model(args.model, num_classes=args.num_classes, in_channels=shape[0])
    print(format_summary(model, args.model, shape, depth=args.depth))
    return 0
