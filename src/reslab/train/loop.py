"""The one training loop, for every model and dataset, CPU or GPU.

config -> data + model -> loop -> metrics -> run folder. Readable top to bottom: ``train``
sets up, ``_fit`` runs epochs, ``_finish`` evaluates the best-on-validation weights on
the test set once.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import __version__
from ..config import RunConfig, from_dict, validate
from ..data import DataBundle, build_data
from ..data.files import write_bad_files
from ..data.sources import augment_defaults
from ..errors import Interrupted, ReslabError
from ..evaluate.metrics import classification_metrics, running_accuracy
from ..evaluate.multilabel import multilabel_metrics, running_subset_correct
from .losses import AsymmetricLoss
from ..models import create_model
from ..models.summary import count_macs, count_parameters
from ..models.transfer import freeze, parameter_groups
from ..runfs import atomic_write_json, atomic_write_text, new_run_dir
from . import distributed
from .checkpoint import epoch_checkpoints, load_checkpoint, prune, save_checkpoint
from .ema import ModelEma
from .device import configure, resolve_device, rng_state, seed_everything, set_rng_state
from .optim import build_optimizer, build_scheduler

# val_* are the live weights' figures; ema_val_* the averaged weights' (runs with train.ema).
VAL_FIGURES = ["loss", "accuracy", "error", "macro_f1", "map"]
HISTORY_FIELDS = ["epoch", "step", "lr", "train_loss", "train_accuracy", *(f"val_{k}" for k in VAL_FIGURES),
                  *(f"ema_val_{k}" for k in VAL_FIGURES), "epoch_seconds", "images_per_second"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # what metrics.json holds
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- set-up


def resolve_augmentation(config: RunConfig) -> None:
    """Fill the augmentation fields left to the dataset (None) with its defaults."""
    for key, value in augment_defaults(config.data.name).items():
        if getattr(config.augment, key) is None:
            setattr(config.augment, key, value)


def model_options(config: RunConfig) -> dict:
    """Model options that differ from the defaults; a family that lacks one refuses it by name."""
    defaults = {"shortcut": "A", "stride_in": "3x3"}
    return {key: getattr(config.model, key) for key, default in defaults.items()
            if getattr(config.model, key) != default}


def load_pretrained(model: nn.Module, source: str) -> list[str]:
    """Weights from a Keras .h5 file, a torchvision file or name, or a reslab/other PyTorch checkpoint."""
    from ..models.weights import load_keras_weights, load_torchvision_weights

    if source.endswith(".h5"):
        return load_keras_weights(model, source)
    return load_torchvision_weights(model, source)


def pretrained_normalization(config: RunConfig) -> tuple[str, tuple[list[float], list[float]] | None]:
    """The normalisation ``data.normalization=auto`` means: what the pretrained weights
    expect (Keras ResNet V2 .h5: [-1, 1]; a reslab checkpoint: its own statistics; other
    PyTorch weights: ImageNet's), or without weights the dataset's own."""
    kind, source = config.data.normalization, config.model.pretrained
    if kind != "auto" or not source:
        return kind, None
    if source.endswith(".h5"):
        return "inception", None
    if Path(source).exists():
        try:
            meta = load_checkpoint(Path(source))["meta"]
            return "dataset", (meta["mean"], meta["std"])
        except ReslabError:  # weights only (torchvision and most other files)
            pass
    return "imagenet", None


def build_model(meta: dict) -> nn.Module:
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        **meta["model_options"])


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device computes it natively, fp16 on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def environment(device: torch.device, env) -> dict:
    import numpy
    import sklearn
    import torchvision

    info = {
        "reslab": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "device": str(device), "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "processes": env.world_size,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
    return info


class StopRequest:
    """Turns SIGTERM/SIGINT (preemption, Ctrl-C) into a flag read at the next step."""

    def __init__(self):
        self.signal_number: int | None = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, _frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_number = number

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


def train(config: RunConfig, resume: Path | None = None, progress: bool = True) -> RunResult:
    """Train per ``config`` into a new run folder, or continue the run in ``resume``.

    A run folder named by ``output.name`` that exists, is unfinished and was started with
    this very config is continued automatically.
    """
    validate(config)
    resolve_augmentation(config)
    device = resolve_device(config.train.device)
    config.train.precision = resolve_precision(config.train.precision, device)
    if resume is None:
        resume = _unfinished_twin(config)
    if config.train.precision == "fp16" and device.type == "cpu":
        raise ReslabError("train.precision=fp16 needs a GPU; use bf16 (or auto) on the CPU")
    state = None
    if resume is not None:
        resume = Path(resume)
        _check_same_run(resume, config)
        if (resume / "metrics.json").is_file():
            return load_result(resume)
        state = _latest_checkpoint(resume)
    env, device = distributed.setup(device)
    try:
        distributed.check_batch(config.train.batch_size, env)
        configure(device, config.train.deterministic, config.train.threads)
        seed_everything(config.train.seed)

        kind, mean_std = pretrained_normalization(config)
        data_config = copy.copy(config.data)
        data_config.normalization = kind
        bundle = build_data(data_config, config.augment, device=device, batch_size=config.train.batch_size,
                            eval_batch_size=config.train.eval_batch_size, seed=config.train.seed, rank=env.rank,
                            world_size=env.world_size, channels_last=config.train.channels_last, mean_std=mean_std)
        model = create_model(config.model.name, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                             **model_options(config))
        notes = load_pretrained(model, config.model.pretrained) if config.model.pretrained else []
        meta = {
            "model": config.model.name, "model_options": model_options(config),
            "num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "classes": bundle.classes,
            "image_size": bundle.image_size, "mean": bundle.mean, "std": bundle.std,
            "dataset": config.data.name, "task": bundle.task, "threshold": config.train.threshold,
            "reslab_version": __version__, "config": config.to_dict(),
        }
        if env.is_main:
            for note in notes:
                print(f"reslab: {config.model.pretrained}: {note}", file=sys.stderr)
        if config.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if config.train.sync_bn and env.enabled:
            model = distributed.convert_sync_batchnorm(model, device)
        model.to(device)
        if config.train.channels_last:
            model.to(memory_format=torch.channels_last)

        if len(bundle.train) == 0:
            raise ReslabError(f"train.batch_size {config.train.batch_size} is larger than the "
                              f"{bundle.description['sizes']['train']} training images; lower it")
        _warn_about_schedule(config, len(bundle.train), env)
        run_dir = resume
        if resume is None:
            name = config.output.name or f"{config.model.name}-{config.data.name}-{datetime.now():%Y%m%d-%H%M%S}"
            run_dir = Path(config.output.dir) / distributed.broadcast(name, env)
            if env.is_main:
                new_run_dir(Path(config.output.dir), run_dir.name)
                (run_dir / "checkpoints").mkdir()
                config.save(run_dir / "config.yaml")
                atomic_write_json(run_dir / "environment.json", environment(device, env))
                atomic_write_json(run_dir / "dataset.json", bundle.description)
            distributed.barrier(env)
        elif env.is_main:
            (run_dir / "checkpoints").mkdir(exist_ok=True)  # a run stopped before its first checkpoint
        with StopRequest() as stop:
            task, history, best = _fit(config, bundle, model, meta, device, env, run_dir, state, stop, progress)
        # Signals are PyTorch's again here: a Ctrl-C during the final evaluation stops at once.
        return _finish(config, bundle, task, model, meta, device, env, run_dir, history, best)
    finally:
        if "bundle" in locals():
            for loader in bundle.loaders():
                getattr(loader, "close", lambda: None)()  # worker processes of file loaders
        distributed.teardown(env)


def _unfinished_twin(config: RunConfig) -> Path | None:
    if config.output.name is None:
        return None
    folder = Path(config.output.dir) / config.output.name
    saved = folder / "config.yaml"
    if not saved.is_file() or (folder / "metrics.json").is_file():
        return None
    try:
        if read_run_yaml(folder) != config.to_dict():
            return None  # new_run_dir refuses it, naming --resume
    except ReslabError:
        return None
    print(f"reslab: continuing the unfinished run in {folder}", file=sys.stderr)
    return folder


def _latest_checkpoint(run_dir: Path) -> dict | None:
    """The newest readable checkpoint: last.pt, else the newest epoch checkpoint that loads.
    None when the run was stopped before its first checkpoint (it starts again)."""
    if not (run_dir / "config.yaml").is_file():
        raise ReslabError(f"{run_dir} is not a reslab run folder (no config.yaml)")
    candidates = [run_dir / "checkpoints" / "last.pt", *reversed(epoch_checkpoints(run_dir))]
    problems = []
    for path in candidates:
        if path.is_file():
            try:
                return load_checkpoint(path)
            except ReslabError as exc:
                problems.append(str(exc))
    if problems:
        raise ReslabError(f"no readable checkpoint in {run_dir}: {problems[0]}")
    return None


# What may change when a run is continued: how long it trains and where, not what it learns from.
RESUMABLE_CHANGES = {"train.epochs", "train.max_iters", "train.device", "train.threads", "train.eval_batch_size",
                     "output.plots", "output.keep_last", "output.dir", "output.name"}


def _check_same_run(run_dir: Path, config: RunConfig) -> None:
    """Refuse to continue ``run_dir`` with another model, data, split or recipe; allowed changes
    (a longer run, another device) are written into its config.yaml."""
    saved = _flatten(read_run_yaml(run_dir))
    changed = [key for key, value in _flatten(config.to_dict()).items() if saved.get(key, value) != value]
    if not changed:
        return
    if (run_dir / "metrics.json").is_file():
        raise ReslabError(f"{run_dir} is a finished run; {changed[0]} cannot change now: start a new run")
    forbidden = [key for key in changed if key not in RESUMABLE_CHANGES]
    if forbidden:
        key = forbidden[0]
        raise ReslabError(f"{run_dir} was trained with {key}={saved[key]}, not {_flatten(config.to_dict())[key]}; "
                          f"a resumed run may only change {', '.join(sorted(RESUMABLE_CHANGES))}")
    config.save(run_dir / "config.yaml")


def _flatten(nested: dict) -> dict:
    return {f"{section}.{key}": value for section, values in nested.items() for key, value in values.items()}


def read_run_yaml(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ReslabError(f"{run_dir} is not a reslab run folder (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ReslabError(f"{path} is not readable YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ReslabError(f"{path} is not a reslab run config")
    return data


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    from ..config import apply_overrides

    return apply_overrides(from_dict(read_run_yaml(run_dir)), overrides or [])


# ---------------------------------------------------------------- the loop


@dataclass
class EpochTally:
    """Running sums of one epoch's training batches (kept on the device: no sync per step)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> "EpochTally":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.item(), "correct": self.correct.item(), "seen": self.seen,
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "EpochTally":
        return cls(torch.tensor(state["loss_sum"], device=device),
                   torch.tensor(state["correct"], device=device, dtype=torch.long), state["seen"], state["seconds"])


class Task:
    """What differs between single-label (softmax, cross-entropy, accuracy) and multi-label
    (sigmoids, BCE or ASL, mAP) runs: the loss, the running count of correct images, the
    metrics and the score the best checkpoint is chosen by."""

    def __init__(self, config: RunConfig, kind: str, classes: list[str]):
        self.multi_label = kind == "multi-label"
        self.classes = classes
        self.threshold = config.train.threshold
        loss = config.train.loss if config.train.loss != "auto" else ("bce" if self.multi_label else "cross_entropy")
        if self.multi_label and loss == "cross_entropy":
            raise ReslabError("train.loss=cross_entropy cannot train multi-label targets; use bce or asymmetric")
        if not self.multi_label and loss != "cross_entropy":
            raise ReslabError(f"train.loss={loss} is for multi-label data (coco); use cross_entropy")
        self.criterion = {"cross_entropy": lambda: nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing),
                          "bce": nn.BCEWithLogitsLoss, "asymmetric": AsymmetricLoss}[loss]()

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return running_subset_correct(logits, targets.round() if targets.is_floating_point() else targets,
                                          self.threshold)
        if targets.ndim == 2:  # mixup / cutmix: soft targets, the larger share counts
            targets = targets.argmax(1)
        return running_accuracy(logits, targets)

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict:
        if self.multi_label:
            metrics = multilabel_metrics(logits, targets, self.classes, threshold=self.threshold)
            # The names single-label tables use: accuracy is exact-match (subset) accuracy,
            # macro precision / recall are CP / CR (means over classes).
            metrics.update(accuracy=metrics["subset_accuracy"], error=1 - metrics["subset_accuracy"],
                           macro_precision=metrics["cp"], macro_recall=metrics["cr"])
            return metrics
        return classification_metrics(logits, targets, self.classes)

    def score(self, metrics: dict) -> tuple[float, float]:
        """Higher is better: (mAP or accuracy, -loss)."""
        return (metrics["map"] if self.multi_label else metrics["accuracy"], -metrics["loss"])


