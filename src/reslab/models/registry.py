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
# Name patterns that build a model for any valid value (``resnet26`` -> CIFAR depth 26).
_PATTERNS: list[tuple[re.Pattern, Callable[..., nn.Module]]] = []


def register_model(name: str, description: str = ""):
    """Decorator registering ``fn`` as the builder of ``name``."""

    def wrap(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def register_pattern(pattern: str, builder: Callable[..., nn.Module]) -> None:
    """``builder(match, **kwargs)`` answers names matching ``pattern`` that are not registered."""
    _PATTERNS.append((re.compile(pattern), builder))


def list_models(pattern: str = "") -> list[str]:
    """The registered model names containing ``pattern`` (a substring), sorted naturally."""

    def natural(name: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    return sorted((n for n in _BUILDERS if pattern in n), key=natural)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS.get(name, "")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the model registered as ``name``; unknown names give a ``ReslabError``."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ReslabError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ReslabError(f"in_channels must be a positive integer, got {in_channels!r}")
    if name in _BUILDERS:
        builder = _BUILDERS[name]
    else:
        for regex, pattern_builder in _PATTERNS:
            match = regex.fullmatch(name)
            if match:
                builder = functools.partial(pattern_builder, match)
                break
        else:
            close = difflib.get_close_matches(name, list(_BUILDERS), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ReslabError(f"unknown model {name!r}{hint}; `reslab models` lists them")
    accepted = inspect.signature(builder).parameters
    for option in kwargs:
        if option not in accepted:
            takes = [p for p in accepted if p not in ("num_classes", "in_channels", "match")]
            raise ReslabError(f"model {name!r} has no option {option!r}"
                              + (f" (its options: {', '.join(takes)})" if takes else " (it takes none)"))
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def model_from_meta(meta: dict) -> nn.Module:
    """The (untrained) network a checkpoint's ``meta`` describes: name, classes, channels, options."""
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        **meta.get("model_options", {}))
