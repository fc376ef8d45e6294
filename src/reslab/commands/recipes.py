"""reslab recipes: the shipped recipes, studies and search spaces."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("recipes", help="list the shipped recipes (--config), studies (compare) and "
                                                   "search spaces (tune)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..config import shipped_names

    for kind, use in (("recipe", "reslab train --config NAME"), ("study", "reslab compare NAME"),
                      ("space", "reslab tune NAME")):
        print(f"{kind.replace('study', 'studie')}s ({use}):")
        print("\n".join(f"  {name}" for name in shipped_names(kind)))
    return 0
