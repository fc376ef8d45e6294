"""The one schema of a hub folder's ``config.json``: typed dataclasses parsed by the rules of
the run config (``reslab.config.parse_fields``: each value checked for its type, with the
same wording), then bounded, all before a weights file is read or a network built.

timm writes the top level and ``pretrained_cfg`` with more keys than reslab reads (``url``,
``license``, ``test_input_size``, ...): those are left alone. The ``reslab`` section is
reslab's own (``hub.hub_config`` writes it), and an unknown key in it is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ...checkpoint import MAX_CHANNELS, MAX_CLASSES
from ...config import CHOICES, DatasetName, parse_fields
from ...errors import ReslabError
from ..registry import check_input_size

Interpolation = Literal[CHOICES["data.interpolation"]]
# "torchvision-jpeg" is what data.decoder=auto resolves to without TorchCodec (data/decode.py).
Decoder = Literal[CHOICES["data.decoder"] + ("torchvision-jpeg",)]
Shortcut = Literal[CHOICES["model.shortcut"]]
StrideIn = Literal[CHOICES["model.stride_in"]]

# The smallest crop fraction (timm's crop_pct; 0.875 the usual, nothing under 0.5 in use): the
# resize before the crop is at most 4 times the input side.
MIN_CROP_FRACTION = 0.25
# Normalization keeps pixels finite, (x - mean) / std for x in [0, 1]: Keras's caffe std is 1/255.
MIN_STD = 1e-3
MAX_MEAN_STD = 1e3


@dataclass
class PretrainedCfg:
    """timm's ``pretrained_cfg``, the fields reslab reads (timm's defaults where one is left out)."""

    input_size: list[int] | None = None  # [channels, height, width]
    interpolation: Interpolation = "bicubic"
    crop_pct: float = 0.875
    crop_mode: Literal["center", "squash"] = "center"
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None
    label_names: Any = None


@dataclass
class TimmModelArgs:
    """timm's ``model_args`` that leave the network as reslab builds it."""

    in_chans: int | None = None
    num_classes: int | None = None
    global_pool: Literal["avg"] = "avg"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True


@dataclass
class ModelOptions:
    """The model options a run records (``train.setup.model_options``)."""

    shortcut: Shortcut | None = None
    stride_in: StrideIn | None = None


@dataclass
class Preprocess:
    """The evaluation transform as data (``reslab.data.sources.preprocessing``)."""

    image_size: int
    resize_size: int | None = None
    center_crop: bool = False
    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: int | None = None
    decoder: Decoder = "pil"
    exif: Literal["transpose"] = "transpose"


@dataclass
class ReslabSection:
    model: str
    model_options: ModelOptions = field(default_factory=ModelOptions)
    in_channels: int = 3
    image_size: list[int] | None = None
    task: Literal["single-label", "multi-label"] = "single-label"
    threshold: float = 0.5
    dataset: DatasetName | None = None
    preprocess: Preprocess | None = None
    temperature: float | None = None
    reslab_version: str | None = None
    timm: str | None = None


@dataclass
class HubConfig:
    architecture: str
    num_classes: int | None = None
    num_features: int | None = None
    global_pool: str | None = "avg"
    label_names: Any = None  # a list of names, or timm's {index: name}
    model_args: Any = None  # TimmModelArgs, once the keys that change the network are refused
    pretrained_cfg: Any = None  # PretrainedCfg (timm's keys beyond it are left alone)
    reslab: Any = None  # ReslabSection (no key beyond it)


def _check(key: str, ok: bool, message: str, value) -> None:
    if not ok:
        shown = repr(value)
        raise ReslabError(f"config key '{key}' {message}, got {shown if len(shown) <= 60 else shown[:60] + '...'}")


def hub_meta_from_config(config, timm_twins: tuple[str, ...], harmless_args: set[str]) -> dict:
    """A checkpoint's ``meta`` from a parsed ``config.json``: reslab's own section, or for a
    folder timm wrote, timm's fields of one of ``timm_twins``."""
    hub = parse_fields(HubConfig, config, "", ignore_unknown=True)
    cfg = parse_fields(PretrainedCfg, {} if hub.pretrained_cfg is None else hub.pretrained_cfg, "pretrained_cfg",
                       ignore_unknown=True)
    num_classes = hub.num_classes if hub.num_classes is not None else cfg.num_classes
    _check("num_classes", num_classes is not None and 1 <= num_classes <= MAX_CLASSES,
           f"must be a whole number from 1 to {MAX_CLASSES:,}", num_classes)  # bounded before lists are made
    if hub.reslab is not None:
        own = hub.reslab
        if isinstance(own, dict):  # hub_config writes every key, null where the checkpoint had none
            own = {key: value for key, value in own.items() if value is not None}
        meta = _own_meta(parse_fields(ReslabSection, own, "reslab"))
    else:
        meta = _timm_meta(hub, cfg, timm_twins, harmless_args)
    channels = meta["in_channels"]
    meta["num_classes"] = num_classes
    meta["classes"] = _labels(hub.label_names if hub.label_names is not None else cfg.label_names, num_classes)
    meta["mean"] = _per_channel(cfg.mean, channels, "pretrained_cfg.mean", -MAX_MEAN_STD)
    meta["std"] = _per_channel(cfg.std, channels, "pretrained_cfg.std", MIN_STD)
    if isinstance(meta.get("preprocess"), dict):
        meta["preprocess"] = {**meta["preprocess"], "mean": meta["mean"], "std": meta["std"]}
    return meta


