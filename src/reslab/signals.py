"""The signals that ask a run to stop, shared by the training loop (which turns them into a
checkpoint at the next step) and the data loader's worker processes (which must outlive
them until the loop has saved)."""

from __future__ import annotations

import signal

# SIGTERM: preemption or a time limit (timeout, SLURM, Kubernetes); SIGINT: Ctrl-C;
# SIGUSR1: SLURM's warning before a time limit (sbatch --signal=USR1@90).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores the stop signals.

    ``timeout``, SLURM and a terminal's Ctrl-C signal the whole process group, workers
    included. A worker killed by one makes PyTorch raise "DataLoader worker ... is killed
    by signal" in the training process before the loop can save; ignoring them keeps the
    workers serving until the loop stops at its next step and shuts them down. A worker
    still exits if the training process dies (PyTorch's workers watch their parent).
    """
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
