"""Stopping a run cleanly: SIGTERM (preemption, a time limit), SIGUSR1 (SLURM's warning
before one, ``sbatch --signal=USR1@90``) and Ctrl-C become a flag read at the next step,
so the state is saved at a step boundary."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..errors import Interrupted
from ..signals import STOP_SIGNALS


class StopRequest:
    def __init__(self):
        self.signal_number: int | None = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, _frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_number = number

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def interrupted(self, step: int, epoch: int, run_dir: Path) -> Interrupted:
        """The error that ends the run, ``epoch`` being the 1-based epoch it stopped in."""
        assert self.signal_number is not None, "interrupted() is asked for after a signal"
        name = signal.Signals(self.signal_number).name
        return Interrupted(f"stopped by {name} at step {step} (epoch {epoch}); its state is saved. "
                           f"Continue with: reslab train --resume {run_dir}", self.signal_number)

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False