def _own_meta(own: ReslabSection) -> dict:
    _check("reslab.in_channels", 1 <= own.in_channels <= MAX_CHANNELS, f"must be from 1 to {MAX_CHANNELS}",
           own.in_channels)
    size = own.image_size
    _check("reslab.image_size", size is not None and len(size) == 2 and min(size) >= 1,
           "must be [height, width] in pixels", size)
    check_input_size(own.model, size)  # an unknown model or a size its family does not take
    _check("reslab.threshold", 0 < own.threshold < 1, "must be in (0, 1)", own.threshold)
    _check("reslab.temperature", own.temperature is None or own.temperature > 0, "must be positive",
           own.temperature)
    options = {key: value for key, value in vars(own.model_options).items() if value is not None}
    meta = {"model": own.model, "model_options": options, "in_channels": own.in_channels, "image_size": size,
            "task": own.task, "threshold": own.threshold, "dataset": own.dataset}
    if own.temperature is not None:
        meta["temperature"] = own.temperature
    if own.reslab_version is not None:
        meta["reslab_version"] = own.reslab_version
    if own.preprocess is not None:
        meta["preprocess"] = _preprocess(own.preprocess, own)
    return meta


def _preprocess(spec: Preprocess, own: ReslabSection) -> dict:
    side = spec.image_size
    _check("reslab.preprocess.image_size", side >= 1, "must be at least 1", side)
    check_input_size(own.model, (side, side))
    _check("reslab.preprocess.resize_size",
           spec.resize_size is None or 1 <= spec.resize_size <= side / MIN_CROP_FRACTION,
           f"must be from 1 to {int(side / MIN_CROP_FRACTION)} ({1 / MIN_CROP_FRACTION:g} times the image size)",
           spec.resize_size)
    _check("reslab.preprocess.channels", spec.channels in (None, own.in_channels),
           f"must be the model's {own.in_channels} input channels", spec.channels)
    return {"image_size": side, "resize_size": spec.resize_size, "center_crop": spec.center_crop,
            "interpolation": spec.interpolation, "antialias": spec.antialias, "channels": own.in_channels,
            "decoder": spec.decoder, "exif": spec.exif}


def _timm_meta(hub: HubConfig, cfg: PretrainedCfg, timm_twins: tuple[str, ...], harmless_args: set[str]) -> dict:
    architecture = hub.architecture
    if architecture not in timm_twins:
        raise ReslabError(f"architecture {architecture[:64]!r} is a model reslab does not build; reslab reads its own "
                          f"folders and timm's {', '.join(timm_twins)}")
    model_args = {} if hub.model_args is None else hub.model_args
    changed = sorted(set(model_args) - harmless_args) if isinstance(model_args, dict) else []
    if changed:
        raise ReslabError(f"timm's model_args {changed} change {architecture}'s network; "
                          f"reslab builds the plain {architecture} only")
    args = parse_fields(TimmModelArgs, model_args, "model_args")
    input_size = cfg.input_size if cfg.input_size is not None else [3, 224, 224]
    _check("pretrained_cfg.input_size", len(input_size) == 3 and min(input_size) >= 1,
           "must be [channels, height, width]", input_size)
    channels = args.in_chans if args.in_chans is not None else input_size[0]
    _check("model_args.in_chans", 1 <= channels <= MAX_CHANNELS, f"must be from 1 to {MAX_CHANNELS}", channels)
    size = list(input_size[1:])
    check_input_size(architecture, size)
    _check("pretrained_cfg.crop_pct", MIN_CROP_FRACTION <= cfg.crop_pct <= 1, f"must be from {MIN_CROP_FRACTION} to 1",
           cfg.crop_pct)
    center = cfg.crop_mode == "center"
    resize = math.floor(size[0] / cfg.crop_pct) if center else None
    return {"model": architecture, "model_options": {}, "in_channels": channels, "image_size": size,
            "task": "single-label", "dataset": None,
            "preprocess": {"image_size": size[0], "resize_size": resize, "center_crop": center,
                           "interpolation": cfg.interpolation, "antialias": True, "channels": channels,
                           "decoder": "pil", "exif": "transpose"}}


def _labels(labels, num_classes: int) -> list[str]:
    if labels is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(labels, dict):  # timm allows {index: name} when indices have gaps
        labels = [labels.get(str(i), labels.get(i, i)) for i in range(num_classes)]
    _check("label_names", isinstance(labels, list) and len(labels) == num_classes
           and all(isinstance(name, (str, int)) and not isinstance(name, bool) for name in labels),
           f"must be a list of {num_classes} class names (num_classes)", labels)
    return [str(name) for name in labels]


def _per_channel(values: list[float] | None, channels: int, key: str, low: float) -> list[float]:
    """One number per channel in [low, MAX_MEAN_STD]; timm keeps 3 ImageNet values for a
    1-channel net, and their mean serves its one channel."""
    _check(key, values is not None, "is missing: the normalization the model was trained with", values)
    if len(values) == 3 and channels == 1:
        values = [sum(values) / 3]
    _check(key, len(values) == channels and all(low <= value <= MAX_MEAN_STD for value in values),
           f"must be {channels} number(s) from {low:g} to {MAX_MEAN_STD:g}, one per input channel", values)
    return values
