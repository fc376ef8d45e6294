"""The command line: parses, dispatches to a command, and ends errors a user can cause in
one line on stderr and exit status 2. Each command is a module of ``commands/``: its
``add_parser`` adds the sub-parser, its ``run`` carries the command out."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .commands import COMMANDS
from .commands.common import OVERRIDE, is_main_process
from .errors import Interrupted, ReslabError

__all__ = ["OVERRIDE", "build_parser", "is_main_process", "main", "parse_args", "setup_logging"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reslab", description="Deep residual networks for image recognition.")
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


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
