"""Predictions on image files: read them as the checkpoint's training data looked (channels,
size, per-channel normalization), run the model in batches, and report the top-k classes,
or for a multi-label checkpoint every label whose sigmoid is over a threshold."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..data.decode import BadImage, decode
from ..data.normalization import Normalizer
from ..data.transforms import ImagePipeline, eval_transform
from ..device import resolve_device
from ..errors import ReslabError
from ..evaluate.calibration import stored_temperature
from ..evaluate.runner import batch_for, check_finite_logits, load_weights
from ..models import model_from_meta
from ..models.weights.hub import is_hub_source, load_hub_model

# Suffixes looked for inside folders; a file named on the command line is tried whatever its name.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
FORMATS = ("table", "csv", "json")
NOT_REGULAR = "not a regular file (a pipe, socket or device)"


@dataclass
class LoadedImages:
    images: torch.Tensor  # (N, C, H, W) uint8, at the checkpoint's image size
    names: list[str]  # one per image, as the user named it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)


# ---------------------------------------------------------------- the model


def load_model(checkpoint: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The network of a run folder, a .pt file or a hub folder (``hf-hub:org/name``: timm's
    layout), in eval mode on ``device``, and its meta."""
    if is_hub_source(checkpoint):
        model, meta = load_hub_model(checkpoint)
    else:
        state = load_checkpoint(Path(checkpoint))
        meta = state["meta"]
        model = model_from_meta(meta)
        load_weights(model, state["model"], checkpoint)
        fitted = stored_temperature(Path(checkpoint))  # reslab calibrate's, for this very file
        if fitted is not None:
            meta = {**meta, "temperature": fitted}
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), meta


def temperature(meta: dict) -> float:
    """What single-label logits are divided by before the softmax: the temperature
    ``reslab calibrate`` fitted (Guo et al. 2017), or 1."""
    return float(meta.get("temperature") or 1.0)


def is_multi_label(meta: dict) -> bool:
    return meta.get("task", "single-label") == "multi-label"


# ---------------------------------------------------------------- images


