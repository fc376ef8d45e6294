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
corrupted on the device, truncated to 8 bits (the published benchmark is stored as 8-bit
images, by ``np.uint8``), normalised and classified as the run evaluated (precision,
test-time flip). Image k of the split is corrupted by the stream of (seed, corruption, k),
so a subset sees the same corrupted images as the whole split, and an image file that fails
to decode changes no other image's corruption. The clean error is measured on the same images.

Or the corrupted images are the published ones, read from disk (``corruptions_from``: the
folder of CIFAR-10-C / CIFAR-100-C's .npy files or of ImageNet-C's corruption folders,
``reslab.data.corrupted_sets``): the same subset of each cell, normalised and classified in
the same way, the same tables and mCE. The result names its source, and for generated
images the parameter table and the frost (the published photographs or the stand-in).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..checkpoint import load_checkpoint
from ..config import config_field, parse_fields
from ..data.corrupted_sets import CorruptedSet, open_corrupted_set
from ..data.corruptions import (
    CORRUPTIONS,
    GENERATOR,
    SEVERITIES,
    corrupt,
    corruption_names,
    frost_source,
    parameter_table,
    severity_list,
)
from ..data.normalization import Normalizer
from ..document import Bullets, Paragraph, Table, markdown
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


def _corruptions(value) -> list[str]:
    """``all``, a category, "name,name" or a list of names (unknown ones refused with a hint)."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise ValueError("must be all, a category (noise, blur, weather, digital) or corruption names")
    return corruption_names(",".join(items))


def _severities(value) -> list[int]:
    """``1-5``, ``3``, ``1,3,5`` or a list of severities, as a sorted list."""
    items = value if isinstance(value, list) else [value]
    if all(isinstance(item, str) or type(item) is int and abs(item) < 100 for item in items):  # str() is safe
        try:
            return severity_list(",".join(map(str, items)))
        except ReslabError:
            pass
    raise ValueError(f"must be {SEVERITIES[0]} to {SEVERITIES[-1]}: a range, a number or a list (e.g. 1-5, 3 or "
                     "[1, 3, 5])")


@dataclass
class RobustnessSettings:
    """A study's ``robustness:`` section, or ``reslab evaluate``'s corruption flags."""

    corruptions: list[str] = config_field(default_factory=lambda: list(CORRUPTIONS), convert=_corruptions)
    severities: list[int] = config_field(default_factory=lambda: list(SEVERITIES), convert=_severities)
    images: int | None = config_field(None, least=1)  # a deterministic subset of the split; None: every image
    seed: int = config_field(0, least=0, most=2**63 - 1)  # of the corruptions' random draws (and of the subset)
    baseline: str | None = None  # mCE's normaliser: a run folder (evaluate) or a model name (a study)
    # the folder of a published corrupted set (CIFAR-10-C's .npy files, ImageNet-C's folders); None: generated
    corruptions_from: str | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> RobustnessSettings:
        """From a study's ``robustness:`` section (or flags): corruptions "all", a category or a
        list; severities "1-5" or a list; images, seed, baseline."""
        return parse_fields(cls, data or {}, "robustness")

    def key(self, split: str, dataset: str) -> dict:
        """What decides the images evaluated (the cells are shared across type/severity lists):
        for generated corruptions, the generator's version and the frost used; for a
        published set, its folder."""
        key = {"images": self.images, "seed": self.seed, "split": split, "dataset": dataset}
        if self.corruptions_from is not None:
            return {**key, "source": str(Path(self.corruptions_from).expanduser().resolve())}
        return {**key, "source": "generated", "generator": GENERATOR, "frost": frost_source()}


# ---------------------------------------------------------------- the images


def choose_images(count: int, wanted: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of ``wanted`` of ``count`` images (all when None or more), the same for a seed."""
    if wanted is None or wanted >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:wanted].sort().values


