"""A registry of named model builders: ``create_model("resnet56", num_classes=100)``.

Every builder takes ``num_classes`` and ``in_channels`` plus its own keyword options,
so the training code never needs to know which family a name belongs to.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from ..errors import ReslabError
from .base import ResLabModel

# The largest image side a family takes, checked before a network is built for a checkpoint:
# 16 times CIFAR's 32 pixels for the nets without a strided stem (their first stage runs at
# full resolution), 1024 for the ImageNet nets (timm evaluates its ResNets at 224 to 320).
CIFAR_MAX_SIDE = 512
IMAGENET_MAX_SIDE = 1024
# The most parameters a builder allocates: a family whose options can ask for more refuses
# them from the options, before allocating (WRN-28-64 has 1.5 billion, WRN-9994-64 660 billion).
MAX_PARAMETERS = 2_000_000_000

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_MAX_SIDES: dict[str, int] = {}


class _Pattern(NamedTuple):
    """Names that build a model for any valid value (``resnet38`` -> CIFAR depth 38)."""

    regex: re.Pattern
    builder: Callable[..., nn.Module]
    describe: Callable[[re.Match], str]  # what a matching name builds
    max_side: int  # the family's largest image side
    check: Callable[[re.Match], None] | None  # refuses a name's sizes before anything is built


_PATTERNS: list[_Pattern] = []
# Names other libraries give to other models (timm's ImageNet ResNet-26 and -200): a
# pattern must not quietly build something else under them.
RESERVED = {"resnet26": "timm's ImageNet ResNet-26", "resnet200": "timm's ImageNet ResNet-200"}
# A model name is short, and a number in it (a depth) has at most 4 digits: ResNet-9998 is
# 160M parameters, ResNet-1202 the deepest of the paper.
MAX_NAME_LENGTH = 64
MAX_NUMBER_DIGITS = 4


def register_model(name: str, description: str = "", max_side: int = IMAGENET_MAX_SIDE):
    """Decorator registering ``fn`` as the builder of ``name``, which takes images of at most
    ``max_side`` pixels a side."""

    def wrap(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        _MAX_SIDES[name] = max_side
        return fn

    return wrap


def register_pattern(pattern: str, builder: Callable[..., nn.Module], describe: Callable[[re.Match], str],
                     max_side: int = IMAGENET_MAX_SIDE, check: Callable[[re.Match], None] | None = None) -> None:
    """``builder(match, **kwargs)`` answers names matching ``pattern`` (ASCII digits only) that
    are not registered; ``describe(match)`` says what such a name builds; ``check(match)``, if
    given, refuses sizes out of bounds (a ReslabError) whenever the name is resolved."""
    _PATTERNS.append(_Pattern(re.compile(pattern, re.ASCII), builder, describe, max_side, check))


def list_models(pattern: str = "") -> list[str]:
    """The registered model names containing ``pattern`` (a substring), sorted naturally."""

    def natural(name: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    return sorted((n for n in _BUILDERS if pattern in n), key=natural)


def describe_model(name: str) -> str:
    """What ``name`` builds (its family and size), for ``reslab models`` and ``reslab summary``."""
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    found = _match(name)
    return found[1].describe(found[0]) if found else ""


def _match(name: str) -> tuple[re.Match, _Pattern] | None:
    for pattern in _PATTERNS:
        match = pattern.regex.fullmatch(name)
        if match:
            return match, pattern
    return None


def _resolve(name: str) -> tuple[Callable[..., nn.Module], int]:
    """The builder of ``name`` and its family's largest image side; a ReslabError for a name
    that builds nothing."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise ReslabError(f"unknown model {str(name)[:40]!r}...: model names are at most {MAX_NAME_LENGTH} characters")
    if name in RESERVED:
        raise ReslabError(f"{name!r} is {RESERVED[name]}, which reslab does not build; for the CIFAR net of that "
                          f"depth say {name.replace('resnet', 'cifar_resnet')!r}")
    if any(len(number) > MAX_NUMBER_DIGITS for number in re.findall(r"[0-9]+", name)):
        raise ReslabError(f"model {name!r} asks for a size with more than {MAX_NUMBER_DIGITS} digits")
    if name in _BUILDERS:
        return _BUILDERS[name], _MAX_SIDES[name]
    found = _match(name)
    if found is None:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ReslabError(f"unknown model {name!r}{hint}; `reslab models` lists them")
    match, pattern = found
    if pattern.check is not None:
        pattern.check(match)
    return functools.partial(pattern.builder, match), pattern.max_side


def max_input_side(name: str) -> int:
    """The largest image side the family of ``name`` takes (a ReslabError for a name that
    builds nothing)."""
    return _resolve(name)[1]


def check_input_size(name: str, image_size) -> None:
    """Refuse, before anything is built, a name that builds nothing (or too much) and an input
    larger than its family takes."""
    side = _resolve(name)[1]
    height, width = image_size
    if max(height, width) > side:
        raise ReslabError(f"{name} takes images of at most {side} pixels a side, not {height}x{width}")


def create_model(name: str, num_classes: int | None = None, in_channels: int = 3, **kwargs) -> ResLabModel:
    """Build the model registered as ``name``; ``num_classes`` defaults to its family's (1,000
    for the ImageNet nets, 10 for the CIFAR nets). Unknown names give a ``ReslabError``."""
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ReslabError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ReslabError(f"in_channels must be a positive integer, got {in_channels!r}")
    builder = _resolve(name)[0]
    accepted = inspect.signature(builder).parameters
    for option in kwargs:
        if option not in accepted:
            takes = [p for p in accepted if p not in ("num_classes", "in_channels", "match")]
            raise ReslabError(f"model {name!r} has no option {option!r}"
                              + (f" (its options: {', '.join(takes)})" if takes else " (it takes none)"))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return builder(in_channels=in_channels, **kwargs)


def model_from_meta(meta: dict) -> nn.Module:
    """The (untrained) network a checkpoint's ``meta`` describes: name, classes, channels, options;
    an input size larger than its family takes is refused first."""
    if meta.get("image_size") is not None:  # an export's JSON describes the network only
        check_input_size(meta["model"], meta["image_size"])
    options = meta.get("model_options", {})
    clash = sorted({"num_classes", "in_channels"} & set(options))
    if clash:
        raise ReslabError(f"model option {clash[0]!r} is not an option but the checkpoint's own {clash[0]}")
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"], **options)
