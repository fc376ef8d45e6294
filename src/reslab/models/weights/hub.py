"""Model folders in the layout of timm and the Hugging Face hub, both ways.

A folder holds ``model.safetensors`` (or timm's older ``pytorch_model.bin``) and a
``config.json`` as timm writes it (``timm.models.save_for_hf``)::

    {"architecture": "resnet50", "num_classes": 10, "num_features": 2048, "global_pool": "avg",
     "label_names": ["cat", ...], "model_args": {"in_chans": 1},          # only for 1-channel nets
     "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bilinear", "crop_pct": 0.875,
                        "crop_mode": "center", "mean": [...], "std": [...], "num_classes": 10, ...},
     "reslab": {"model": "resnet50", "model_options": {}, "in_channels": 3, "preprocess": {...}, ...}}

reslab's ImageNet ResNets use torchvision's key names, and so do timm's plain ResNets, so
``resnet18/34/50/101/152`` and ``resnext50_32x4d`` (stride in the 3x3, timm's and
torchvision's "v1.5") are the same networks in both: for them ``architecture`` is timm's
name and timm loads the folder (``timm.create_model("local-dir:DIR", pretrained=True)``).
The other reslab nets (CIFAR, pre-activation, Keras-style V2, wide, report 000's) have no
timm twin; ``architecture`` then names the reslab model, and only reslab reads the folder.
The ``reslab`` section lets reslab rebuild any of its models exactly; a folder written by
timm (no such section) is read when its architecture is one of the twins.

``hf-hub:org/name`` (optionally ``@revision``) names a folder on the Hugging Face hub,
fetched with ``huggingface_hub`` into its usual cache (an optional dependency).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ...checkpoint import meta_problem
from ...errors import ReslabError
from ...extras import missing_extra
from ...torchfiles import first_line
from ..registry import model_from_meta
from .files import load_state_dict_flexible, read_weights_file
from .hub_schema import hub_meta_from_config

HF_PREFIX = "hf-hub:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_FILES = (WEIGHTS_FILE, "pytorch_model.bin")  # preferred first, as timm looks for them
# reslab models that are timm's model of the same name: same layers, same state_dict keys.
TIMM_TWINS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d")
# timm model_args that leave the network reslab builds as it is (others, output_stride say, change it).
TIMM_HARMLESS_ARGS = {"in_chans", "num_classes", "global_pool", "drop_rate", "drop_path_rate", "zero_init_last"}
# What the "reslab" section of config.json keeps of a checkpoint's meta, beside the shared fields
# (num_classes, label_names, mean and std in pretrained_cfg); "temperature" is reslab calibrate's,
# so that predict gives the same probabilities from the folder as from the run.
RESLAB_KEYS = ("model", "model_options", "in_channels", "image_size", "task", "threshold", "dataset",
               "preprocess", "temperature", "reslab_version")
MAX_CONFIG_BYTES = 16 * 2**20  # timm's configs are a few KB; ImageNet-21k label names a few MB


# ---------------------------------------------------------------- writing


def timm_architecture(meta: dict) -> str | None:
    """timm's name for the checkpoint's network, or None when timm has no twin of it."""
    if meta["model"] in TIMM_TWINS and not meta.get("model_options"):
        return meta["model"]
    return None


def crop_fraction(image_size: int, resize_size: int) -> float:
    """timm's ``crop_pct`` for "resize the shorter side to resize_size, centre-crop image_size":
    timm resizes to floor(image_size / crop_pct), so the fraction is nudged down until that
    gives resize_size back exactly (37 / 32 is not exact in binary)."""
    fraction = image_size / resize_size
    while math.floor(image_size / fraction) < resize_size:
        fraction = math.nextafter(fraction, 0.0)
    return fraction


def hub_config(meta: dict, num_features: int) -> dict:
    """The ``config.json`` of a checkpoint's hub folder."""
    timm_name = timm_architecture(meta)
    channels, (height, width) = meta["in_channels"], meta["image_size"]
    preprocess = meta.get("preprocess") or {}
    center_crop = bool(preprocess.get("center_crop")) and bool(preprocess.get("resize_size"))
    pretrained_cfg = {
        "input_size": [channels, height, width],
        "interpolation": preprocess.get("interpolation", "bilinear"),
        "crop_pct": crop_fraction(height, preprocess["resize_size"]) if center_crop else 1.0,
        "crop_mode": "center" if center_crop else "squash",
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "num_classes": meta["num_classes"],
        "first_conv": "conv1",
        "classifier": "fc",
    }
    if timm_name is not None:
        pretrained_cfg["fixed_input_size"] = False  # global average pooling takes any size
    config = {
        "architecture": timm_name or meta["model"],
        "num_classes": meta["num_classes"],
        "num_features": num_features,
        "global_pool": "avg",
        "label_names": list(meta["classes"]),
    }
    if timm_name is not None and channels != 3:
        config["model_args"] = {"in_chans": channels}  # timm builds its stem for these channels
    config["pretrained_cfg"] = pretrained_cfg
    config["reslab"] = {key: meta.get(key) for key in RESLAB_KEYS} | {"timm": timm_name}
    return config