def _fit(config, bundle: DataBundle, model, meta, device, env, run_dir: Path, state, stop: StopRequest,
         progress: bool) -> tuple[Task, list[dict], dict]:
    """The epochs: train, validate, checkpoint. Returns the task, the history and the best epoch."""
    train_cfg = config.train
    task = Task(config, bundle.task, bundle.classes)
    train_loader, val_loader = bundle.train, bundle.val

    steps_per_epoch = len(train_loader)
    total_steps = _total_steps(train_cfg, steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optim_cfg = copy.deepcopy(config.optim)
    if optim_cfg.lr_reference_batch:
        optim_cfg.lr *= train_cfg.batch_size / optim_cfg.lr_reference_batch
    head_lr = optim_cfg.lr
    backbone_lr = optim_cfg.backbone_lr if optim_cfg.backbone_lr is not None else head_lr
    groups = parameter_groups(model, backbone_lr, head_lr, optim_cfg.weight_decay, decay_norm_and_bias=True,
                              include_frozen=True)
    optimizer = build_optimizer(groups, optim_cfg, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.precision == "fp16")
    criterion = task.criterion

    def wrap(model):
        network = model
        if env.enabled:  # built for the parameters that train now: rebuilt when more are unfrozen
            network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(network) if train_cfg.compile else network

    freeze_mode = None
    ema = ModelEma(model, train_cfg.ema) if train_cfg.ema else None

    start_epoch, start_batch, step, best, history = 0, 0, 0, None, []
    tally = EpochTally.zero(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        best, history = state["best"], state["history"]
        if state["tally"] is not None:
            tally = EpochTally.from_state(state["tally"], device)
        set_rng_state(state["rng"])

    def checkpoint(epoch: int, batch: int, tally: EpochTally | None) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "epoch": epoch, "batch": batch,
                "step": step, "best": best, "history": history, "tally": tally and tally.state(),
                "rng": rng_state(), "meta": meta}

    show = progress and env.is_main
    bar = tqdm(total=total_steps, initial=step, unit="it", disable=not show, dynamic_ncols=True,
               desc=config.model.name, mininterval=0.5 if sys.stderr.isatty() else 20, file=sys.stderr)
    log_every = 1 if device.type == "cpu" else 25  # each log is a host sync on a GPU
    for epoch in range(start_epoch, epochs):
        unfrozen = config.model.unfreeze_epoch is not None and epoch + 1 >= config.model.unfreeze_epoch
        mode = "none" if unfrozen else config.model.freeze
        if mode != freeze_mode:
            freeze(model, mode)
            forward, freeze_mode = wrap(model), mode
        train_loader.set_epoch(epoch)
        model.train()
        first_batch = start_batch if epoch == start_epoch else 0
        if first_batch == 0:
            tally = EpochTally.zero(device)
        started = time.perf_counter() - tally.seconds
        for batch, (images, targets) in enumerate(train_loader.iterate(first_batch), start=first_batch):
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
            if ema is not None:
                ema.update(model)
            step += 1
            tally.loss_sum += loss.detach() * len(targets)
            tally.correct += task.correct(logits.detach(), targets)
            tally.seen += len(targets)
            if step % log_every == 0:
                _check_finite(loss, step, epoch, run_dir)
                rate = tally.seen * env.world_size / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}",
                                acc=f"{tally.correct.item() / tally.seen:.3f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2g}", img_s=f"{rate:.0f}", refresh=False)
                if distributed.any_rank(stop.signal_number is not None, env, device):
                    tally.seconds = time.perf_counter() - started
                    _save_last(run_dir, checkpoint(epoch, batch + 1, tally), env)
                    bar.close()
                    raise _interrupted(stop, step, epoch, run_dir)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tally.seconds = time.perf_counter() - started
        _check_finite(tally.loss_sum, step, epoch, run_dir)

        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               **_train_figures(tally, env), "epoch_seconds": tally.seconds}
        row["images_per_second"] = tally.seen * env.world_size / tally.seconds
        if ema is not None:
            ema.recompute_batchnorm(train_loader, train_cfg.ema_bn_batches, env)
        candidates = {"live": model, **({"ema": ema.module} if ema is not None else {})}
        if val_loader is not None:
            scores = {}
            for weights, network in candidates.items():
                val = task.metrics(*predict(network, val_loader, device, train_cfg.precision, env,
                                            flip=train_cfg.tta))
                prefix = "val_" if weights == "live" else "ema_val_"
                row.update({prefix + key: val.get(key) for key in VAL_FIGURES})
                scores[weights] = task.score(val)
            weights = max(scores, key=scores.get)  # the live weights on a tie
            score = scores[weights]
            is_best = best is None or score > tuple(best["score"])
        else:  # no validation split: the last epoch is the one kept, averaged weights if any
            weights = "ema" if ema is not None else "live"
            score, is_best = (row["train_accuracy"], -row["train_loss"]), True
        history.append(row)
        if is_best:
            best = {"epoch": epoch + 1, "score": list(score), "weights": weights}
        if env.is_main:
            if is_best:
                _save(run_dir / "checkpoints" / "best.pt", {"model": candidates[weights].state_dict(), "meta": meta,
                                                            "epoch": epoch + 1, "weights": weights})
            epoch_path = run_dir / "checkpoints" / f"epoch-{epoch + 1:04d}.pt"
            _save(epoch_path, checkpoint(epoch + 1, 0, None))
            _link_last(epoch_path)
            prune(run_dir, config.output.keep_last)
            _write_history(run_dir / "history.csv", history)
        if show:
            val_text = f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if val_loader else ""
            if val_loader and ema is not None:
                val_text += f"  ema val loss {row['ema_val_loss']:.4f} acc {row['ema_val_accuracy']:.4f}"
            bar.write(f"epoch {epoch + 1}/{epochs}  train loss {row['train_loss']:.4f} "
                      f"acc {row['train_accuracy']:.4f}{val_text}  {row['images_per_second']:.0f} img/s")
        if step >= total_steps:
            break
        if distributed.any_rank(stop.signal_number is not None, env, device):
            bar.close()
            raise _interrupted(stop, step, epoch + 1, run_dir)
    bar.close()
    distributed.barrier(env)  # best.pt is written before any rank reads it
    return task, history, best


