"""A tuning study's settings: the space file's, with the command line's flags over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...config import RunConfig, load
from ...errors import ReslabError
from ...extras import missing_extra
from ...train.run_folder import VAL_FIGURES
from ..search_space import Parameter, parse_space, read_space_file, space_names

SETTING_KEYS = ("name", "recipe", "overrides", "trials", "metric", "pruner", "seed", "out", "storage", "heartbeat",
                "baseline", "launcher")
PRUNERS = ("median", "hyperband", "none")
METRICS = tuple([f"val_{k}" for k in VAL_FIGURES] + [f"ema_val_{k}" for k in VAL_FIGURES]
                + ["train_loss", "train_accuracy"])
MAX_SEED = 2**32 - 1  # NumPy's generators (Optuna's samplers) take seeds below 2**32
# Optuna keeps a study's name in a column of 512 characters; a control character (NUL) in it
# cannot be a folder name (the default --out is runs/tune-<name>).
MAX_STUDY_NAME = 512


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
    settings = {key: value for key, value in data.items() if "." not in str(key)}
    entries = {key: value for key, value in data.items() if "." in str(key)}
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise ReslabError(f"unknown space file key {unknown[0]!r}: a space file has {', '.join(SETTING_KEYS)} and "
                          "section.key entries to search")
    name = _study_name(str(study_name or settings.get("name") or default_name))
    file_overrides = settings.get("overrides") or []
    if not isinstance(file_overrides, list):
        raise ReslabError("space file key 'overrides' must be a list of section.key=value")
    flags = [f"train.epochs={epochs}", "train.max_iters=null"] if epochs is not None else []
    all_overrides = [str(o) for o in file_overrides] + flags + overrides
    base = load(recipe or settings.get("recipe"), all_overrides)
    metric = str(metric or settings.get("metric") or "val_accuracy")
    if metric not in METRICS:
        raise ReslabError(f"metric {metric!r} is not a per-epoch figure; use one of {', '.join(METRICS)}")
    if "val" in metric and base.data.val_size == 0:
        raise ReslabError(f"metric {metric} needs a validation split: data.val_size is 0 in the base recipe")
    pruner = str(pruner or settings.get("pruner") or "median")
    if pruner not in PRUNERS:
        raise ReslabError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    trials = _positive(trials if trials is not None else settings.get("trials", 20), "trials")
    heartbeat = _positive(heartbeat if heartbeat is not None else settings.get("heartbeat", 30), "heartbeat")
    seed = seed if seed is not None else settings.get("seed")
    if seed is not None:
        seed = _positive(seed, "seed", least=0, most=MAX_SEED)
    out = Path(out or settings.get("out") or Path("runs") / f"tune-{name}")
    launcher = settings.get("launcher") or {}
    return TuneSettings(
        name=name, space=parse_space(entries, base), recipe=recipe or settings.get("recipe"),
        overrides=all_overrides, trials=trials, metric=metric, pruner=pruner, out=out,
        storage=str(storage or settings.get("storage") or f"sqlite:///{out.resolve() / 'study.db'}"),
        seed=seed, heartbeat=heartbeat, baseline=bool(settings.get("baseline", True)),
        launcher=launcher if isinstance(launcher, dict) else {"name": launcher}, source=path)


def need_optuna():
    """Optuna, or one line saying how to install it (an optional dependency)."""
    try:
        import optuna
    except ImportError:
        raise missing_extra("reslab tune", "tune") from None
    return optuna


def _positive(value, key: str, least: int = 1, most: int = 10**9) -> int:
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(most))) or not least <= int(text) <= most:
        shown = repr(value) if len(text) <= 20 else f"{text[:20]!r}... ({len(text)} characters)"
        raise ReslabError(f"{key} must be a whole number of at least {least} and at most {most}, got {shown}")
    return int(text)


def _study_name(name: str) -> str:
    if not name or len(name) > MAX_STUDY_NAME or not name.isprintable():
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ReslabError(f"the study name must be 1 to {MAX_STUDY_NAME} printable characters (no control "
                          f"characters such as NUL), got {shown}; give another --study-name")
    return name
