"""Robustness to common corruptions (Hendrycks & Dietterich, ICLR 2019): a model's error
on its test images under each of the 15 corruptions at each severity, generated on the fly
(``reslab.data.corruptions``), and the paper's summaries (§4):

- corruption error of a type, CE_c = sum_s E(s, c) / sum_s E_base(s, c), normalised by a
  baseline model's (AlexNet's in the paper; here a run given as the baseline), and the
  mean corruption error mCE, the mean of CE_c over the types;
- relative CE_c = sum_s (E(s, c) - E_clean) / sum_s (E_base(s, c) - E_base,clean) and its
  mean, relative mCE: how much *more* error the corruptions cause than the clean images;
- without a baseline, the unnormalised mean corruption error: the mean of E(s, c) over
  types and severities, an error rate (it is not the paper's mCE, and tables say so).

Images: the split's pixels as its loader hands them over, turned back into 0..255 from the
normalisation (exact for uint8 data), a deterministic subset of them if asked; each batch is
corrupted on the device, rounded to 8 bits (the published benchmark is stored as 8-bit
images), normalised and classified as the run evaluated (precision, test-time flip). Image
k of the split is corrupted by the stream of (seed, corruption, k), so a subset sees the
same corrupted images as the whole split. The clean error is measured on the same images.

A run's results are kept in ``robustness.json`` in its folder with the settings and the
SHA-256 of the checkpoint, so asking again (``reslab compare --robustness`` rerun) computes
only what is missing; ``robustness.md`` (the table) and ``robustness.png`` (the heat-map)
are written beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_names, severity_list
from ..data.normalization import Normalizer
from ..errors import ReslabError
from ..figures import new_figure, save_figure
from ..models.weights.hub import is_hub_source
from ..runfs import atomic_write_json, atomic_write_text
from .calibration import calibration_metrics, checkpoint_digest, resolve_checkpoint
from .predict import predict
from .runner import LoadedCheckpoint, load_for_evaluation, trained_on

logger = logging.getLogger(__name__)

RESULTS_FILE = "robustness.json"
TABLE_FILE = "robustness.md"
HEATMAP_FILE = "robustness.png"
SETTING_KEYS = ("corruptions", "severities", "images", "seed", "baseline")


@dataclass
class RobustnessSettings:
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    images: int | None = None  # a deterministic subset of the split; None: every image
    seed: int = 0  # of the corruptions' random draws (and of the subset)
    baseline: str | None = None  # mCE's normaliser: a run folder (evaluate) or a model name (a study)

    @classmethod
    def from_dict(cls, data: dict | None) -> "RobustnessSettings":
        """From a study's ``robustness:`` section (or flags): corruptions "all", a category or a
        list; severities "1-5" or a list; images, seed, baseline."""
        data = data or {}
        if not isinstance(data, dict):
            raise ReslabError("the study's robustness: must be a mapping, e.g. {images: 2000, baseline: plain20}")
        unknown = sorted(set(data) - set(SETTING_KEYS))
        if unknown:
            raise ReslabError(f"unknown robustness setting {unknown[0]!r}; the settings are {', '.join(SETTING_KEYS)}")
        corruptions = data.get("corruptions", "all")
        severities = data.get("severities", "1-5")
        settings = cls(
            corruptions=corruption_names(",".join(corruptions) if isinstance(corruptions, list) else str(corruptions)),
            severities=severity_list(",".join(map(str, severities)) if isinstance(severities, list) else severities),
            images=_positive(data.get("images"), "images"),
            seed=_integer(data.get("seed", 0), "seed"),
            baseline=str(data["baseline"]) if data.get("baseline") is not None else None,
        )
        return settings

    def key(self, split: str, dataset: str) -> dict:
        """What decides the images evaluated (the cells are shared across type/severity lists)."""
        return {"images": self.images, "seed": self.seed, "split": split, "dataset": dataset}


def _positive(value, name: str) -> int | None:
    if value is None:
        return None
    number = _integer(value, name)
    if number < 1:
        raise ReslabError(f"robustness {name} must be at least 1, got {value!r}")
    return number


def _integer(value, name: str) -> int:
    if isinstance(value, bool):
        raise ReslabError(f"robustness {name} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ReslabError(f"robustness {name} must be a whole number, got {value!r}") from None


# ---------------------------------------------------------------- the images


def choose_images(count: int, wanted: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of ``wanted`` of ``count`` images (all when None or more), the same for a seed."""
    if wanted is None or wanted >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:wanted].sort().values


