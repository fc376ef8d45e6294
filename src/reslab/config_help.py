"""Each config key's help, read from the comments beside its field in ``config.py``: the
source stays the one place a key is documented, and ``reslab config`` and the key reference
(docs/config-keys.md) are generated from it."""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from typing import Any

import yaml

from .config import RunConfig

# "    name: type = default  # help" (a field), and a comment line of its own.
_FIELD = re.compile(r"    (\w+): [^#]+?(?:  # (.*))?$")
_COMMENT = re.compile(r"    #( *)(.*)$")


def field_help(cls) -> dict[str, str]:
    """``field name -> help`` for a config dataclass: the comment lines just above a field,
    then the comment on its line; a comment indented past the ``#`` continues the field
    before it."""
    helps: dict[str, str] = {}
    above: list[str] = []
    previous = None
    for line in inspect.getsource(cls).splitlines()[1:]:
        comment = _COMMENT.match(line)
        if comment is not None:
            indent, text = comment.groups()
            if len(indent) > 1 and previous is not None:  # an aligned continuation of the field above
                helps[previous] = f"{helps[previous]} {text}".strip()
            else:
                above.append(text)
            continue
        field = _FIELD.match(line)
        if field is None or line.lstrip().startswith(("def ", "@", "return", '"""')):
            above, previous = [], None
            continue
        name, inline = field.groups()
        helps[name] = " ".join([*above, inline or ""]).strip()
        above, previous = [], name
    return helps


def _sections(config: RunConfig):
    for section in dataclasses.fields(config):
        yield section.name, getattr(config, section.name)


def _value(value: Any) -> str:
    """A value as YAML writes it on one line (flow style), ``null`` for None."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def annotated_yaml(config: RunConfig, title: str) -> str:
    """The config as YAML that ``--config`` reads back, each key under a comment with its help."""
    lines = [f"# {title}"]
    for name, section in _sections(config):
        lines += ["", f"{name}:"]
        helps = field_help(type(section))
        for field in dataclasses.fields(section):
            if helps.get(field.name):
                lines += textwrap.wrap(helps[field.name], 100, initial_indent="  # ", subsequent_indent="  # ")
            lines.append(f"  {field.name}: {_value(getattr(section, field.name))}")
    return "\n".join(lines) + "\n"


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if args and type(None) in args:
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def key_reference() -> str:
    """Markdown: every config key with its type, default and help (docs/config-keys.md)."""
    lines = ["# Config keys", "",
             "Every key a run config has, as `section.key`: in a YAML file under its section, or on the",
             "command line as `section.key=value`. Generated from `src/reslab/config.py` by",
             "`reslab config --reference`; `reslab config RECIPE` prints a recipe's resolved values.", ""]
    for name, section in _sections(RunConfig()):
        hints = typing.get_type_hints(type(section))
        helps = field_help(type(section))
        lines += [f"## {name}", "", "| key | type | default | what it does |", "|---|---|---|---|"]
        for field in dataclasses.fields(section):
            default = _value(getattr(section, field.name)).replace("|", "\\|")
            text = helps.get(field.name, "").replace("|", "\\|")
            lines.append(f"| `{name}.{field.name}` | {_type_name(hints[field.name])} | `{default}` | {text} |")
        lines.append("")
    return "\n".join(lines)
