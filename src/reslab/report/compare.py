"""Comparison tables of finished runs: one row per run, every number read from the run's
own metrics.json, error always 1 - accuracy."""

from __future__ import annotations

from pathlib import Path

from ..runfs import atomic_write_json, atomic_write_text

COLUMNS = [
    ("model", "model", "{}"),
    ("parameters", "params", "{:,}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("precision", "precision", "{:.4f}"),
    ("recall", "recall", "{:.4f}"),
    ("f1", "F1", "{:.4f}"),
    ("error", "error (%)", "{:.2f}"),
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
            "f1": test["macro_f1"], "error": 100 * (1 - test["accuracy"]),
            "train_seconds": metrics["train_seconds"], "images_per_second": metrics["images_per_second"],
            "best_epoch": metrics["best_epoch"],
        })
    return rows


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" if key == "model" else "---:" for key, _, _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def write_comparison(rows: list[dict], folder: Path, note: str = "") -> str:
    """Write comparison.md and comparison.json into ``folder``; return the Markdown table."""
    table = markdown_table(rows)
    text = table + ("\n\n" + note if note else "") + "\n"
    atomic_write_text(Path(folder) / "comparison.md", text)
    atomic_write_json(Path(folder) / "comparison.json", rows)
    return table
