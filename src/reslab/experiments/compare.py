"""Comparisons of finished runs: a table with one row per run, every number read from the
run's own metrics.json (error always 1 - accuracy, a fraction in the files like every
metric, shown in percent), and He et al.'s Fig. 6 error curves of the runs."""

from __future__ import annotations

from pathlib import Path

from .. import document
from ..figures import colours, new_figure, save_figure
from ..runfs import atomic_write_json, atomic_write_text

COLUMNS = [
    ("model", "model", "{}"),
    ("parameters", "params", "{:,}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("precision", "precision", "{:.4f}"),
    ("recall", "recall", "{:.4f}"),
    ("f1", "F1", "{:.4f}"),
    ("error", "error (%)", "{:.2%}"),
    ("train_seconds", "train time (s)", "{:.1f}"),
    ("images_per_second", "images/s", "{:.0f}"),
    ("best_epoch", "best epoch", "{}"),
]


def comparison_rows(metrics_list: list[dict]) -> list[dict]:
    rows = []
    for metrics in metrics_list:
        test = metrics["test"]
        rows.append({
            "model": metrics["model"], "dataset": metrics["dataset"], "seed": metrics["seed"],
            "parameters": metrics["parameters"], "macs": metrics["macs"],
            "accuracy": test["accuracy"], "precision": test["macro_precision"], "recall": test["macro_recall"],
            "f1": test["macro_f1"], "error": 1 - test["accuracy"],
            "train_seconds": metrics["train_seconds"], "images_per_second": metrics["images_per_second"],
            "best_epoch": metrics["best_epoch"],
        })
    return rows


def comparison_table(rows: list[dict], columns=COLUMNS) -> document.Table:
    """One row per run, the model's name left-aligned and the numbers right."""
    return document.Table(headers=[title for _, title, _ in columns],
                          rows=[[fmt.format(row[key]).rstrip("%") for key, _, fmt in columns] for row in rows],
                          align=["left" if key == "model" else "right" for key, _, _ in columns])


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    return document.markdown_table(comparison_table(rows, columns))


def write_comparison(rows: list[dict], folder: Path, note: str = "") -> str:
    """Write comparison.md and comparison.json into ``folder``; return the Markdown table."""
    table = markdown_table(rows)
    text = table + ("\n\n" + note if note else "") + "\n"
    atomic_write_text(Path(folder) / "comparison.md", text)
    atomic_write_json(Path(folder) / "comparison.json", rows)
    return table


def plot_error_curves(curves: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """He et al. Fig. 6: per net, training error (dashed) and validation error (solid) by epoch;
    plain nets on the left, residual nets on the right when both are present."""
    plain = {name: rows for name, rows in curves.items() if name.startswith("plain")}
    residual = {name: rows for name, rows in curves.items() if not name.startswith("plain")}
    panels = [(t, group) for t, group in (("plain", plain), ("residual", residual)) if group]
    figure, axes = new_figure(1, len(panels), size=(6 * len(panels), 4.5), sharey=True, squeeze=False)
    for axis, (kind, group) in zip(axes[0], panels):
        for colour, (name, rows) in zip(colours(len(group)), group.items()):
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