def _warn_about_schedule(config: RunConfig, steps_per_epoch: int, env) -> None:
    schedule = config.schedule
    if schedule.name != "multistep" or not schedule.milestones or not env.is_main:
        return
    total = _total_steps(config.train, steps_per_epoch)
    first = schedule.milestones[0] * (steps_per_epoch if schedule.unit == "epoch" else 1)
    if first >= total:
        print(f"reslab: note: the first learning-rate milestone ({schedule.milestones[0]} {schedule.unit}s) lies "
              f"beyond this run's {total} steps, so the rate stays {config.optim.lr}; set schedule.milestones or "
              "schedule.name=cosine", file=sys.stderr)


def _train_figures(tally: EpochTally, env) -> dict:
    """The epoch's training loss and accuracy over every process's images."""
    sums = torch.stack([tally.loss_sum.float(), tally.correct.float(),
                        torch.tensor(float(tally.seen), device=tally.loss_sum.device)])
    if env.enabled:
        torch.distributed.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


def _save(path: Path, state: dict) -> None:
    try:
        save_checkpoint(path, state)
    except OSError as exc:
        raise ReslabError(f"could not write {path} ({exc.strerror or exc}); the checkpoints already in "
                          f"{path.parent} are intact") from None


def _link_last(path: Path) -> None:
    """Point checkpoints/last.pt at ``path`` atomically (a hard link: no second copy)."""
    temporary = path.parent / f".last.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:  # a filesystem without hard links: copy
        shutil.copyfile(path, temporary)
    os.replace(temporary, path.parent / "last.pt")