def clean_pixels(loader, mean: list[float], std: list[float], chosen: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen images of an evaluation loader (which keeps the split's order) as uint8
    (N, C, H, W) on the CPU, with their targets: the loader's normalisation undone."""
    channels = len(mean)
    offset = torch.tensor(mean).view(1, channels, 1, 1) * 255
    scale = torch.tensor(std).view(1, channels, 1, 1) * 255
    wanted = set(chosen.tolist())
    last = int(chosen[-1]) if len(chosen) else -1
    images, targets, position = [], [], 0
    for batch, labels in loader:
        index = torch.arange(position, position + len(labels))
        keep = torch.tensor([int(i) in wanted for i in index], dtype=torch.bool)
        if keep.any():
            pixels = batch.float().cpu()[keep] * scale + offset
            images.append(pixels.round().clamp(0, 255).to(torch.uint8).contiguous())
            targets.append(labels.cpu()[keep])
        position += len(labels)
        if position > last:
            break
    if not images:
        raise ReslabError("the split holds no images to corrupt")
    return torch.cat(images), torch.cat(targets)


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _batches(images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, name: str | None, severity: int,
             seed: int, normalize: Normalizer, channels_last: bool, batch_size: int, clock: _Clock):
    """Normalised batches of ``images`` corrupted by ``name`` (None: clean), timing the corruption."""
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(clock.device, non_blocking=True)
        if name is not None:
            clock.sync()
            started = time.perf_counter()
            batch = corrupt(batch, name, severity, seed, indices[start : start + batch_size])
            clock.sync()
            clock.seconds += time.perf_counter() - started
        batch = normalize(batch)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        yield batch, targets[start : start + batch_size].to(clock.device)


# ---------------------------------------------------------------- evaluating


def corruption_errors(loaded: LoadedCheckpoint, settings: RobustnessSettings, split: str = "test",
                      cells: list[tuple[str, int]] | None = None) -> dict:
    """Error and ECE of ``loaded`` on the clean and the corrupted images of ``split``, for
    ``cells`` (corruption, severity) (default: every pair of the settings)."""
    if loaded.task.multi_label:
        raise ReslabError("corruption robustness is measured by top-1 error: a single-label checkpoint is needed")
    loader = loaded.loader(split)
    chosen = choose_images(len(loader.images), settings.images, settings.seed)
    images, targets = clean_pixels(loader, loaded.meta["mean"], loaded.meta["std"], chosen)
    chosen = chosen[: len(images)]
    normalize = Normalizer(loaded.meta["mean"], loaded.meta["std"], loaded.device)
    batch_size = loaded.config.train.eval_batch_size
    clock = _Clock(loaded.device)
    cells = cells if cells is not None else [(n, s) for n in settings.corruptions for s in settings.severities]

    def measure(name: str | None, severity: int) -> dict:
        batches = _batches(images, targets, chosen, name, severity, settings.seed, normalize,
                           loaded.config.train.channels_last, batch_size, clock)
        logits, truth = predict(loaded.network, batches, loaded.device, loaded.precision,
                                flip=loaded.config.train.tta)
        error = float((logits.argmax(1) != truth).float().mean())
        return {"error": error, "ece": calibration_metrics(logits, truth)["ece"]}

    started = time.perf_counter()
    clean = measure(None, 0)
    errors: dict[str, dict[str, float]] = {}
    ece: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(n for n, _ in cells):
        began = time.perf_counter()
        for severity in [s for n, s in cells if n == name]:
            cell = measure(name, severity)
            errors.setdefault(name, {})[str(severity)] = cell["error"]
            ece.setdefault(name, {})[str(severity)] = cell["ece"]
        shown = " ".join(f"{100 * e:.1f}" for e in errors[name].values())
        logger.info("%s: %s error (%%) at severities %s: %s (%.1f s)", loaded.meta["model"], name,
                    ",".join(errors[name]), shown, time.perf_counter() - began)
    total = time.perf_counter() - started
    corrupted = len(images) * sum(1 for _ in cells)
    return {"images": len(images), "clean": clean, "errors": errors, "ece": ece,
            "seconds": {"total": total, "corruption": clock.seconds, "inference": total - clock.seconds,
                        "corrupted_images": corrupted,
                        "corruption_images_per_second": corrupted / clock.seconds if clock.seconds else None}}


def robustness_of_checkpoint(checkpoint: Path | str, settings: RobustnessSettings, split: str = "test",
                             device: str = "auto", data: str | None = None, data_root: str | None = None,
                             write: bool = True) -> dict:
    """A checkpoint's (or run folder's) corruption errors per ``settings``, reusing the cells
    its run folder's robustness.json already holds for the same checkpoint and images, and
    (``write``) writing robustness.json/.md/.png into the run folder."""
    if is_hub_source(str(checkpoint)):
        raise ReslabError(f"{checkpoint} is a hub folder: the corruption evaluation takes a run folder or checkpoint")
    path, run_dir = resolve_checkpoint(Path(checkpoint))
    if not path.is_file():
        raise ReslabError(f"checkpoint {path} does not exist")
    digest = checkpoint_digest(path)
    meta = load_checkpoint(path)["meta"]
    model, dataset = meta["model"], data or trained_on(meta)
    key = settings.key(split, dataset)
    cached = _cached(run_dir, digest, key)
    wanted = [(n, s) for n in settings.corruptions for s in settings.severities]
    missing = [(n, s) for n, s in wanted if str(s) not in cached.get("errors", {}).get(n, {})]
    fresh = None
    if missing:
        with load_for_evaluation(path, data=data, data_root=data_root, device=device) as loaded:
            fresh = corruption_errors(loaded, settings, split, missing)
    else:
        logger.info("%s: corruption errors reused from %s", model, run_dir / RESULTS_FILE)
    stored = _merge(cached, fresh) if fresh is not None else cached
    stored.update({"model": model, "dataset": dataset, "split": split, "settings": key,
                   "checkpoint": path.name, "checkpoint_sha256": digest})
    if write and run_dir is not None and fresh is not None:
        atomic_write_json(run_dir / RESULTS_FILE, stored)
    return _select(stored, settings)


def _cached(run_dir: Path | None, digest: str, key: dict) -> dict:
    if run_dir is None or not (run_dir / RESULTS_FILE).is_file():
        return {}
    try:
        stored = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        logger.warning("%s is unreadable; the corruption errors are measured again", run_dir / RESULTS_FILE)
        return {}
    if not isinstance(stored, dict) or stored.get("checkpoint_sha256") != digest or stored.get("settings") != key:
        return {}
    return stored


def _merge(cached: dict, fresh: dict) -> dict:
    merged = {key: value for key, value in cached.items()}
    for table in ("errors", "ece"):
        merged[table] = {name: dict(values) for name, values in cached.get(table, {}).items()}
        for name, values in fresh[table].items():
            merged[table].setdefault(name, {}).update(values)
    merged["images"], merged["clean"] = fresh["images"], fresh["clean"]
    merged["seconds"] = fresh["seconds"]
    return merged


def _select(stored: dict, settings: RobustnessSettings) -> dict:
    """The stored cells the settings ask for, in the settings' order."""
    result = {key: value for key, value in stored.items() if key not in ("errors", "ece")}
    for table in ("errors", "ece"):
        result[table] = {name: {str(s): stored[table][name][str(s)] for s in settings.severities}
                         for name in settings.corruptions}
    result["severities"] = list(settings.severities)
    return result


# ---------------------------------------------------------------- the paper's summaries


def summarise(result: dict, baseline: dict | None = None) -> dict:
    """Clean error, the unnormalised mean corruption error, the mean error per type and,
    against ``baseline`` (the same settings' result of another model), CE and relative CE
    per type, mCE and relative mCE (Hendrycks & Dietterich §4)."""
    names = list(result["errors"])
    clean = result["clean"]["error"]
    per_type = {name: float(np.mean(list(result["errors"][name].values()))) for name in names}
    summary = {"clean_error": clean, "clean_ece": result["clean"].get("ece"), "images": result.get("images"),
               "mean_corruption_error": float(np.mean(list(per_type.values()))), "mean_error_per_type": per_type,
               "mean_ece": float(np.mean([v for name in names for v in result["ece"][name].values()])),
               "baseline": None, "ce": None, "mce": None, "relative_ce": None, "relative_mce": None}
    if baseline is None:
        return summary
    if not set(names) <= set(baseline["errors"]) or baseline.get("images") != result.get("images"):
        raise ReslabError("the baseline was not evaluated on the same corruptions and images; evaluate both "
                          "with the same --corruptions, --severities and --corruption-images")
    base_clean = baseline["clean"]["error"]
    ce, relative = {}, {}
    for name in names:
        severities = list(result["errors"][name])
        ours = [result["errors"][name][s] for s in severities]
        theirs = [baseline["errors"][name][s] for s in severities]
        ce[name] = sum(ours) / sum(theirs) if sum(theirs) > 0 else None
        gap = sum(e - base_clean for e in theirs)
        relative[name] = sum(e - clean for e in ours) / gap if gap > 0 else None
    summary.update(baseline=baseline.get("model"), ce=ce, relative_ce=relative,
                   mce=_mean(ce.values()), relative_mce=_mean(relative.values()))
    return summary


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# ---------------------------------------------------------------- tables and figures


def robustness_table(result: dict, summary: dict) -> str:
    """Markdown: error (%) per corruption and severity, the mean, and CE / relative CE (%)
    where there is a baseline; then the clean error and the summaries."""
    severities = result["severities"]
    baseline = summary["baseline"] is not None
    headers = ["corruption", *(f"s{s}" for s in severities), "mean"] + (["CE", "rel. CE"] if baseline else [])
    lines = ["| " + " | ".join(headers) + " |", "|---" + "|---:" * (len(headers) - 1) + "|"]
    for name, values in result["errors"].items():
        row = [name, *(f"{100 * values[str(s)]:.2f}" for s in severities),
               f"{100 * summary['mean_error_per_type'][name]:.2f}"]
        if baseline:
            row += [_percent(summary["ce"][name]), _percent(summary["relative_ce"][name])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"{result['model']} on {result['dataset']} ({result['split']} split, {result['images']:,} images, "
                  f"corruption seed {result['settings']['seed']}), error in %:", "",
              f"- clean error: {100 * summary['clean_error']:.2f}",
              f"- mean corruption error (unnormalised: the mean over types and severities): "
              f"{100 * summary['mean_corruption_error']:.2f}"]
    if baseline:
        lines += [f"- mCE against {summary['baseline']} (= 100): {_percent(summary['mce'])}",
                  f"- relative mCE against {summary['baseline']}: {_percent(summary['relative_mce'])}"]
    else:
        lines.append("- mCE and relative mCE need a baseline (--baseline RUN); the paper normalises by AlexNet's")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def plot_heatmap(result: dict, path: Path, title: str = "") -> None:
    """Error (%) per corruption (rows) and severity (columns), the clean error beside them."""
    names = list(result["errors"])
    severities = result["severities"]
    values = np.array([[100 * result["errors"][n][str(s)] for s in severities] for n in names])
    figure, axis = new_figure(size=(1.0 * len(severities) + 4, 0.4 * len(names) + 1.8))
    image = axis.imshow(values, cmap="magma_r", vmin=0, vmax=100, aspect="auto")
    for row in range(len(names)):
        for column in range(len(severities)):
            value = values[row, column]
            axis.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                      color="white" if value > 45 else "black")
    axis.set_xticks(range(len(severities)), [str(s) for s in severities])
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("severity")
    figure.colorbar(image, ax=axis, label="error (%)")
    axis.set_title(title or f"{result['model']} on {result['dataset']}: clean error "
                            f"{100 * result['clean']['error']:.1f}%", fontsize=10)
    save_figure(figure, path)


def write_robustness_files(run_dir: Path, result: dict, summary: dict) -> list[Path]:
    """robustness.md and robustness.png in ``run_dir``."""
    plot_heatmap(result, run_dir / HEATMAP_FILE,
                 title=f"{result['model']} on {result['dataset']}: error (%) under corruption; clean "
                       f"{100 * summary['clean_error']:.1f}%, mean corruption error "
                       f"{100 * summary['mean_corruption_error']:.1f}%")
    atomic_write_text(run_dir / TABLE_FILE, f"# Corruption robustness: {result['model']}\n\n"
                                            + robustness_table(result, summary) + "\n")
    return [run_dir / TABLE_FILE, run_dir / HEATMAP_FILE]


def evaluate_robustness(checkpoint: Path | str, settings: RobustnessSettings, split: str = "test",
                        device: str = "auto", data: str | None = None, data_root: str | None = None) -> dict:
    """``reslab evaluate --corruptions``: the checkpoint's results, its baseline's (a run
    folder or checkpoint, evaluated with the same settings) and the summary; the table and
    heat-map written into the run folder."""
    result = robustness_of_checkpoint(checkpoint, settings, split, device, data, data_root)
    baseline = None
    if settings.baseline is not None:
        if not Path(settings.baseline).exists():
            raise ReslabError(f"--baseline {settings.baseline} does not exist; give a run folder or checkpoint")
        baseline = robustness_of_checkpoint(settings.baseline, settings, split, device, data, data_root)
    summary = summarise(result, baseline)
    _, run_dir = resolve_checkpoint(Path(checkpoint))
    written = write_robustness_files(run_dir, result, summary) if run_dir is not None else []
    return {"result": result, "baseline": baseline, "summary": summary, "files": [str(p) for p in written]}


def study_robustness(run_dirs: list[Path], settings: RobustnessSettings, device: str = "auto") -> dict[Path, dict]:
    """``reslab compare --robustness``: every finished run's corruption errors (kept in its
    folder, so a rerun only reads them), its table and heat-map, with mCE against the run of
    the baseline model (``settings.baseline``, a model name) on the same dataset, variant
    and seed: the run folder named like this one with the baseline's name in front."""
    results = {Path(run): robustness_of_checkpoint(run, settings, device=device) for run in run_dirs}
    for run, result in results.items():
        baseline = None
        if settings.baseline is not None and run.name.startswith(result["model"]):
            twin = run.parent / (settings.baseline + run.name[len(result["model"]):])
            baseline = results.get(twin)
            if baseline is None:
                logger.warning("no run of the baseline %s beside %s (looked for %s): its mCE is not normalised",
                               settings.baseline, run, twin.name)
        summary = summarise(result, baseline)
        write_robustness_files(run, result, summary)
        stored = json.loads((run / RESULTS_FILE).read_text())
        if stored.get("baseline_model") != settings.baseline:  # which model the report normalises by
            atomic_write_json(run / RESULTS_FILE, {**stored, "baseline_model": settings.baseline})
    return results
