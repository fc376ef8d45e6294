"""A tuning study's settings: the space file's, with the command line's flags over them."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config import RunConfig, config_field, load, parse_fields
from ...errors import ReslabError
from ...extras import missing_extra
from ...train.run_folder import VAL_FIGURES
from ..search_space import Parameter, parse_space, read_space_file, space_names

Pruner = Literal["median", "hyperband", "none"]
PRUNERS = typing.get_args(Pruner)
METRICS = tuple([f"val_{k}" for k in VAL_FIGURES] + [f"ema_val_{k}" for k in VAL_FIGURES]
                + ["train_loss", "train_accuracy"])
MAX_SEED = 2**32 - 1  # NumPy's generators (Optuna's samplers) take seeds below 2**32
# Optuna keeps a study's name in a column of 512 characters; a control character (NUL) in it
# cannot be a folder name (the default --out is runs/tune-<name>).
MAX_STUDY_NAME = 512


def _metric(value) -> str:
    if not isinstance(value, str) or value not in METRICS:
        raise ValueError(f"must be a per-epoch figure, one of {', '.join(METRICS)}")
    return value


def _launcher(value) -> dict:
    return {} if not value else value if isinstance(value, dict) else {"name": value}  # launcher: slurm


@dataclass
class SpaceSettings:
    """What a space file holds beside its section.key entries; ``reslab tune``'s flags override it."""

    name: str | None = None  # the study's; None: the file's name
    recipe: str | None = None  # the base recipe, a name or a path
    overrides: list[str] = config_field(default_factory=list, null_is_default=True)  # section.key=value, every trial
    trials: int = config_field(20, least=1, most=10**9)  # the study's budget of finished trials
    metric: str = config_field("val_accuracy", convert=_metric, null_is_default=True)  # the figure chosen on
    pruner: Pruner = config_field("median", null_is_default=True)
    seed: int | None = config_field(None, least=0, most=MAX_SEED)  # the sampler's; None: random
    out: str | None = None  # None: runs/tune-<name>
    storage: str | None = None  # None: sqlite:///<out>/study.db
    heartbeat: int = config_field(30, least=1, most=10**9)  # seconds between a running trial's heartbeats
    baseline: bool = True  # the first trial is the base recipe's values
    launcher: dict = config_field(default_factory=dict, convert=_launcher)  # checked by experiments/launch.py


SETTING_KEYS = tuple(f.name for f in dataclasses.fields(SpaceSettings))


@dataclass
class TuneSettings:
    name: str
    space: list[Parameter]
    recipe: str | None
    overrides: list[str]
    trials: int
    metric: str
    pruner: str
    out: Path
    storage: str
    seed: int | None = None
    heartbeat: int = 30  # seconds between a running trial's heartbeats
    baseline: bool = True  # the first trial is the base recipe's values
    launcher: dict = field(default_factory=dict)  # the space file's launcher: section
    source: Path | None = None  # the space file

    @property
    def direction(self) -> str:
        return "minimize" if self.metric.endswith(("loss", "error")) else "maximize"

    def base_config(self) -> RunConfig:
        return load(self.recipe, self.overrides)

    def distributions(self) -> dict:
        return {p.key: p.distribution() for p in self.space}

    def identity(self) -> dict:
        """What every process sharing the study must agree on."""
        return {"recipe": self.recipe, "overrides": self.overrides, "metric": self.metric,
                "space": {p.key: {p.kind: p.values} for p in self.space}}


def tune_settings(items: list[str], recipe: str | None = None, trials: int | None = None, out: str | None = None,
                  storage: str | None = None, metric: str | None = None, pruner: str | None = None,
                  epochs: int | None = None, seed: int | None = None, heartbeat: int | None = None,
                  study_name: str | None = None) -> TuneSettings:
    """The settings ``reslab tune`` asks for: a space file (or shipped space) among ``items``,
    the rest section.key=value overrides for every trial; the flags win over the file."""
    need_optuna()
    sources = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(sources) != 1:
        raise ReslabError("tune takes one search space file (reslab tune SPACE.yaml [section.key=value ...]); "
                          f"shipped spaces: {', '.join(space_names()) or 'none'}")
    data, default_name, path = read_space_file(sources[0])
    flags = {"name": study_name, "recipe": recipe, "trials": trials, "out": out, "storage": storage, "metric": metric,
             "pruner": pruner, "seed": seed, "heartbeat": heartbeat}
    settings = {key: value for key, value in data.items() if "." not in str(key)}
    settings.update({key: value for key, value in flags.items() if value is not None})
    chosen = parse_fields(SpaceSettings, settings, "")
    entries = {key: value for key, value in data.items() if "." in str(key)}
    name = _study_name(chosen.name or default_name)
    epochs_flags = [f"train.epochs={epochs}", "train.max_iters=null"] if epochs is not None else []
    all_overrides = chosen.overrides + epochs_flags + overrides
    base = load(chosen.recipe, all_overrides)
    if "val" in chosen.metric and base.data.val_size == 0:
        raise ReslabError(f"metric {chosen.metric} needs a validation split: data.val_size is 0 in the base recipe")
    out_folder = Path(chosen.out or Path("runs") / f"tune-{name}")
    return TuneSettings(
        name=name, space=parse_space(entries, base), recipe=chosen.recipe, overrides=all_overrides,
        trials=chosen.trials, metric=chosen.metric, pruner=chosen.pruner, out=out_folder,
        storage=chosen.storage or f"sqlite:///{out_folder.resolve() / 'study.db'}", seed=chosen.seed,
        heartbeat=chosen.heartbeat, baseline=chosen.baseline, launcher=chosen.launcher, source=path)


def need_optuna():
    """Optuna, or one line saying how to install it (an optional dependency)."""
    try:
        import optuna
    except ImportError:
        raise missing_extra("reslab tune", "tune") from None
    return optuna


def _study_name(name: str) -> str:
    if not name or len(name) > MAX_STUDY_NAME or not name.isprintable():
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ReslabError(f"the study name must be 1 to {MAX_STUDY_NAME} printable characters (no control "
                          f"characters such as NUL), got {shown}; give another --study-name")
    return name
