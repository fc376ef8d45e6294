"""A registry of named model builders: ``create_model("resnet56", num_classes=100)``.

Every builder takes ``num_classes`` and ``in_channels`` plus its own keyword options,
so the training code never needs to know which family a name belongs to.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from typing import Callable

from torch import nn

from ..errors import ReslabError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
# Name patterns that build a model for any valid value (``resnet38`` -> CIFAR depth 38),
# each with a function describing what a matching name builds.
_PATTERNS: list[tuple[re.Pattern, Callable[..., nn.Module], Callable[[re.Match], str]]] = []
# Names other libraries give to other models (timm's ImageNet ResNet-26 and -200): a
# pattern must not quietly build something else under them.
RESERVED = {"resnet26": "timm's ImageNet ResNet-26", "resnet200": "timm's ImageNet ResNet-200"}
# A model name is short, and a number in it (a depth) has at most 4 digits: ResNet-9998 is
# 160M parameters, ResNet-1202 the deepest of the paper.
MAX_NAME_LENGTH = 64
MAX_NUMBER_DIGITS = 4


def register_model(name: str, description: str = ""):
    """Decorator registering ``fn`` as the builder of ``name``."""

    def wrap(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def register_pattern(pattern: str, builder: Callable[..., nn.Module], describe: Callable[[re.Match], str]) -> None:
    """``builder(match, **kwargs)`` answers names matching ``pattern`` (ASCII digits only) that
    are not registered; ``describe(match)`` says what such a name builds."""
    _PATTERNS.append((re.compile(pattern, re.ASCII), builder, describe))


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
    return found[2](found[0]) if found else ""


def _match(name: str):
    for regex, builder, describe in _PATTERNS:
        match = regex.fullmatch(name)
        if match:
            return match, builder, describe
    return None


def create_model(name: str, num_classes: int | None = None, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the model registered as ``name``; ``num_classes`` defaults to its family's (1,000
    for the ImageNet nets, 10 for the CIFAR nets). Unknown names give a ``ReslabError``."""
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ReslabError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ReslabError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise ReslabError(f"unknown model {str(name)[:40]!r}...: model names are at most {MAX_NAME_LENGTH} characters")
    if name in RESERVED:
        raise ReslabError(f"{name!r} is {RESERVED[name]}, which reslab does not build; for the CIFAR net of that "
                          f"depth say {name.replace('resnet', 'cifar_resnet')!r}")
    if any(len(number) > MAX_NUMBER_DIGITS for number in re.findall(r"[0-9]+", name)):
        raise ReslabError(f"model {name!r} asks for a size with more than {MAX_NUMBER_DIGITS} digits")
    if name in _BUILDERS:
        builder = _BUILDERS[name]
    else:
        found = _match(name)
        if found is None:
            close = difflib.get_close_matches(name, list(_BUILDERS), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ReslabError(f"unknown model {name!r}{hint}; `reslab models` lists them")
        builder = functools.partial(found[1], found[0])
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
    """The (untrained) network a checkpoint's ``meta`` describes: name, classes, channels, options."""
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        **meta.get("model_options", {}))