def clean_pixels(loader, mean: list[float], std: list[float], chosen: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen images of an evaluation loader (which keeps the split's order) as uint8
    (N, C, H, W) on the CPU, with their targets and their indices in the split: the loader's
    normalisation undone. An image file that fails to decode is missing from what the loader
    serves, and from what comes back; the indices are the split's, so the images after it
    keep their own (and their corruption seeds)."""
    channels = len(mean)
    offset = torch.tensor(mean).view(1, channels, 1, 1) * 255
    scale = torch.tensor(std).view(1, channels, 1, 1) * 255
    if not len(chosen):
        raise ReslabError("the split holds no images to corrupt")
    wanted = torch.zeros(int(chosen.max()) + 1, dtype=torch.bool)
    wanted[chosen] = True
    last = int(chosen[-1]) if len(chosen) else -1
    images, targets, indices = [], [], []
    for batch, labels, index in loader.indexed():
        index = index.cpu()
        keep = (index < len(wanted)) & wanted[index.clamp(max=len(wanted) - 1)]
        if keep.any():
            pixels = batch.float().cpu()[keep] * scale + offset
            images.append(pixels.round().clamp(0, 255).to(torch.uint8).contiguous())
            targets.append(labels.cpu()[keep])
            indices.append(index[keep])
        if len(index) and int(index.max()) >= last:
            break
    if not images:
        raise ReslabError("the split holds no images to corrupt")
    return torch.cat(images), torch.cat(targets), torch.cat(indices)


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
    ``cells`` (corruption, severity) (default: every pair of the settings): corrupted on the
    fly, or read from the published set in ``settings.corruptions_from``."""
    if loaded.task.multi_label:
        raise ReslabError("corruption robustness is measured by top-1 error: a single-label checkpoint is needed")
    loader = loaded.loader(split)
    chosen = choose_images(len(loader.images), settings.images, settings.seed)
    images, targets, chosen = clean_pixels(loader, loaded.meta["mean"], loaded.meta["std"], chosen)
    normalize = Normalizer(loaded.meta["mean"], loaded.meta["std"], loaded.device)
    batch_size = loaded.config.train.eval_batch_size
    channels_last = loaded.config.train.channels_last
    clock = _Clock(loaded.device)
    cells = cells if cells is not None else [(n, s) for n in settings.corruptions for s in settings.severities]
    published = _published_set(loaded, settings, cells, images) if settings.corruptions_from is not None else None

    def measure(name: str | None, severity: int) -> dict:
        if name is not None and published is not None:
            batches = published.batches(name, severity, targets, split, clock, normalize, channels_last, batch_size)
        else:
            batches = _batches(images, targets, chosen, name, severity, settings.seed, normalize, channels_last,
                               batch_size, clock)
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
    corrupted = (published.count if published is not None else len(images)) * sum(1 for _ in cells)
    if published is not None:
        source = {"source": f"{published.set.layout} in {published.set.root}"}
    else:
        source = {"source": "generated", "parameters": parameter_table(*images.shape[-2:]).name,
                  "frost": frost_source()}
    return {"images": len(images), "clean": clean, "errors": errors, "ece": ece, **source,
            "seconds": {"total": total, "corruption": clock.seconds, "inference": total - clock.seconds,
                        "corrupted_images": corrupted,
                        "corruption_images_per_second": corrupted / clock.seconds if clock.seconds else None}}


class _PublishedBatches:
    """Batches of a published corrupted set's cells, read and normalised as the clean images are."""

    def __init__(self, corrupted: CorruptedSet, settings: RobustnessSettings, class_index: dict | None,
                 size: tuple[int, int], clean_count: int):
        self.set, self.settings, self.class_index, self.size = corrupted, settings, class_index, size
        self.clean_count = clean_count
        self.count = 0

    def batches(self, name: str, severity: int, clean_targets: torch.Tensor, split: str, clock: _Clock,
                normalize: Normalizer, channels_last: bool, batch_size: int):
        cell = self.set.cell(name, severity, self.class_index)
        chosen = choose_images(len(cell), self.settings.images, self.settings.seed)
        self.count = len(chosen)
        labels = torch.from_numpy(cell.labels[chosen.numpy()].astype("int64"))
        if (self.set.layout == "CIFAR-C .npy files" and len(cell) == self.clean_count
                and not torch.equal(labels, clean_targets.cpu())):
            raise ReslabError(f"the labels in {self.set.root / 'labels.npy'} are not those of the {split} split: the "
                              "files are another dataset's (CIFAR-100-C for a CIFAR-10 run?)")
        for pixels, labels in _timed(cell.batches(chosen, batch_size), clock):
            pixels = pixels.to(clock.device, non_blocking=True)
            batch = normalize(pixels)
            if tuple(batch.shape[-2:]) != self.size:  # as the loader resizes (after normalising)
                batch = F.interpolate(batch, size=self.size, mode="bilinear", align_corners=False)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            yield batch, labels.to(clock.device)


def _timed(batches, clock: _Clock):
    """``batches``, the time spent reading them added to ``clock``."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        clock.seconds += time.perf_counter() - started
        yield item


def _published_set(loaded: LoadedCheckpoint, settings: RobustnessSettings, cells: list[tuple[str, int]],
                   images: torch.Tensor) -> _PublishedBatches:
    """The published corrupted set of ``settings.corruptions_from``, checked against the checkpoint."""
    size = tuple(images.shape[-2:])
    corrupted = open_corrupted_set(settings.corruptions_from, image_size=size[0])
    corrupted.check([n for n, _ in cells], sorted({s for _, s in cells}))
    if images.shape[1] != 3:
        raise ReslabError(f"{loaded.meta['model']} takes {images.shape[1]}-channel images; the published corrupted "
                          "sets are colour images")
    class_index = None
    if corrupted.layout == "ImageNet-C folders":
        classes = [str(c) for c in loaded.meta.get("classes") or []]
        folder = corrupted.root / cells[0][0] / str(cells[0][1])
        present = {p.name for p in folder.iterdir() if p.is_dir()}
        if present and present <= set(classes):
            class_index = {name: k for k, name in enumerate(classes)}
        else:
            logger.warning("%s: its class folders are not the checkpoint's class names; they are numbered in sorted "
                           "order", folder)
    return _PublishedBatches(corrupted, settings, class_index, size, len(images))


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
    merged.update({key: fresh[key] for key in ("source", "parameters", "frost") if key in fresh})
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
    rows = []
    for name, values in result["errors"].items():
        row = [name, *(f"{100 * values[str(s)]:.2f}" for s in severities),
               f"{100 * summary['mean_error_per_type'][name]:.2f}"]
        if baseline:
            row += [_percent(summary["ce"][name]), _percent(summary["relative_ce"][name])]
        rows.append(row)
    notes = [f"corrupted images: {_source(result)}",
             f"clean error: {100 * summary['clean_error']:.2f}",
             "mean corruption error (unnormalised: the mean over types and severities): "
             f"{100 * summary['mean_corruption_error']:.2f}"]
    if baseline:
        notes += [f"mCE against {summary['baseline']} (= 100): {_percent(summary['mce'])}",
                  f"relative mCE against {summary['baseline']}: {_percent(summary['relative_mce'])}"]
    else:
        notes.append("mCE and relative mCE need a baseline (--baseline RUN); the paper normalises by AlexNet's")
    caption = (f"{result['model']} on {result['dataset']} ({result['split']} split, {result['images']:,} images, "
               f"corruption seed {result['settings']['seed']}), error in %:")
    return markdown([Table(headers, rows), Paragraph(caption), Bullets(notes)]).removesuffix("\n")


def _source(result: dict) -> str:
    """Where the corrupted images came from, and which frost they hold."""
    source = result.get("source", "generated")
    if source != "generated":
        return f"read from the published files ({source})"
    parameters = result.get("parameters")
    text = "generated on the fly" + (f" with {parameters}'s published parameters" if parameters else "")
    if "frost" in result.get("errors", {}):
        text += f"; frost: {result.get('frost', 'unknown')}"
    return text


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
