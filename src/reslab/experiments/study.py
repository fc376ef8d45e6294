"""Comparative studies: models x datasets x variants x seeds, one training each, in turn.

A study is data, from a YAML file or from flags::

    name: cifar10-depth
    recipe: paper-cifar10-{model}     # a recipe name or YAML path; {model}/{dataset} filled in per run
    models: [resnet20, plain20]
    seeds: [0, 1, 2]
    datasets: [cifar10]               # optional: default the recipe's
    overrides: [train.epochs=10]      # section.key=value, applied to every run
    variants: {sgd: [], adam: [optim.name=adam, optim.lr=0.001]}   # optional, one more axis
    out: runs/cifar10-depth
    launcher: {name: slurm, partition: gpu, gpus: 1, time: "24:00:00"}   # optional: runs as jobs
    robustness: {images: 2000, baseline: plain20}   # optional: corruption errors and calibration after

Every run has a fixed folder, ``<out>/<model>-<dataset>[-<variant>]-seed<k>``, so a study
that is stopped and started again picks up where it was: a finished run (metrics.json)
is read back, an interrupted one (config.yaml and a checkpoint, no metrics.json) resumes
from its last checkpoint, one stopped before its first checkpoint starts again in its
folder, and only runs never started are trained from scratch. A run folder whose saved
config differs from what the study now asks for is refused, never silently reused.
``<out>/study.json`` lists the runs and their status.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..checkpoint import epoch_checkpoints
from ..config import RunConfig, config_field, load, parse_fields, read_yaml_file, safe_yaml
from ..data import resolve_defaults
from ..errors import ReslabError
from ..models import create_model
from ..runfs import atomic_write_json
from ..train.loop import train
from ..train.run_folder import RunResult, check_resumable, load_result

logger = logging.getLogger(__name__)


def _names(value) -> list[str]:
    """"a,b" or a list, as names (a flag or a file)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(item, str) or type(item) is int and abs(item) < 10**18 for item in items):  # str() is safe
        raise ValueError("must be a list of names, e.g. [resnet20, plain20] (or a,b)")
    return [str(item).strip() for item in items if str(item).strip()]


def _seeds(value) -> list[int]:
    """"0,1" or a list of whole numbers (or one)."""
    try:
        return [int(item) for item in ([value] if type(value) is int else _names(value))]
    except ValueError:
        raise ValueError("must be a list of whole numbers, e.g. [0, 1, 2] (or 0,1,2)") from None


def _datasets(value) -> list[str | None]:
    return _names(value) if value else [None]  # empty: the recipe's dataset


def _text(value) -> str | None:
    """A recipe or a folder: a name or a path, never a number (name: may be one)."""
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a text (a name or a path)")
    return value


def _out(value) -> Path:
    text = _text(value)
    return _folder(Path(text)) if text else Path("runs/study")  # empty: study_from_dict makes it runs/<name>


def _variants(value) -> dict[str, list[str]]:
    value = value or {}
    if not isinstance(value, dict) or not all(isinstance(v, (list, type(None))) for v in value.values()):
        raise ValueError("must map a name to a list of section.key=value overrides")
    return {str(k): [str(o) for o in (v or [])] for k, v in value.items()}


def _robustness(section) -> dict:
    """The study's robustness: section, checked now rather than after the training."""
    from ..evaluate.robustness import RobustnessSettings

    RobustnessSettings.from_dict(section)
    return dict(section or {})


@dataclass
class Study:
    """A study file, or the flags of ``reslab compare``: what to train, and where."""

    models: list[str] = config_field(convert=_names)
    recipe: str | None = config_field(None, convert=_text)  # a recipe name or path; {model}/{dataset} filled in
    seeds: list[int] = config_field(default_factory=lambda: [0], convert=_seeds)
    datasets: list[str | None] = config_field(default_factory=lambda: [None], convert=_datasets)  # None: the recipe's
    overrides: list[str] = config_field(default_factory=list, null_is_default=True)  # section.key=value, every run
    variants: dict[str, list[str]] = config_field(default_factory=dict, convert=_variants)  # {}: one unnamed variant
    out: Path = config_field(Path("runs/study"), convert=_out)
    name: str = config_field("study", null_is_default=True)  # a number is a name (name: 2024)
    launcher: Any = config_field(default_factory=dict, convert=lambda v: v or {})  # experiments/launch.py; {}: here
    robustness: dict | None = config_field(None, convert=_robustness)  # corruptions and calibration after training


@dataclass
class PlannedRun:
    name: str  # the run folder's name
    model: str
    dataset: str
    seed: int
    variant: str | None
    config: RunConfig
    run_dir: Path


