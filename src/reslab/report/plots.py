"""Figures: training curves (report 000's Fig. 3), confusion matrices, and residual vs
plain error curves in the style of He et al. 2016 Fig. 6 (training error dashed, test
or validation error solid, one colour per depth)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from ..runfs import atomic_write  # noqa: E402


def save_figure(figure, path: Path) -> None:
    atomic_write(Path(path), lambda handle: figure.savefig(handle, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)


def plot_history(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy against epoch: training, validation, and the averaged weights' validation."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
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
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    import numpy as np

    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=classes).plot(
        ax=axis, cmap="Blues", colorbar=False, include_values=len(classes) <= 20,
        xticks_rotation="vertical" if len(classes) > 10 else "horizontal")
    axis.set_title(title)
    save_figure(figure, path)


def plot_error_curves(curves: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """He et al. Fig. 6: per net, training error (dashed) and validation error (solid) by epoch;
    plain nets on the left, residual nets on the right when both are present."""
    plain = {name: rows for name, rows in curves.items() if name.startswith("plain")}
    residual = {name: rows for name, rows in curves.items() if not name.startswith("plain")}
    panels = [(t, group) for t, group in (("plain", plain), ("residual", residual)) if group]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True, squeeze=False)
    for axis, (kind, group) in zip(axes[0], panels):
        for colour, (name, rows) in zip(plt.cm.tab10.colors, group.items()):
            epochs = [row["epoch"] for row in rows]
            axis.plot(epochs, [100 * (1 - row["train_accuracy"]) for row in rows], "--", color=colour, alpha=0.8)
            if rows and rows[0].get("val_accuracy") is not None:
                axis.plot(epochs, [100 * (1 - row["val_accuracy"]) for row in rows], "-", color=colour, label=name)
        axis.set_title(f"{kind} nets (dashed: training error, solid: validation error)", fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylabel("error (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    save_figure(figure, path)


# ---------------------------------------------------------------- study figures (reslab.report.report)

# One colour per kind of net, the same in every study figure.
FAMILY_COLOURS = {"plain": "tab:red", "residual": "tab:blue"}


def plot_against_depth(lines: list[dict], path: Path, ylabel: str, title: str = "") -> None:
    """Lines over network depth, e.g. test error of the plain and the residual nets.

    Each line is ``{"label", "depths", "values", "stds" (or None), "colour", "style"}``; the
    standard deviations over seeds are drawn as error bars.
    """
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for line in lines:
        axis.errorbar(line["depths"], line["values"], yerr=line.get("stds"), fmt=line.get("style", "o-"),
                      color=line.get("colour"), label=line["label"], capsize=3, alpha=line.get("alpha", 1.0))
    depths = sorted({d for line in lines for d in line["depths"]})
    axis.set_xticks(depths)
    axis.set_xlabel("depth (layers)")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=10)
    save_figure(figure, path)


def plot_per_class(classes: list[str], bars: dict[str, list[float]], path: Path, ylabel: str = "F1",
                   title: str = "") -> None:
    """Grouped bars: one group per class, one bar per net."""
    import numpy as np

    positions = np.arange(len(classes))
    width = 0.8 / max(len(bars), 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) * max(1, len(bars) / 3) + 2), 4.5))
    for index, (label, values) in enumerate(bars.items()):
        axis.bar(positions + (index - (len(bars) - 1) / 2) * width, values, width, label=label)
    axis.set_xticks(positions)
    axis.set_xticklabels(classes, rotation=90 if len(classes) > 12 else 0)
    axis.set_xlabel("class")
    axis.set_ylabel(ylabel)
    low = min((v for values in bars.values() for v in values), default=0.0)
    axis.set_ylim(max(0.0, low - 0.05), 1.0)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8, ncol=min(len(bars), 5))
    axis.set_title(title, fontsize=10)
    save_figure(figure, path)
