"""What a run is built from, before its first step: the data (normalized as the pretrained
weights expect), the model (with those weights, gradient checkpointing, global batch norm,
the memory format), the optimizer over its parameter groups and the schedule."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
from torch import nn

from .. import __version__, distributed
from ..checkpoint import load_checkpoint
from ..config import Normalization, RunConfig
from ..data import DataBundle, build_data
from ..errors import ReslabError
from ..models import create_model
from ..models.base import StagedModel
from ..models.registry import max_input_side
from ..models.transfer import parameter_groups
from .optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


def model_options(config: RunConfig) -> dict:
    """Model options that differ from the defaults; a family that lacks one refuses it by name."""
    defaults = {"shortcut": "A", "stride_in": "3x3"}
    return {key: getattr(config.model, key) for key, default in defaults.items()
            if getattr(config.model, key) != default}


# Keras files: legacy .h5 (weights or whole model), Keras 3 .weights.h5 and .keras archives.
KERAS_SUFFIXES = (".h5", ".keras")


def load_pretrained(model: nn.Module, source: str) -> list[str]:
    """Weights from a Keras file, a hub folder or ``hf-hub:`` name (timm's layout), a
    torchvision file or name, or a reslab/other PyTorch checkpoint."""
    from ..models.weights import load_keras_weights, load_torchvision_weights
    from ..models.weights.hub import is_hub_source, load_hub_weights

    if source.endswith(KERAS_SUFFIXES):
        return load_keras_weights(model, source)
    if is_hub_source(source):
        return load_hub_weights(model, source)
    return load_torchvision_weights(model, source)


def pretrained_normalization(config: RunConfig) -> tuple[Normalization, tuple[list[float], list[float]] | None]:
    """The normalization ``data.normalization=auto`` means: what the pretrained weights
    expect (Keras files: [-1, 1] for the V2 nets, Keras's ``caffe`` means for V1; a reslab
    checkpoint or a hub folder: its own statistics; other PyTorch weights: ImageNet's), or
    without weights the dataset's own."""
    from ..models.weights.hub import hub_normalization, is_hub_source
    from ..models.weights.keras_weights import keras_preprocessing

    kind, source = config.data.normalization, config.model.pretrained
    if kind != "auto" or not source:
        return kind, None
    if source.endswith(KERAS_SUFFIXES):
        return keras_preprocessing(config.model.name), None
    if is_hub_source(source):
        return "dataset", hub_normalization(source)
    if Path(source).exists():
        try:
            meta = load_checkpoint(Path(source))["meta"]
            return "dataset", (meta["mean"], meta["std"])
        except ReslabError:  # weights only (torchvision and most other files)
            pass
    return "imagenet", None


def check_image_size(config: RunConfig) -> None:
    """Refuse ``data.image_size`` over the largest side the model's family takes, before any
    image is resized to it (ResNet-8 at 4096 pixels needs a 64 GB first convolution)."""
    size = config.data.image_size
    if size is not None:
        largest = max_input_side(config.model.name)
        if size > largest:
            raise ReslabError(f"config key 'data.image_size' is {size}, over the {largest} pixels a side that "
                              f"{config.model.name} takes; give data.image_size={largest} or less")


def build_run_data(config: RunConfig, device: torch.device, env: distributed.DistEnv) -> DataBundle:
    check_image_size(config)
    kind, mean_std = pretrained_normalization(config)
    data_config = copy.copy(config.data)
    data_config.normalization = kind
    bundle = build_data(data_config, config.augment, device=device, batch_size=config.train.batch_size,
                        eval_batch_size=config.train.eval_batch_size, seed=config.train.seed, rank=env.rank,
                        world_size=env.world_size, channels_last=config.train.channels_last, mean_std=mean_std)
    if len(bundle.train) == 0 and not config.train.sized_to_data:  # size_to_data caps the batch
        raise ReslabError(f"train.batch_size {config.train.batch_size} is larger than the "
                          f"{bundle.description['sizes']['train']} training images; lower it")
    return bundle


def build_run_model(config: RunConfig, bundle: DataBundle, device: torch.device,
                    env: distributed.DistEnv) -> tuple[nn.Module, dict]:
    """The model on ``device`` and the ``meta`` every checkpoint of the run carries."""
    model: nn.Module = create_model(config.model.name, num_classes=bundle.num_classes,
                                    in_channels=bundle.in_channels, **model_options(config))
    notes = load_pretrained(model, config.model.pretrained) if config.model.pretrained else []
    if env.is_main:
        for note in notes:
            logger.info("%s: %s", config.model.pretrained, note)
    meta = {
        "model": config.model.name, "model_options": model_options(config),
        "num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "classes": bundle.classes,
        "image_size": bundle.image_size, "mean": bundle.mean, "std": bundle.std,
        "dataset": config.data.name, "task": bundle.task, "threshold": config.train.threshold,
        "preprocess": bundle.preprocess,
        "reslab_version": __version__, "config": config.to_dict(),
    }
    if config.model.grad_checkpointing:
        if not isinstance(model, StagedModel):
            raise ReslabError(f"{config.model.name} has no per-block checkpointing; set model.grad_checkpointing=false")
        model.set_grad_checkpointing(True)
    if config.train.sync_bn and env.enabled:
        model = distributed.convert_sync_batchnorm(model, device)
    model.to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, meta


def build_optimization(config: RunConfig, model: nn.Module, device: torch.device, steps_per_epoch: int):
    """(optimizer, scheduler, total steps). Rates are for the global batch; with
    ``optim.lr_reference_batch`` both the head's and the backbone's scale with it (the
    linear scaling rule, Goyal et al. 2017)."""
    optim_cfg = copy.deepcopy(config.optim)
    scale = config.train.batch_size / optim_cfg.lr_reference_batch if optim_cfg.lr_reference_batch else 1.0
    optim_cfg.lr *= scale
    backbone_lr = optim_cfg.backbone_lr * scale if optim_cfg.backbone_lr is not None else optim_cfg.lr
    groups = parameter_groups(model, backbone_lr, optim_cfg.lr, optim_cfg.weight_decay,
                              decay_norm_and_bias=optim_cfg.decay_norm_and_bias, include_frozen=True)
    optimizer = build_optimizer(groups, optim_cfg, fused=device.type == "cuda")
    total = total_steps(config, steps_per_epoch)
    return optimizer, build_scheduler(optimizer, config.schedule, steps_per_epoch, total), total


# A run whose config leaves its length empty (train.epochs and train.max_iters, as the
# scratch and finetune recipes do) is sized to its training split: enough epochs for the net
# to see about SIZED_IMAGES images (measured: ResNet-20 on 2,250 Fashion-MNIST PNGs, 14
# epochs, 81.8% test accuracy in 70 s on two CPU cores; README "Your own images"), at least
# 10 and at most 100, and a batch no larger than a tenth of the split, so that an epoch has
# ten steps or more.
SIZED_IMAGES = 30_000
SIZED_EPOCHS = (10, 100)


def size_to_data(config: RunConfig, train_images: int, env: distributed.DistEnv) -> bool:
    """Fill in the length of a run sized to its data (above), with a linear warm-up of one
    epoch where the schedule warms up; True when the batch was capped (the loaders must be
    made again)."""
    if not config.train.sized_to_data:
        return False
    train = config.train
    largest = 2 ** int(math.log2(max(train_images // 10, 8)))
    shares = env.world_size * train.accumulate  # the batch must still split evenly among them
    capped = train.batch_size > largest and largest % shares == 0
    if capped:
        train.batch_size = largest
    train.epochs = min(max(math.ceil(SIZED_IMAGES / train_images), SIZED_EPOCHS[0]), SIZED_EPOCHS[1])
    if config.schedule.warmup != "none" and config.schedule.warmup_iters == 0:
        config.schedule.warmup_iters = math.ceil(train_images / train.batch_size)
    if env.is_main:
        logger.info("sized to %s training images: %d epoch%s, batch %d%s%s", f"{train_images:,}", train.epochs,
                    "s" if train.epochs != 1 else "", train.batch_size, " (capped)" if capped else "",
                    f", {config.schedule.warmup_iters} warm-up steps" if config.schedule.warmup != "none" else "")
    return capped


def total_steps(config: RunConfig, steps_per_epoch: int) -> int:
    """The run's length: ``train.epochs`` or ``train.max_iters``, whichever comes first."""
    limits = []
    if config.train.epochs is not None:
        limits.append(config.train.epochs * steps_per_epoch)
    if config.train.max_iters is not None:
        limits.append(config.train.max_iters)
    return min(limits)


def epochs_of(total: int, steps_per_epoch: int) -> int:
    return math.ceil(total / steps_per_epoch)


def warn_about_schedule(config: RunConfig, steps_per_epoch: int) -> None:
    schedule = config.schedule
    if schedule.name != "multistep" or not schedule.milestones:
        return
    total = total_steps(config, steps_per_epoch)
    first = schedule.milestones[0] * (steps_per_epoch if schedule.unit == "epoch" else 1)
    if first >= total:
        logger.warning("note: the first learning-rate milestone (%s %ss) lies beyond this run's %s steps, so the "
                       "rate stays %s; set schedule.milestones or schedule.name=cosine",
                       schedule.milestones[0], schedule.unit, total, config.optim.lr)
