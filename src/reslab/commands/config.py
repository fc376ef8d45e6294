"""reslab config: a recipe's config, resolved, each key with its help; or the key reference."""

from __future__ import annotations

from .common import OVERRIDE


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("config", help="print a recipe's config, resolved, with each key's help",
                                   description="reslab config [RECIPE] [section.key=value ...]: the YAML that "
                                               "reslab train --config RECIPE would use, each key with its help.")
    parser.add_argument("recipe", nargs="?", help="a recipe name or YAML file (default: what a bare train uses)")
    parser.add_argument("--reference", action="store_true",
                        help="every key with its type, default and help, as Markdown (docs/config-keys.md)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.set_defaults(func=run, overrides_into="overrides")


def run(args) -> int:
    from ..config import default_recipe, load
    from ..config_help import annotated_yaml, key_reference

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
