"""Making and saving figures without touching pyplot's global state: figures are built with
matplotlib's object-oriented ``Figure`` API (no backend switch, nothing left open), so a
notebook that trains a model keeps its own backend. Every layer that draws uses these.
Matplotlib is imported on the first figure, so commands that draw nothing start without it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .runfs import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(rows: int = 1, columns: int = 1, size: tuple[float, float] = (6, 4), **subplots):
    """A figure and its axes (one axis, or an array of them as ``Figure.subplots`` gives)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    return figure, figure.subplots(rows, columns, **subplots)


def save_figure(figure: Figure, path: Path) -> None:
    """A PNG, written atomically (a reader never sees half a file)."""
    atomic_write(Path(path), lambda handle: figure.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


def colours(count: int) -> list:
    """``count`` distinct colours, tab10's first."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors)
    return [palette[i % len(palette)] for i in range(count)]
