"""Study figures: metrics against depth and per-class bars. A run's own figures (curves,
confusion matrix) are drawn by ``reslab.evaluate.plots``, the Fig. 6 error curves of
compared runs by ``reslab.experiments.compare``."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..figures import new_figure, save_figure

# One colour per kind of net, the same in every study figure.
FAMILY_COLOURS = {"plain": "tab:red", "residual": "tab:blue"}

# A figure's name holds a slug of a dataset, variant or run name; longer ones are cut (and told
# apart by a digest), so that a name read from a study's files always fits the filesystem's 255.
MAX_SLUG = 80


def slug(text: str) -> str:
    """``text`` as part of a file name: letters, digits, ``_.-``, at most MAX_SLUG characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
    if len(cleaned) <= MAX_SLUG:
        return cleaned
    return f"{cleaned[:MAX_SLUG - 9]}-{hashlib.sha256(text.encode(errors='surrogatepass')).hexdigest()[:8]}"


def plot_against_depth(lines: list[dict], path: Path, ylabel: str, title: str = "") -> None:
    """Lines over network depth, e.g. test error of the plain and the residual nets.

    Each line is ``{"label", "depths", "values", "stds" (or None), "colour", "style"}``; the
    standard deviations over seeds are drawn as error bars.
    """
    figure, axis = new_figure(size=(6.5, 4.5))
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
    figure, axis = new_figure(size=(max(6.0, 0.5 * len(classes) * max(1, len(bars) / 3) + 2), 4.5))
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