@dataclass
class StudyResult:
    study: Study
    runs: list[PlannedRun]
    results: list[RunResult]
    trained: int  # runs trained (from scratch or resumed) by this call
    seconds: float

    @property
    def run_dirs(self) -> list[Path]:
        return [run.run_dir for run in self.runs]


# ---------------------------------------------------------------- reading a study


def study_names() -> list[str]:
    folder = resources.files("reslab") / "recipes" / "studies"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_study(source: str | Path, overrides: list[str] | None = None) -> Study:
    """A study from a YAML file or a shipped study name (``digits-depth``); ``overrides`` go last."""
    path = Path(source)
    if path.is_file():
        data = read_yaml_file(path, "study")
        default_name = path.stem
    else:
        shipped = resources.files("reslab") / "recipes" / "studies" / f"{source}.yaml"
        if str(source).endswith((".yaml", ".yml")) or not shipped.is_file():
            names = ", ".join(study_names()) or "none"
            raise ReslabError(f"study {str(source)!r} is neither a file nor a shipped study (shipped: {names})")
        data = safe_yaml(shipped.read_text())
        default_name = str(source)
    return study_from_dict(data or {}, default_name, overrides)


def study_from_dict(data: dict, default_name: str = "study", overrides: list[str] | None = None) -> Study:
    """A study from its document; ``overrides`` go after its own."""
    study = parse_fields(Study, data, "")
    if not data.get("name"):
        study.name = default_name
    if not data.get("out"):
        study.out = _folder(Path("runs") / study.name)
    study.overrides += list(overrides or [])
    return study


def study_from_command(items: list[str], models=None, seeds=None, datasets=None, recipe=None, out=None,
                       epochs: int | None = None, device: str | None = None, data_root: str | None = None) -> Study:
    """The study ``reslab compare`` asks for: a study file or shipped name among ``items``
    (the rest are section.key=value overrides), or ``models`` with ``recipe``; the flags
    override every run's config."""
    sources = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(sources) > 1:
        raise ReslabError(f"compare takes one study file, got {', '.join(sources)} (overrides are section.key=value)")
    flags = [f"train.epochs={epochs}", "train.max_iters=null"] if epochs is not None else []
    flags += [f"train.device={device}"] if device else []
    flags += [f"data.root={data_root}"] if data_root else []
    if sources:
        study = load_study(sources[0], flags + overrides)
    elif models:
        recipe_tag = "".join(c if c.isalnum() or c in "-_." else "-" for c in (recipe or "default"))
        study = study_from_dict({"recipe": recipe, "models": models}, f"compare-{recipe_tag}", flags + overrides)
    else:
        raise ReslabError("give a study (reslab compare STUDY.yaml, or a shipped one: digits-depth) "
                          "or --models a,b with --recipe R")
    return update_study(study, models=models, seeds=seeds, datasets=datasets, recipe=recipe, out=out)


def update_study(study: Study, models=None, seeds=None, datasets=None, recipe=None, out=None) -> Study:
    """``study`` with the fields given (command-line flags: "a,b" strings or lists) replaced."""
    flags = {"models": models, "seeds": seeds, "datasets": datasets, "recipe": recipe, "out": out}
    return parse_fields(Study, {key: value for key, value in flags.items() if value is not None}, "", base=study)


def _folder(path: Path) -> Path:
    """The study's folder, refused now if no filesystem could hold it (a NUL, a name over 255
    bytes, a character the filesystem's encoding lacks)."""
    try:
        parts = [os.fsencode(part) for part in path.parts]
    except UnicodeEncodeError:
        parts = [b"\0"]
    if any(b"\0" in part or len(part) > 255 for part in parts):
        raise ReslabError(f"study folder {str(path)[:80]!r} is not a usable path (it holds a NUL, a character the "
                          "filesystem cannot encode, or a name over 255 bytes); give another out: (or name:)")
    return path


# ---------------------------------------------------------------- planning


