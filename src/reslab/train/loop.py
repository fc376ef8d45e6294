"""The one training loop, for every model and dataset, CPU or GPU, one process or many.

config -> data + model -> epochs -> metrics -> run folder. ``train`` sets up and hands
over to ``fit``, whose epoch loop is on one screen: ``train_one_epoch`` takes the steps,
``validate_epoch`` scores the live and the averaged weights, ``finish`` evaluates the best of
them on the test set once. The pieces they use live beside this file: the run folder
(run_folder.py), the state a resume needs (state.py), the step (step.py), what a run is
built from (setup.py), averaged weights (ema.py).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import epoch_checkpoints, load_checkpoint
from ..config import RunConfig, validate
from ..data import DataBundle, resolve_defaults
from ..data.files import BadFile, write_bad_files
from ..device import compile_model, configure, resolve_device, seed_everything
from ..errors import ReslabError
from ..evaluate.calibration import plot_reliability
from ..evaluate.plots import plot_confusion, plot_history
from ..evaluate.predict import predict
from ..evaluate.task import Task
from ..models.summary import count_macs, count_parameters
from ..models.transfer import freeze
from ..precision import resolve_precision
from ..runfs import atomic_write_json
from . import run_folder
from .ema import ModelEma
from .losses import balanced_weights, build_criterion
from .observers import Observer, build_logger
from .run_folder import VAL_FIGURES, RunResult
from .setup import build_optimization, build_run_data, build_run_model, epochs_of, size_to_data, warn_about_schedule
from .setup import total_steps as planned_steps
from .state import EpochTally, TrainState
from .step import train_step
from .stop import StopRequest

logger = logging.getLogger(__name__)


def train(config: RunConfig, resume: Path | None = None, progress: bool = True,
          observers: Sequence[Observer] = ()) -> RunResult:
    """Train per ``config`` into a new run folder, or continue the run in ``resume``.

    A run folder named by ``output.name`` that exists, is unfinished and was started with
    this very config is continued automatically. ``observers`` watch it from rank 0, besides
    the tracker ``output.logger`` names (observers.py).
    """
    validate(config)
    resolve_defaults(config)
    device = resolve_device(config.train.device)
    config.train.precision = resolve_precision(config.train.precision, device)
    if config.train.precision == "fp16" and device.type == "cpu":
        raise ReslabError("train.precision=fp16 needs a GPU; use bf16 (or auto) on the CPU")
    if resume is None:
        config.output.name = run_folder.elastic_run_name(config) or config.output.name
    resume = Path(resume) if resume is not None else run_folder.unfinished_twin(config)
    saved = None
    if resume is not None:
        run_folder.check_resumable(resume, config)
        if (resume / "metrics.json").is_file():
            return run_folder.load_result(resume)
        saved = run_folder.latest_checkpoint(resume)
    env, device = distributed.setup(device)
    bundle = None
    watchers = [o for o in (build_logger(config), *observers) if o is not None] if env.is_main else []
    try:
        distributed.check_batch(config.train.batch_size, env, config.train.accumulate)
        if config.train.time_limit is not None and env.enabled:
            raise ReslabError("train.time_limit follows one process's clock, and this run has "
                              f"{env.world_size}; leave it empty and set train.epochs under torchrun")
        configure(device, config.train.deterministic, config.train.threads)
        seed_everything(config.train.seed)
        bundle = build_run_data(config, device, env)
        if resume is None and size_to_data(config, bundle.description["sizes"]["train"], env):
            bundle.close()  # the batch was capped: loaders of the new size
            bundle = build_run_data(config, device, env)
        if config.train.patience is not None and bundle.val is None:
            raise ReslabError("train.patience stops on the validation score, and this run holds out no validation "
                              "images; set data.val_size (e.g. 0.1) or leave train.patience empty")
        model, meta = build_run_model(config, bundle, device, env)
        if env.is_main:
            warn_about_schedule(config, len(bundle.train))
        run_dir = resume or _new_run(config, bundle, device, env)
        if env.is_main:
            epochs = epochs_of(planned_steps(config, len(bundle.train)), len(bundle.train))
            limit = config.train.time_limit
            logger.info("%s %s: %s on %s, %s, %s%d epoch%s of %d steps (batch %d)%s; device %s, precision %s",
                        "continuing" if resume else "training", run_dir, config.model.name, config.data.name,
                        _sizes(bundle), "at most " if limit else "", epochs, "s" if epochs != 1 else "",
                        len(bundle.train), config.train.batch_size,
                        f" or {limit:g} s of training (train.time_limit)" if limit else "", device,
                        config.train.precision)
        if resume is not None and env.is_main:
            (run_dir / "checkpoints").mkdir(exist_ok=True)  # a run stopped before its first checkpoint
        with StopRequest() as stop:
            state, task = fit(config, bundle, model, meta, device, env, run_dir, saved, stop, progress, watchers)
        # Signals are PyTorch's again here: a Ctrl-C during the final evaluation stops at once.
        result = finish(config, bundle, task, model, meta, device, env, run_dir, state)
        for watcher in watchers:
            watcher.end(run_dir, result.metrics)
        return result
    finally:
        for watcher in watchers:
            watcher.close()
        if bundle is not None:
            bundle.close()
        distributed.teardown(env)


def _sizes(bundle: DataBundle) -> str:
    sizes = bundle.description["sizes"]
    return ", ".join(f"{count:,} {split}" for split, count in sizes.items() if count) + " images"


def _new_run(config: RunConfig, bundle: DataBundle, device: torch.device, env) -> Path:
    name = distributed.broadcast(run_folder.default_run_name(config), env)
    if env.is_main:
        run_folder.create_run_folder(config, name, run_folder.environment(device, env.world_size),
                                     bundle.description)
    distributed.barrier(env)
    return Path(config.output.dir) / name


# ---------------------------------------------------------------- the epochs


def fit(config: RunConfig, bundle: DataBundle, model, meta: dict, device, env, run_dir: Path, saved: dict | None,
        stop: StopRequest, progress: bool, watchers: Sequence[Observer] = ()) -> tuple[TrainState, Task]:
    """Train, validate and checkpoint epoch after epoch; returns the final state."""
    task = Task(bundle.task, bundle.classes, config.train.threshold)
    class_weights = (balanced_weights(bundle.train_class_counts()) if config.train.class_weights == "balanced"
                     else None)
    criterion = build_criterion(config.train.loss, task.multi_label, config.train.label_smoothing, class_weights)
    optimizer, scheduler, total_steps = build_optimization(config, model, device, len(bundle.train))
    state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler(device.type,
                                                                       enabled=config.train.precision == "fp16"),
                       ModelEma(model, config.train.ema) if config.train.ema else None, EpochTally.zero(device))
    if saved is not None:
        state.load_state_dict(saved)
    for watcher in watchers:
        watcher.start(run_dir, config, state.step)
    epochs = epochs_of(total_steps, len(bundle.train))
    bar = tqdm(total=total_steps, initial=state.step, unit="it", desc=config.model.name, dynamic_ncols=True,
               disable=not (progress and env.is_main and sys.stderr.isatty()), file=sys.stderr)
    freeze_mode = None
    while (state.epoch < epochs and state.step < total_steps and not _out_of_patience(state, config)
           and not _time_spent(state, config)):
        # Transfer learning: frozen layers first, everything from model.unfreeze_epoch on.
        unfrozen = config.model.unfreeze_epoch is not None and state.epoch + 1 >= config.model.unfreeze_epoch
        if (config.model.freeze if not unfrozen else "none") != freeze_mode:
            freeze_mode = config.model.freeze if not unfrozen else "none"
            freeze(model, freeze_mode)
            forward = _wrap(model, config, device, env)  # DDP is built for the parameters that train now
        train_one_epoch(state, forward, criterion, task, bundle.train, config, device, env, total_steps, stop,
                        run_dir, meta, bar, watchers)
        if state.tally.seen == 0:  # the time limit left no room for a step of this epoch
            break
        row = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
               **_train_figures(state.tally, env), "epoch_seconds": state.tally.seconds,
               "images_per_second": state.tally.seen * env.world_size / state.tally.seconds}
        weights, score = validate_epoch(state, row, task, bundle, config, device, env)
        state.epoch, state.batch = state.epoch + 1, 0
        state.history.append(row)
        is_best = state.best is None or score > tuple(state.best["score"])
        if is_best:
            state.best = {"epoch": state.epoch, "score": list(score), "weights": weights}
        if env.is_main:
            _save_epoch(state, run_dir, meta, weights if is_best else None, config.output.keep_last)
        _log_epoch(row, epochs, bar, env)
        for watcher in watchers:
            watcher.epoch(state.step, row)  # may raise: a pruned trial stops here, its epoch saved
        if state.step < total_steps and distributed.any_rank(stop.requested, env, device):
            bar.close()
            raise stop.interrupted(state.step, state.epoch, run_dir)
    bar.close()
    if _out_of_patience(state, config) and env.is_main and state.best is not None:
        logger.info("stopped early after epoch %d: no better validation score in %d epochs (train.patience); "
                    "the best epoch, %d, is kept", state.epoch, config.train.patience, state.best["epoch"])
    distributed.barrier(env)  # best.pt is written before any rank reads it
    return state, task


def train_one_epoch(state: TrainState, forward, criterion, task: Task, loader, config: RunConfig, device, env,
                    total_steps: int, stop: StopRequest, run_dir: Path, meta: dict, bar,
                    watchers: Sequence[Observer] = ()) -> None:
    """The steps of epoch ``state.epoch``, from batch ``state.batch`` on (a mid-epoch resume)."""
    state.model.train()
    loader.set_epoch(state.epoch)
    if state.batch == 0:
        state.tally = EpochTally.zero(device)
    started = time.perf_counter() - state.tally.seconds
    check_every = 1 if device.type == "cpu" else 25  # each check is a host sync on a GPU
    limit, before = config.train.time_limit, _seconds_of_epochs(state)
    step_began: float | None = None
    last_step = _mean_step_seconds(state.history)  # until this epoch has timed a step of its own
    for images, targets in loader.iterate(state.batch):
        if state.step >= total_steps:
            break
        if limit is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the clock counts work done, not work queued
            now = time.perf_counter()
            last_step, step_began = (now - step_began if step_began is not None else last_step), now
            spent = before + now - started
            if spent + STEP_MARGIN * last_step > limit:  # the next step could end past the limit
                break
            _follow_clock(state.scheduler, total_steps, spent / limit)
        loss, logits = train_step(forward, images, targets, criterion, state.optimizer, state.scaler, device,
                                  config.train.precision, state.scheduler if limit is None else None,
                                  config.train.accumulate, config.optim.clip_grad_norm)
        if state.ema is not None:
            state.ema.update(state.model)
        state.step += 1
        state.batch += 1
        state.tally.add(loss, task.correct(logits.detach(), targets), len(targets))
        if state.step % check_every == 0:
            _check_finite(loss, state, run_dir)
            bar.set_postfix(epoch=f"{state.epoch + 1}", loss=f"{loss.item():.3f}",
                            acc=f"{state.tally.correct.item() / state.tally.seen:.3f}",
                            lr=f"{state.optimizer.param_groups[0]['lr']:.2g}",
                            img_s=f"{state.tally.seen * env.world_size / (time.perf_counter() - started):.0f}",
                            refresh=False)
            if distributed.any_rank(stop.requested, env, device):
                state.tally.seconds = time.perf_counter() - started
                if env.is_main:
                    run_folder.save(run_dir / "checkpoints" / "last.pt", {**state.state_dict(mid_epoch=True),
                                                                        "meta": meta})
                distributed.barrier(env)
                bar.close()
                raise stop.interrupted(state.step, state.epoch + 1, run_dir)
        if watchers and state.step % config.output.log_every == 0:  # a host sync: not every step on a GPU
            figures = {"loss": loss.item(), "lr": state.optimizer.param_groups[0]["lr"],
                       "images_per_second": state.tally.seen * env.world_size / (time.perf_counter() - started)}
            for watcher in watchers:
                watcher.step(state.step, figures)
        bar.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state.tally.seconds = time.perf_counter() - started
    _check_finite(state.tally.loss_sum, state, run_dir)


def validate_epoch(state: TrainState, row: dict, task: Task, bundle: DataBundle, config: RunConfig, device,
             env) -> tuple[str, tuple]:
    """Score the live weights and the averaged ones on validation (their batch-norm statistics
    recomputed first), fill ``row``; returns the better ("live" or "ema") and its score.
    Without a validation split the last epoch is kept, averaged weights if any."""
    if state.ema is not None:
        state.ema.recompute_batchnorm(bundle.train, config.train.ema_bn_batches, env)
    if bundle.val is None:
        return ("ema" if state.ema is not None else "live"), (row["train_accuracy"], -row["train_loss"])
    scores = {}
    for weights, network in _candidates(state).items():
        logits, targets = predict(network, bundle.val, device, config.train.precision, env, flip=config.train.tta)
        if not bool(torch.isfinite(logits).all()):
            raise ReslabError(
                f"the {'averaged' if weights == 'ema' else 'live'} weights' validation outputs became NaN or infinite "
                f"in epoch {state.epoch + 1}; the training diverged. Try a lower optim.lr, a warm-up "
                "(schedule.warmup=linear schedule.warmup_iters=500) or train.precision=fp32")
        val = task.metrics(logits, targets)
        prefix = "val_" if weights == "live" else "ema_val_"
        row.update({prefix + key: val.get(key) for key in VAL_FIGURES})
        scores[weights] = task.score(val)
    weights = max(scores, key=scores.__getitem__)  # the live weights on a tie
    return weights, scores[weights]


def _out_of_patience(state: TrainState, config: RunConfig) -> bool:
    """Early stopping: ``train.patience`` epochs without a better validation score."""
    patience = config.train.patience
    return patience is not None and state.best is not None and state.epoch - state.best["epoch"] >= patience


# Under train.time_limit a run stops while the time left is under this many of its last
# step's: step times vary by some percent (the scheduler, a busy machine), and a budget is
# a bound, so a step that could end past it is not begun. At most two steps of the budget
# go unused.
STEP_MARGIN = 2.0


def _seconds_of_epochs(state: TrainState) -> float:
    """Training seconds of the finished epochs (evaluation excluded)."""
    return sum(row["epoch_seconds"] for row in state.history)


def _mean_step_seconds(history: list[dict]) -> float:
    """Seconds per step of the last finished epoch (0 before the first)."""
    if not history:
        return 0.0
    steps = history[-1]["step"] - (history[-2]["step"] if len(history) > 1 else 0)
    return history[-1]["epoch_seconds"] / max(1, steps)


def _time_spent(state: TrainState, config: RunConfig) -> bool:
    """``train.time_limit`` reached by the finished epochs: a step more could end past it."""
    limit = config.train.time_limit
    return limit is not None and _seconds_of_epochs(state) + STEP_MARGIN * _mean_step_seconds(state.history) > limit


def _follow_clock(scheduler, total_steps: int, fraction: float) -> None:
    """Set the rate for the next step as the schedule has it at ``fraction`` of the run:
    under train.time_limit the schedule's step is the share of the time spent, so a slow or
    fast machine ends the schedule where the time ends, not where an estimate said."""
    scheduler.last_epoch = min(total_steps - 1, int(fraction * total_steps)) - 1
    with warnings.catch_warnings():  # "step() before optimizer.step()": this step is by design
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()


def _candidates(state: TrainState) -> dict:
    return {"live": state.model, **({"ema": state.ema.module} if state.ema is not None else {})}


def _wrap(model, config: RunConfig, device, env):
    network = model
    if env.enabled:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return compile_model(network, config.train.compile_mode) if config.train.compile else network


def _save_epoch(state: TrainState, run_dir: Path, meta: dict, best_weights: str | None, keep_last: int) -> None:
    if best_weights is not None:
        run_folder.save(run_dir / "checkpoints" / "best.pt",
                        {"model": _candidates(state)[best_weights].state_dict(), "meta": meta, "epoch": state.epoch,
                         "weights": best_weights})
    run_folder.save_epoch(run_dir, state.epoch, {**state.state_dict(), "meta": meta}, keep_last)
    run_folder.write_history(run_dir / "history.csv", state.history)


def _log_epoch(row: dict, epochs: int, bar, env) -> None:
    """One line per epoch: above the progress bar, or through logging where there is no bar
    (output to a file, ``--no-progress``), as Keras' ``verbose=2`` does."""
    if not env.is_main:
        return
    line = (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            + (f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if row.get("val_loss") is not None
               else "")
            + (f"  ema val loss {row['ema_val_loss']:.4f} acc {row['ema_val_accuracy']:.4f}"
               if row.get("ema_val_loss") is not None else "")
            + f"  {row['images_per_second']:.0f} img/s  {row['epoch_seconds']:.1f} s")
    if bar.disable:
        logger.info(line)
    else:
        bar.write(line, file=sys.stderr)


