"""The one training loop, for every model and dataset, CPU or GPU.

config -> data + model -> loop -> metrics -> run folder. Readable top to bottom: ``train``
sets up, ``_fit`` runs epochs, ``_finish`` evaluates the best-on-validation weights on
the test set once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..config import RunConfig, from_dict, validate
from ..data import DEFAULT_AUGMENT, DatasetSplits, DeviceLoader, load_splits
from ..data.loader import BatchAugment
from ..errors import ReslabError
from ..evaluate.metrics import classification_metrics, running_accuracy
from ..models import create_model
from ..models.summary import count_macs, count_parameters
from ..runfs import atomic_write_json, atomic_write_text, new_run_dir
from .checkpoint import epoch_checkpoints, load_checkpoint, prune, save_checkpoint
from .device import configure, resolve_device, rng_state, seed_everything, set_rng_state
from .optim import build_optimizer, build_scheduler, trainable_parameters

HISTORY_FIELDS = ["epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_error",
                  "val_macro_f1", "epoch_seconds", "images_per_second"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # what metrics.json holds
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- set-up


def resolve_augmentation(config: RunConfig) -> None:
    """Fill the augmentation fields left to the dataset (None) with its defaults."""
    for key, value in DEFAULT_AUGMENT[config.data.name].items():
        if getattr(config.augment, key) is None:
            setattr(config.augment, key, value)


def model_options(config: RunConfig) -> dict:
    """Model options that differ from the defaults; a family that lacks one refuses it by name."""
    return {"shortcut": config.model.shortcut} if config.model.shortcut != "A" else {}


def build_model(meta: dict) -> nn.Module:
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        **meta["model_options"])


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def environment(device: torch.device) -> dict:
    import numpy
    import sklearn
    import torchvision

    info = {
        "reslab": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "device": str(device), "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
    return info


def train(config: RunConfig, resume: Path | None = None, progress: bool = True) -> RunResult:
    """Train per ``config`` into a new run folder, or continue the run in ``resume``."""
    state = None
    if resume is not None:
        resume = Path(resume)
        if (resume / "metrics.json").is_file():
            return load_result(resume)
        state = _latest_checkpoint(resume)
        _check_same_run(state["meta"]["config"], config, resume)
    validate(config)
    resolve_augmentation(config)
    device = resolve_device(config.train.device)
    configure(device, config.train.deterministic, config.train.threads)
    seed_everything(config.train.seed)

    splits = load_splits(config.data)
    meta = {
        "model": config.model.name, "model_options": model_options(config),
        "num_classes": splits.num_classes, "in_channels": splits.in_channels, "classes": splits.classes,
        "image_size": list(splits.image_size), "mean": splits.mean, "std": splits.std,
        "dataset": config.data.name, "task": "single-label", "reslab_version": __version__,
        "config": config.to_dict(),
    }
    model = build_model(meta)
    if config.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)

    if resume is None:
        name = config.output.name or f"{config.model.name}-{config.data.name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = new_run_dir(Path(config.output.dir), name)
        config.save(run_dir / "config.yaml")
        atomic_write_json(run_dir / "environment.json", environment(device))
        atomic_write_json(run_dir / "dataset.json", splits.describe())
        (run_dir / "checkpoints").mkdir()
    else:
        run_dir = resume
    return _fit(config, splits, model, meta, device, run_dir, state, progress)


def _latest_checkpoint(run_dir: Path) -> dict:
    """The newest readable epoch checkpoint (a damaged newest one falls back to the one before)."""
    if not (run_dir / "config.yaml").is_file():
        raise ReslabError(f"{run_dir} is not a reslab run folder (no config.yaml)")
    problems = []
    for path in reversed(epoch_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except ReslabError as exc:
            problems.append(str(exc))
    if problems:
        raise ReslabError(f"no readable checkpoint in {run_dir}: {problems[0]}")
    raise ReslabError(f"{run_dir} has no epoch checkpoint to resume from; start the run again")


def _check_same_run(saved: dict, config: RunConfig, run_dir: Path) -> None:
    for section, key in (("model", "name"), ("data", "name"), ("train", "batch_size")):
        before, now = saved[section][key], getattr(getattr(config, section), key)
        if before != now:
            raise ReslabError(f"{run_dir} was trained with {section}.{key}={before}, not {now}; "
                              "resume it with its own config or start a new run")


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    from ..config import apply_overrides

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ReslabError(f"{run_dir} is not a reslab run folder (no config.yaml)")
    config = from_dict(yaml.safe_load(path.read_text()))
    return apply_overrides(config, overrides or [])


# ---------------------------------------------------------------- the loop


def _fit(config, splits: DatasetSplits, model, meta, device, run_dir: Path, state, progress: bool) -> RunResult:
    train_cfg = config.train
    augment = BatchAugment(config.augment.crop_padding, config.augment.hflip, config.augment.rotation,
                           config.augment.scale)
    mean, std = (splits.mean, splits.std) if config.augment.normalize else ([0.0] * len(splits.mean),
                                                                             [1.0] * len(splits.std))
    meta["mean"], meta["std"] = mean, std
    train_loader = DeviceLoader(splits.train, train_cfg.batch_size, device, mean, std, train=True, augment=augment,
                                seed=train_cfg.seed, channels_last=train_cfg.channels_last)
    if len(train_loader) == 0:
        raise ReslabError(f"train.batch_size {train_cfg.batch_size} is larger than the {len(splits.train)} "
                          "training images; lower it")
    val_loader = splits.val and DeviceLoader(splits.val, train_cfg.eval_batch_size, device, mean, std, train=False,
                                             channels_last=train_cfg.channels_last)

    steps_per_epoch = len(train_loader)
    total_steps = _total_steps(train_cfg, steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = build_optimizer(trainable_parameters(model), config.optim)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.precision == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)
    forward = torch.compile(model) if train_cfg.compile else model

    start_epoch, step, best, history = 0, 0, None, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, best, history = state["epoch"], state["step"], state["best"], state["history"]
        set_rng_state(state["rng"])

    bar = tqdm(total=total_steps, initial=step, unit="it", disable=not progress, dynamic_ncols=True,
               desc=f"{config.model.name}", mininterval=0.5 if sys.stderr.isatty() else 20,
               file=sys.stderr)
    log_every = 1 if device.type == "cpu" else 25  # a host sync per log on a GPU
    for epoch in range(start_epoch, epochs):
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        started = time.perf_counter()
        for images, targets in train_loader:
            if step >= total_steps:
                break
            with autocast(device, train_cfg.precision):
                logits = forward(images)
                loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            loss_sum += loss.detach() * len(targets)
            correct += running_accuracy(logits.detach(), targets)
            seen += len(targets)
            if step % log_every == 0 or seen == len(train_loader) * train_cfg.batch_size:
                _check_finite(loss, step, epoch, run_dir)
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}",
                                acc=f"{correct.item() / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2g}",
                                img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        _check_finite(loss_sum, step, epoch, run_dir)

        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
               "epoch_seconds": seconds, "images_per_second": seen / seconds}
        if val_loader is not None:
            val = classification_metrics(*predict(model, val_loader, device, train_cfg.precision), splits.classes)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_error=val["error"],
                       val_macro_f1=val["macro_f1"])
            score = (val["accuracy"], -val["loss"])
            is_best = best is None or score > tuple(best["score"])
        else:  # no validation split: the last epoch is the one kept
            score, is_best = (row["train_accuracy"], -row["train_loss"]), True
        history.append(row)
        if is_best:
            best = {"epoch": epoch + 1, "score": list(score)}
            save_checkpoint(run_dir / "checkpoints" / "best.pt",
                            {"model": model.state_dict(), "meta": meta, "epoch": epoch + 1})
        save_checkpoint(run_dir / "checkpoints" / f"epoch-{epoch + 1:04d}.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step, "best": best, "history": history,
            "rng": rng_state(), "meta": meta,
        })
        prune(run_dir, config.output.keep_last)
        _write_history(run_dir / "history.csv", history)
        if progress:
            val_text = f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if val_loader else ""
            bar.write(f"epoch {epoch + 1}/{epochs}  train loss {row['train_loss']:.4f} "
                      f"acc {row['train_accuracy']:.4f}{val_text}  {row['images_per_second']:.0f} img/s")
        if step >= total_steps:
            break
    bar.close()
    return _finish(config, splits, model, meta, device, run_dir, history, best)


def _total_steps(train_cfg, steps_per_epoch: int) -> int:
    limits = []
    if train_cfg.epochs is not None:
        limits.append(train_cfg.epochs * steps_per_epoch)
    if train_cfg.max_iters is not None:
        limits.append(train_cfg.max_iters)
    return min(limits)


def _check_finite(loss: torch.Tensor, step: int, epoch: int, run_dir: Path) -> None:
    if not torch.isfinite(loss).all():
        kept = epoch_checkpoints(run_dir)
        where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
        raise ReslabError(
            f"the training loss became {loss.float().sum().item()} at step {step} (epoch {epoch + 1}); {where}. "
            "Try a lower optim.lr, a warm-up (schedule.warmup=linear schedule.warmup_iters=500) or train.precision=fp32"
        )


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, precision: str = "fp32"):
    """All logits and targets of ``loader``, in order."""
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        with autocast(device, precision):
            outputs.append(model(images).float())
        targets.append(labels)
    return torch.cat(outputs).cpu(), torch.cat(targets).cpu()


def _write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- the end of a run


def _finish(config, splits, model, meta, device, run_dir: Path, history: list[dict], best: dict) -> RunResult:
    best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)
    model.load_state_dict(best_state["model"])
    test_loader = DeviceLoader(splits.test, config.train.eval_batch_size, device, meta["mean"], meta["std"],
                               train=False, channels_last=config.train.channels_last)
    test = classification_metrics(*predict(model, test_loader, device, config.train.precision), splits.classes)
    val = None
    if splits.val is not None:
        val_loader = DeviceLoader(splits.val, config.train.eval_batch_size, device, meta["mean"], meta["std"],
                                  train=False, channels_last=config.train.channels_last)
        val = classification_metrics(*predict(model, val_loader, device, config.train.precision), splits.classes)
    train_seconds = sum(row["epoch_seconds"] for row in history)
    images = sum(row["images_per_second"] * row["epoch_seconds"] for row in history)
    counts = count_parameters(model)
    input_shape = (splits.in_channels, *splits.image_size)
    metrics = {
        "model": config.model.name, "dataset": config.data.name, "seed": config.train.seed,
        "epochs": len(history), "steps": history[-1]["step"] if history else 0,
        "best_epoch": best["epoch"], "selected_on": "validation" if splits.val is not None else "last epoch",
        "parameters": counts["parameters"], "macs": count_macs(model, input_shape),
        "train_seconds": train_seconds, "images_per_second": images / max(train_seconds, 1e-9),
        "device": str(device), "precision": config.train.precision,
        "test": test, "val": val,
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    if config.output.plots:
        from ..report.plots import plot_confusion, plot_history

        plot_history(history, run_dir / "curves.png", title=f"{config.model.name} on {config.data.name}")
        plot_confusion(test["confusion_matrix"], splits.classes, run_dir / "confusion_matrix.png",
                       title=f"{config.model.name}: test confusion matrix")
    return RunResult(run_dir, metrics, history)


def load_result(run_dir: Path) -> RunResult:
    """A finished run's result, read back from its folder."""
    import json

    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    history = []
    history_path = Path(run_dir) / "history.csv"
    if history_path.is_file():
        with history_path.open() as handle:
            history = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                       for row in csv.DictReader(handle)]
    return RunResult(Path(run_dir), metrics, history)