def _save_last(run_dir: Path, state: dict, env) -> None:
    if env.is_main:
        _save(run_dir / "checkpoints" / "last.pt", state)
    distributed.barrier(env)


def _interrupted(stop: StopRequest, step: int, epoch: int, run_dir: Path) -> Interrupted:
    name = signal.Signals(stop.signal_number).name
    return Interrupted(f"stopped by {name} at step {step} (epoch {epoch + 1}); its state is saved. "
                       f"Continue with: reslab train --resume {run_dir}", stop.signal_number)


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
def predict(model: nn.Module, loader, device: torch.device, precision: str = "fp32", env=None, flip: bool = False):
    """All logits and targets of ``loader`` (gathered from every process when distributed);
    with ``flip`` each image's logits are averaged with its mirror image's."""
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        with autocast(device, precision):
            logits = model(images).float()
            if flip:
                logits = (logits + model(images.flip(3)).float()) / 2
        outputs.append(logits)
        targets.append(labels)
    logits, labels = torch.cat(outputs), torch.cat(targets)
    if env is not None and env.enabled:
        logits, labels = distributed.all_gather_rows(logits, env), distributed.all_gather_rows(labels, env)
    return logits.cpu(), labels.cpu()


def _write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- the end of a run


def _finish(config, bundle: DataBundle, task: Task, model, meta, device, env, run_dir: Path, history: list[dict],
            best: dict) -> RunResult:
    best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)
    model.load_state_dict(best_state["model"])

    def evaluate(loader):
        return task.metrics(*predict(model, loader, device, config.train.precision, env, flip=config.train.tta))

    test = evaluate(bundle.test)
    val = evaluate(bundle.val) if bundle.val is not None else None
    bad_files = bundle.bad_files()
    if env.enabled:
        gathered = [None] * env.world_size
        torch.distributed.all_gather_object(gathered, bad_files)
        bad_files = list(dict.fromkeys(b for rank_files in gathered for b in rank_files))
    train_seconds = sum(row["epoch_seconds"] for row in history)
    images = sum(row["images_per_second"] * row["epoch_seconds"] for row in history)
    counts = count_parameters(model)
    input_shape = (bundle.in_channels, *meta["image_size"])
    metrics = {
        "model": config.model.name, "dataset": config.data.name, "seed": config.train.seed,
        "epochs": len(history), "steps": history[-1]["step"] if history else 0,
        "best_epoch": best["epoch"], "best_weights": best.get("weights", "live"), "selected_on": "validation" if bundle.val is not None else "last epoch",
        "task": bundle.task, "bad_files": len(bad_files),
        "parameters": counts["parameters"], "macs": count_macs(model, input_shape),
        "train_seconds": train_seconds, "images_per_second": images / max(train_seconds, 1e-9),
        "device": str(device), "processes": env.world_size, "precision": config.train.precision,
        "peak_memory_mb": peak_memory_mb(device),
        "test": test, "val": val,
    }
    if not env.is_main:
        return RunResult(run_dir, metrics, history)
    if config.output.plots:
        from ..report.plots import plot_confusion, plot_history

        plot_history(history, run_dir / "curves.png", title=f"{config.model.name} on {config.data.name}")
        if "confusion_matrix" in test:
            plot_confusion(test["confusion_matrix"], bundle.classes, run_dir / "confusion_matrix.png",
                           title=f"{config.model.name}: test confusion matrix")
    if bad_files:
        write_bad_files(run_dir / "bad_files.txt", bad_files)
    atomic_write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run finished
    return RunResult(run_dir, metrics, history)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of training: allocated GPU memory, or on the CPU the process's peak
    resident set (which includes the interpreter, PyTorch and the data)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
