"""Search spaces for ``reslab tune``: a space file's ``section.key: {distribution: values}``
entries, each checked against the base recipe (the key exists, every value it may take is
valid) and turned into an Optuna distribution.

Distributions: ``uniform``, ``log_uniform``, ``int_uniform``, ``int_log_uniform`` (each
``[low, high]``) and ``choice`` (a list of numbers, words, true/false or null). Values are
kept as the config holds them: YAML 1.1 reads ``1e-4`` as a string, the space as 0.0001.
"""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config import RunConfig, from_dict, read_yaml_file, safe_yaml, validate
from ..errors import ReslabError

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "int_log_uniform", "choice")


@dataclass
class Parameter:
    """One searched config key: ``kind`` is one of DISTRIBUTIONS, ``values`` [low, high] or
    the choices, as the config holds them (``1e-4`` read as a number, not YAML 1.1's string)."""

    key: str
    kind: str
    values: list

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        low, high = self.values
        log = self.kind.endswith("log_uniform")
        if self.kind.startswith("int_"):
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)

    def suggest(self, trial):
        """The trial's value, asked of Optuna inside an objective (a queued trial keeps its own)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.values)
        low, high = self.values
        log = self.kind.endswith("log_uniform")
        if self.kind.startswith("int_"):
            return trial.suggest_int(self.key, int(low), int(high), log=log)
        return trial.suggest_float(self.key, float(low), float(high), log=log)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return any(value == choice and type(value) is type(choice) or _close(value, choice)
                       for choice in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind.startswith("int_") and value != int(value):
            return False
        return self.values[0] <= value <= self.values[1]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice of {', '.join(map(str, self.values))}"
        return f"{self.kind.replace('_', '-')} in [{self.values[0]:g}, {self.values[1]:g}]"


def _close(a, b) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return numbers and math.isclose(a, b, rel_tol=1e-12)


def parse_space(entries: dict, base: RunConfig) -> list[Parameter]:
    """The search space of a space file's ``section.key: {distribution: values}`` entries,
    each checked against ``base``: the key exists and every value it may take is valid."""
    if not entries:
        raise ReslabError("the search space is empty: add config keys to search, e.g. "
                          "optim.lr: {log_uniform: [0.01, 1]}")
    parameters = []
    for key, spec in entries.items():
        where = f"search space key {key!r}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ReslabError(f"{where} must map one distribution to its values, e.g. {{log_uniform: [0.01, 1]}}; "
                              f"distributions: {', '.join(DISTRIBUTIONS)}")
        kind, values = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            raise ReslabError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
        if not isinstance(values, list) or not values:
            raise ReslabError(f"{where}: {kind} takes a list, e.g. {kind}: "
                              + ("[a, b, c]" if kind == "choice" else "[low, high]"))
        if kind == "choice":
            if any(not isinstance(v, (str, int, float, bool, type(None))) for v in values):
                raise ReslabError(f"{where}: choices must be numbers, words, true/false or null, got {values!r}")
            values = [_as_config_value(base, key, v, where) for v in values]
            if len(set(map(repr, values))) != len(values):
                raise ReslabError(f"{where}: a choice is listed twice ({values!r})")
        else:
            if len(values) != 2:
                raise ReslabError(f"{where}: {kind} takes [low, high], got {values!r}")
            try:
                low, high = (float(v) for v in values)
            except (TypeError, ValueError):
                raise ReslabError(f"{where}: {kind} bounds must be numbers, got {values!r}") from None
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ReslabError(f"{where}: {kind} needs low < high (finite numbers), got {values!r}")
            if kind.endswith("log_uniform") and low <= 0:
                raise ReslabError(f"{where}: {kind} needs a positive low bound, got {values!r}")
            if kind.startswith("int_"):
                if low != int(low) or high != int(high):
                    raise ReslabError(f"{where}: {kind} bounds must be whole numbers, got {values!r}")
                values = [int(low), int(high)]
                probes = values
            else:
                values = [low, high]
                probes = [low, (low + high) / 2, high]  # the middle: a float for an int key is refused here
            for probe in probes:
                _as_config_value(base, key, probe, where, hint=" (whole numbers: use int_uniform)"
                                 if not kind.startswith("int_") else "")
            if not kind.startswith("int_") and _holds_whole_numbers(base, str(key)):
                # every value Optuna drew would be a fraction the key refuses: each trial would fail
                raise ReslabError(f"{where}: {key} holds whole numbers, so {kind} would draw fractions it "
                                  f"refuses; use int_{kind} [{_bound(low)}, {_bound(high)}]")
        parameters.append(Parameter(str(key), kind, values))
    return parameters


def _holds_whole_numbers(base: RunConfig, key: str) -> bool:
    """Whether config ``key`` (section.key, known to exist) is typed ``int`` (or ``int | None``)."""
    section, _, name = key.partition(".")
    hint = typing.get_type_hints(type(getattr(base, section)))[name]
    return hint is int or (typing.get_origin(hint) is not None and int in typing.get_args(hint)
                           and float not in typing.get_args(hint))


def _bound(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _as_config_value(base: RunConfig, key: str, value, where: str, hint: str = ""):
    """``value`` as the config holds it for ``key`` (validated with the rest of ``base``)."""
    section, _, name = str(key).partition(".")
    if not name:
        raise ReslabError(f"{where}: a searched key is section.key (e.g. optim.lr)")
    config = copy.deepcopy(base)
    try:
        from_dict({section: {name: value}}, config)
        validate(config)
    except ReslabError as exc:
        if "unknown config" in str(exc):
            raise ReslabError(f"{where}: {exc}") from None
        hint = hint if "must be int" in str(exc) else ""
        raise ReslabError(f"{where}: {value!r} is not a valid value: {exc}{hint}") from None
    return getattr(getattr(config, section), name)


def space_names() -> list[str]:
    folder = resources.files("reslab") / "recipes" / "spaces"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_space_file(source: str | Path) -> tuple[dict, str, Path | None]:
    """A space file's mapping, its default name, and its path (None for a shipped space)."""
    path = Path(source)
    if path.is_file():
        data = read_yaml_file(path, "space")
        name, where = path.stem, path
    else:
        shipped = resources.files("reslab") / "recipes" / "spaces" / f"{source}.yaml"
        if str(source).endswith((".yaml", ".yml")) or not shipped.is_file():
            names = ", ".join(space_names()) or "none"
            raise ReslabError(f"search space {str(source)!r} is neither a file nor a shipped space (shipped: {names})")
        data, name, where = safe_yaml(shipped.read_text()), str(source), None
    if not isinstance(data, dict):
        raise ReslabError(f"space file {source} must be a mapping of config keys to distributions "
                          "(and recipe:, trials:, metric: ...)")
    return data, name, where