def _train_figures(tally: EpochTally, env) -> dict:
    """The epoch's training loss and accuracy over every process's images."""
    sums = torch.stack([tally.loss_sum.float(), tally.correct.float(),
                        torch.tensor(float(tally.seen), device=tally.loss_sum.device)])
    if env.enabled:
        torch.distributed.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


def _check_finite(loss: torch.Tensor, state: TrainState, run_dir: Path) -> None:
    if not torch.isfinite(loss).all():
        kept = epoch_checkpoints(run_dir)
        where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
        raise ReslabError(
            f"the training loss became {loss.float().sum().item()} at step {state.step} (epoch {state.epoch + 1}); "
            f"{where}. Try a lower optim.lr, a warm-up (schedule.warmup=linear schedule.warmup_iters=500) or "
            "train.precision=fp32")


# ---------------------------------------------------------------- the end of a run


def finish(config: RunConfig, bundle: DataBundle, task: Task, model, meta: dict, device, env, run_dir: Path,
           state: TrainState) -> RunResult:
    """Evaluate the best checkpoint on the test set (and validation), write metrics.json last."""
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)["model"])

    def evaluate(loader):
        return task.metrics(*predict(model, loader, device, config.train.precision, env, flip=config.train.tta))

    test = evaluate(bundle.test)
    val = evaluate(bundle.val) if bundle.val is not None else None
    bad_files = bundle.bad_files()
    if env.enabled:
        gathered: list[list[BadFile]] = [[] for _ in range(env.world_size)]
        torch.distributed.all_gather_object(gathered, bad_files)
        bad_files = list(dict.fromkeys(b for rank_files in gathered for b in rank_files))
    history = state.history
    assert state.best is not None, "a finished run has validated at least one epoch"
    train_seconds = sum(row["epoch_seconds"] for row in history)
    images = sum(row["images_per_second"] * row["epoch_seconds"] for row in history)
    metrics = {
        "model": config.model.name, "dataset": config.data.name, "seed": config.train.seed,
        "epochs": len(history), "steps": history[-1]["step"] if history else 0,
        "best_epoch": state.best["epoch"], "best_weights": state.best.get("weights", "live"),
        "stopped_early": _out_of_patience(state, config),
        "selected_on": "validation" if bundle.val is not None else "last epoch",
        "task": bundle.task, "bad_files": len(bad_files),
        "parameters": count_parameters(model)["parameters"],
        "macs": count_macs(model, (bundle.in_channels, *meta["image_size"])),
        "train_seconds": train_seconds, "images_per_second": images / max(train_seconds, 1e-9),
        "device": str(device), "processes": env.world_size, "precision": config.train.precision,
        "peak_memory_mb": peak_memory_mb(device),
        "test": test, "val": val,
    }
    if not env.is_main:
        return RunResult(run_dir, metrics, history)
    if config.output.plots:
        plot_history(history, run_dir / "curves.png", title=f"{config.model.name} on {config.data.name}")
        if "confusion_matrix" in test:
            plot_confusion(test["confusion_matrix"], bundle.classes, run_dir / "confusion_matrix.png",
                           title=f"{config.model.name}: test confusion matrix")
        if "reliability" in test:  # Guo et al. 2017, Fig. 1
            plot_reliability(test["reliability"], run_dir / "reliability.png",
                             title=f"{config.model.name}: test ECE {100 * test['ece']:.2f}%")
    if bad_files:
        write_bad_files(run_dir / "bad_files.txt", bad_files)
        logger.warning("%d bad image file(s) skipped, listed in %s; only the files the loaders reached were "
                       "decoded (data.strict=true checks every file before training)", len(bad_files),
                       run_dir / "bad_files.txt")
    atomic_write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run finished
    return RunResult(run_dir, metrics, history)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of training: allocated GPU memory, or on the CPU the process's peak
    resident set (which includes the interpreter, PyTorch and the data)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
