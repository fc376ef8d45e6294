"""A run's own figures: training curves (report 000's Fig. 3) and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import new_figure, save_figure


def plot_history(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy against epoch: training, validation, and the averaged weights' validation."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = new_figure(1, 2, size=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train")
    accuracy_axis.plot(epochs, [row["train_accuracy"] for row in history], label="train")
    for prefix, label in (("val_", "validation"), ("ema_val_", "validation, averaged weights")):
        if history and history[0].get(prefix + "loss") is not None:
            loss_axis.plot(epochs, [row[prefix + "loss"] for row in history], label=label)
            accuracy_axis.plot(epochs, [row[prefix + "accuracy"] for row in history], label=label)
    for axis, name in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    save_figure(figure, path)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axis = new_figure(size=(size, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=classes).plot(
        ax=axis, cmap="Blues", colorbar=False, include_values=len(classes) <= 20,
        xticks_rotation="vertical" if len(classes) > 10 else "horizontal")
    axis.set_title(title)
    save_figure(figure, path)