def expand_paths(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders as the images inside them (recursively, sorted), globs as
    their matches; and the specs that gave nothing, with why."""
    paths, problems = [], []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            empty = "folder holds no image files"
        elif path.is_file():
            found, empty = [path], ""
        elif path.exists():  # a pipe would block the read until someone writes to it
            found, empty = [], NOT_REGULAR
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            empty = "no file matches this pattern"
        else:
            found, empty = [], "no such file or folder"
        paths.extend(found)
        if not found:
            problems.append((spec, empty))
    return paths, problems


def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file. The file is opened without blocking and checked once open,
    so that a pipe, socket or device put in its place is refused rather than read."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ReslabError(NOT_REGULAR)
        return file.read()


def decode_image(data: bytes, meta: dict) -> torch.Tensor:
    """Image bytes as the model's (C, H, W) uint8 input, prepared exactly as the run's
    evaluation prepared its images (the checkpoint's ``preprocess``: the same decoder, EXIF
    policy, resize and crop). A ReslabError says why bytes are refused."""
    channels = meta["in_channels"]
    if channels not in (1, 3):
        raise ReslabError(f"the checkpoint takes {channels}-channel images; image files can feed 1 (grey) or 3 (RGB)")
    try:
        image = decode(data, (meta.get("preprocess") or {}).get("decoder", "pil"), channels)
    except BadImage as exc:
        raise ReslabError(str(exc)) from None
    return prepare(image, meta)


def prepare(image: torch.Tensor, meta: dict) -> torch.Tensor:
    """A decoded uint8 image resized (and cropped) as the checkpoint's evaluation did. Older
    checkpoints without ``preprocess`` had the whole image squashed to their input size."""
    height, width = meta["image_size"]
    spec = meta.get("preprocess") or {}
    pipeline = ImagePipeline(image_size=height, resize_size=spec.get("resize_size"),
                             center_crop=bool(spec.get("center_crop")),
                             interpolation=spec.get("interpolation", "bilinear"))
    if (height, width) != (pipeline.image_size, pipeline.image_size):  # a non-square input: squash
        from torchvision.transforms import v2

        return v2.functional.resize(image, [height, width], antialias=True).as_subclass(torch.Tensor)
    return eval_transform(pipeline)(image).as_subclass(torch.Tensor)


def load_images(specs: list[str], meta: dict) -> LoadedImages:
    """Read every image that ``specs`` (files, folders, globs) names.

    Unreadable ones are skipped (listed in ``skipped``) as long as one image is good;
    when none is, a ReslabError names the first problem.
    """
    paths, skipped = expand_paths(specs)
    images, names = [], []
    for path in paths:
        try:
            data = read_regular_file(path)
        except OSError as exc:
            skipped.append((str(path), f"cannot read it: {exc.strerror}"))
            continue
        except ReslabError as exc:
            skipped.append((str(path), str(exc)))
            continue
        try:
            images.append(decode_image(data, meta))
        except ReslabError as exc:
            skipped.append((str(path), str(exc)))
            continue
        names.append(str(path))
    if not images:
        if not skipped:
            raise ReslabError("no images given")
        listed = "; ".join(f"{what}: {why}" for what, why in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise ReslabError(f"no image to predict: {listed}{more}")
    return LoadedImages(torch.stack(images), names, skipped)


def normalize(images: torch.Tensor, meta: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, normalized with the checkpoint's per-channel mean/std,
    with the same operations as the training loader (so the logits are the same)."""
    return Normalizer(meta["mean"], meta["std"], device)(images)


# ---------------------------------------------------------------- predictions


@torch.inference_mode()
def probabilities(model: nn.Module, meta: dict, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, classes) on the CPU: softmax for a single-label checkpoint, sigmoid for multi-label."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for chunk in images.split(batch_for(batch_size, images.shape[-2:])):
        logits = model(normalize(chunk, meta, device)).float()
        check_finite_logits(logits, meta["model"])
        outputs.append(torch.sigmoid(logits) if is_multi_label(meta)
                       else torch.softmax(logits / temperature(meta), 1))
    return torch.cat(outputs).cpu()


def rank_classes(probs: torch.Tensor, meta: dict, top_k: int = 5, threshold: float = 0.5) -> list[list[dict]]:
    """Per image, the classes to report, most probable first: the top ``top_k``
    (single-label) or every label over ``threshold`` (multi-label)."""
    classes = meta["classes"]
    ranked = []
    for row in probs:
        values, indices = row.sort(descending=True)
        if is_multi_label(meta):
            keep = values > threshold
            values, indices = values[keep], indices[keep]
        else:
            values, indices = values[:top_k], indices[:top_k]
        ranked.append([{"class": classes[i], "index": int(i), "probability": float(p)}
                       for p, i in zip(values.tolist(), indices.tolist())])
    return ranked


def predict_images(model: nn.Module, meta: dict, loaded: LoadedImages, top_k: int = 5, threshold: float = 0.5,
                   batch_size: int = 256) -> list[dict]:
    """One result per image: ``{"image": name, "predictions": [{"class", "index", "probability"}, ...]}``."""
    ranked = rank_classes(probabilities(model, meta, loaded.images, batch_size), meta, top_k, threshold)
    return [{"image": name, "predictions": classes} for name, classes in zip(loaded.names, ranked)]


def format_results(results: list[dict], meta: dict, style: str, threshold: float | None = None) -> str:
    if style == "json":
        summary = {"model": meta["model"], "task": meta.get("task", "single-label"), "results": results}
        if meta.get("temperature"):
            summary["temperature"] = meta["temperature"]
        if threshold is not None:
            summary["threshold"] = threshold
        return json.dumps(summary, indent=2)
    rows = [(result["image"], rank, p["class"], p["index"], p["probability"])
            for result in results for rank, p in enumerate(result["predictions"], 1)]
    if style == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "rank", "class", "index", "probability"])
        writer.writerows([(image, rank, name, index, f"{p:.6f}") for image, rank, name, index, p in rows])
        return buffer.getvalue().rstrip("\n")
    return _table(results, threshold)


def _table(results: list[dict], threshold: float | None) -> str:
    lines = []
    for result in results:
        if not result["predictions"]:
            lines.append((result["image"], "", f"(no label over {threshold})", ""))
        for rank, p in enumerate(result["predictions"], 1):
            lines.append((result["image"] if rank == 1 else "", str(rank), p["class"], f"{p['probability']:.4f}"))
    header = ("image", "rank", "class", "probability")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(4)]
    text = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}  {header[3]:>{widths[3]}}"]
    for image, rank, name, probability in lines:
        text.append(f"{image:<{widths[0]}}  {rank:>{widths[1]}}  {name:<{widths[2]}}  {probability:>{widths[3]}}")
    return "\n".join(text)


def class_index(meta: dict, name: str) -> int:
    """A class given by name, or failing that by index."""
    classes = meta["classes"]
    if name in classes:
        return classes.index(name)
    if name.isascii() and name.isdigit() and len(name) <= 6 and int(name) < len(classes):
        return int(name)
    shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
    given = name if len(name) <= 40 else name[:40] + "..."
    raise ReslabError(f"unknown class {given!r}; the checkpoint's classes are {shown} "
                      f"(or an index 0..{len(classes) - 1})")