def plan(study: Study) -> list[PlannedRun]:
    """Every run's config and folder, built (and validated) before anything trains."""
    for model in dict.fromkeys(study.models):
        create_model(model)  # an unknown name or a bad depth fails now, not after hours of other runs
    runs = []
    variants = study.variants.items() if study.variants else [(None, [])]
    for dataset in study.datasets:
        for variant, variant_overrides in variants:
            for model in study.models:
                for seed in study.seeds:
                    recipe = _recipe_for(study.recipe, model, dataset)
                    overrides = [*study.overrides, *variant_overrides, f"model.name={model}", f"train.seed={seed}"]
                    if dataset is not None:
                        overrides.append(f"data.name={dataset}")
                    config = load(recipe, overrides)
                    name = "-".join(p for p in (model, config.data.name, variant) if p) + f"-seed{seed}"
                    _check_folder_name(name)
                    config.output.dir = str(study.out)
                    config.output.name = name
                    runs.append(PlannedRun(name, model, config.data.name, seed, variant, config, study.out / name))
    names = [run.name for run in runs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ReslabError(f"the study lists run {duplicate!r} twice; check models, seeds and variants")
    return runs


def _recipe_for(recipe: str | None, model: str, dataset: str | None) -> str | None:
    """The study's recipe with {model} and {dataset} filled in."""
    if not recipe:
        return None
    try:
        return recipe.format(model=model, dataset=dataset or "")
    except (IndexError, KeyError, ValueError, AttributeError):
        raise ReslabError(f"study key 'recipe' may hold {{model}} and {{dataset}} and no other braces, got "
                          f"{recipe[:80]!r}") from None


# A run folder's name (model, dataset, variant, seed): one folder inside the study's.
MAX_RUN_NAME = 200


def _check_folder_name(name: str) -> None:
    if len(name) > MAX_RUN_NAME or not name.isprintable() or "/" in name or "\\" in name:
        raise ReslabError(f"the study's run {name[:80]!r} cannot be a folder name inside the study: its model, "
                          f"dataset and variant names must be printable, at most {MAX_RUN_NAME} characters together, "
                          "without / or \\")


def run_state(run_dir: Path) -> str:
    """``new``; ``finished`` (metrics.json); ``interrupted`` (a checkpoint to resume from);
    ``started`` (config.yaml but stopped before its first checkpoint: it starts again in place)."""
    if not run_dir.exists():
        return "new"
    if (run_dir / "metrics.json").is_file():
        return "finished"
    if not (run_dir / "config.yaml").is_file():
        if not any(run_dir.iterdir()):
            return "new"  # an empty folder: nothing to lose
        raise ReslabError(f"{run_dir} is in the study's place but is not a reslab run folder (no config.yaml); "
                          "move it away and run the study again")
    if (run_dir / "checkpoints" / "last.pt").is_file() or epoch_checkpoints(run_dir):
        return "interrupted"
    return "started"


# ---------------------------------------------------------------- running


def run_study(study: Study, progress: bool = True, log=None) -> StudyResult:
    """Train every run of ``study`` that is not finished yet, one after the other."""
    log = log or logger.info
    runs = plan(study)
    try:
        study.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create study folder {study.out}: {exc.strerror}") from None
    started = time.perf_counter()
    results, trained, statuses = [], 0, {}
    for index, run in enumerate(runs, 1):
        state = run_state(run.run_dir)
        if state != "new":  # the rule of train --resume: only where it runs (and an unfinished run's length)
            check_resumable(run.run_dir, resolve_defaults(copy.deepcopy(run.config)))
        what = {"new": "training", "finished": "finished, reused", "interrupted": "interrupted, resuming",
                "started": "stopped before its first checkpoint, starting again"}[state]
        log(f"run {index}/{len(runs)}: {run.name} ({what})")
        statuses[run.name] = "running"
        _write_manifest(study, runs, statuses)
        run_started = time.perf_counter()
        try:
            if state == "finished":
                result = load_result(run.run_dir)
            elif state == "new":
                if run.run_dir.exists():
                    run.run_dir.rmdir()
                result = train(copy.deepcopy(run.config), progress=progress)
                trained += 1
            else:
                # The study's config, not the saved one: a new data.root or device applies.
                result = train(copy.deepcopy(run.config), resume=run.run_dir, progress=progress)
                trained += 1
        except BaseException:
            statuses[run.name] = "stopped"
            _write_manifest(study, runs, statuses)
            log(f"study stopped at run {index}/{len(runs)} ({run.name}); the finished runs are kept: "
                "run the same command again to continue")
            raise
        results.append(result)
        statuses[run.name] = "finished"
        _write_manifest(study, runs, statuses)
        if state != "finished":
            test = result.metrics["test"]
            log(f"run {index}/{len(runs)}: {run.name} done in {time.perf_counter() - run_started:.1f} s, "
                f"test error {100 * (1 - test['accuracy']):.2f}%  (study time {_clock(time.perf_counter() - started)})")
    return StudyResult(study, runs, results, trained, time.perf_counter() - started)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _write_manifest(study: Study, runs: list[PlannedRun], statuses: dict[str, str]) -> None:
    atomic_write_json(study.out / "study.json", {
        "name": study.name, "recipe": study.recipe, "models": study.models, "seeds": study.seeds,
        "datasets": study.datasets, "overrides": study.overrides, "variants": study.variants,
        "command": " ".join(sys.argv),
        "runs": [{"name": r.name, "model": r.model, "dataset": r.dataset, "seed": r.seed, "variant": r.variant,
                  "status": statuses.get(r.name, "pending")} for r in runs],
    })
