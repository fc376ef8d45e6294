"""Everything a run needs to continue exactly where it stopped, as one object with
``state_dict()`` / ``load_state_dict()``: the weights, the optimizer, the schedule, the loss
scaler, the averaged weights, where in the run it is, the best epoch so far, the history,
the running sums of the epoch in progress and every random state. A checkpoint is this
dict plus the run's ``meta``; it holds tensors and plain values only, so it loads with
``torch.load(weights_only=True)``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..device import rng_state, set_rng_state
from .ema import ModelEma


@dataclass
class EpochTally:
    """Running sums of one epoch's training batches (kept on the device: no sync per step)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> EpochTally:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss_sum += loss.detach() * count
        self.correct += correct
        self.seen += count

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.item(), "correct": self.correct.item(), "seen": self.seen,
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> EpochTally:
        return cls(torch.tensor(state["loss_sum"], device=device),
                   torch.tensor(state["correct"], device=device, dtype=torch.long), state["seen"], state["seconds"])


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    tally: EpochTally
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches of epoch ``epoch`` done (a mid-epoch stop)
    step: int = 0  # optimizer steps taken
    best: dict | None = None  # {"epoch", "score", "weights"} of the best epoch so far
    history: list[dict] = field(default_factory=list)

    def state_dict(self, mid_epoch: bool = False) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "epoch": self.epoch, "batch": self.batch, "step": self.step, "best": self.best,
                "history": self.history, "tally": self.tally.state() if mid_epoch else None, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best, self.history = state["best"], state["history"]
        if state["tally"] is not None:
            self.tally = EpochTally.from_state(state["tally"], self.tally.loss_sum.device)
        set_rng_state(state["rng"])
