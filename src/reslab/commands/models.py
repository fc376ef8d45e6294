"""reslab models: the registered models, each with a line on what it is."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the registered models")
    parser.add_argument("pattern", nargs="?", help="only names containing this")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..models import describe_model, list_models

    names = list_models(args.pattern or "")
    width = max((len(n) for n in names), default=10)
    for name in names:
        print(f"{name:<{width}}  {describe_model(name)}")
    return 0