def timm_note(meta: dict, folder: Path) -> str:
    """How timm reads the folder, or why it cannot."""
    name = timm_architecture(meta)
    if name is not None:
        return f"timm loads it: timm.create_model('local-dir:{folder}', pretrained=True) builds its {name}"
    options = "".join(f" {key}={value}" for key, value in (meta.get("model_options") or {}).items())
    return (f"timm has no twin of reslab's {meta['model']}{options}, so timm cannot load {folder}; reslab can "
            f"(reslab predict {folder} IMAGES, model.pretrained={folder})")


# ---------------------------------------------------------------- reading


def is_hub_source(source) -> bool:
    """Whether ``source`` is an ``hf-hub:`` name or a folder with a config.json (a run folder has
    a config.yaml instead)."""
    text = str(source)
    if text.startswith(HF_PREFIX):
        return True
    folder = Path(text)
    return folder.is_dir() and (folder / CONFIG_FILE).is_file() and not (folder / "config.yaml").is_file()


def resolve_hub_folder(source) -> Path:
    """The local folder of ``source``: itself, or the hub repository downloaded into the cache."""
    text = str(source)
    if text.startswith(HF_PREFIX):
        return _download(text[len(HF_PREFIX):])
    folder = Path(text)
    if not folder.is_dir():
        raise ReslabError(f"no model folder at {folder}: check the path")
    if not (folder / CONFIG_FILE).is_file():
        raise ReslabError(f"{folder} has no {CONFIG_FILE}: not a model folder in the hub layout")
    return folder


def _download(name: str) -> Path:
    repo_id, _, revision = name.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise missing_extra(f"{HF_PREFIX}{name}", "hub") from None
    try:
        # The config and one weights file, not every format the repository offers.
        for weights in WEIGHTS_FILES:
            folder = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=[CONFIG_FILE, weights]))
            if (folder / weights).is_file():
                return folder
    except Exception as exc:  # offline, no such repository, a gated one, a bad name: all one line
        raise ReslabError(
            f"cannot download {HF_PREFIX}{name} from the Hugging Face hub ({type(exc).__name__}: {first_line(exc)}); "
            f"on a machine with network access run `hf download {repo_id} --local-dir DIR` and pass DIR instead"
        ) from None
    raise ReslabError(f"{HF_PREFIX}{name} holds no {' or '.join(WEIGHTS_FILES)}")


def read_hub_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ReslabError(f"{path} is over {MAX_CONFIG_BYTES >> 20} MB: not a model config")
    try:
        config = json.loads(path.read_text(encoding="utf8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReslabError(f"{path} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise ReslabError(f"{path} holds a {type(config).__name__}, not a model config")
    return config


def hub_meta(config: dict, where: str = CONFIG_FILE) -> dict:
    """A checkpoint's ``meta`` from a hub ``config.json`` (reslab's own, or timm's for a twin),
    checked against the schema of ``hub_schema`` before anything is read or built."""
    try:
        meta = hub_meta_from_config(config, TIMM_TWINS, TIMM_HARMLESS_ARGS)
    except ReslabError as exc:
        raise ReslabError(f"{where}: {exc}") from None
    problem = meta_problem(meta)
    if problem:
        raise ReslabError(f"{where} does not describe a usable model: {problem}")
    return meta


def _weights_file(folder: Path) -> Path:
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ReslabError(f"{folder} has no weights file ({' or '.join(WEIGHTS_FILES)})")


def read_hub_folder(source) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of a hub folder or ``hf-hub:`` name; the weights are read without
    running code (safetensors, or ``torch.load(weights_only=True)`` for a .bin)."""
    folder = resolve_hub_folder(source)
    meta = hub_meta(read_hub_config(folder), str(folder / CONFIG_FILE))
    return read_weights_file(_weights_file(folder)), meta


def load_hub_model(source) -> tuple[nn.Module, dict]:
    """The network a hub folder describes, with its weights (every key must fit), and its meta."""
    state_dict, meta = read_hub_folder(source)
    model = model_from_meta(meta)
    load_state_dict_flexible(model, state_dict, source=f"the weights of {source}")
    return model, meta


def load_hub_weights(model: nn.Module, source) -> list[str]:
    """``model.pretrained=DIR``: a hub folder's weights into ``model``; a head of another size is skipped."""
    state_dict, meta = read_hub_folder(source)
    return load_state_dict_flexible(model, state_dict, source=f"the weights of {source} ({meta['model']})",
                                    skip_mismatched_head=True)


def hub_normalization(source) -> tuple[list[float], list[float]]:
    """The mean and std a hub folder's model was trained with."""
    folder = resolve_hub_folder(source)
    meta = hub_meta(read_hub_config(folder), str(folder / CONFIG_FILE))
    return meta["mean"], meta["std"]


def create_timm_model(source):
    """The folder's network built and loaded by timm; a clear error when timm has no twin of it."""
    folder = resolve_hub_folder(source)
    meta = hub_meta(read_hub_config(folder), str(folder / CONFIG_FILE))
    if timm_architecture(meta) is None:
        raise ReslabError(timm_note(meta, folder))
    try:
        import timm
    except ImportError:
        raise missing_extra("loading into timm", "timm") from None
    return timm.create_model(f"local-dir:{folder}", pretrained=True)
