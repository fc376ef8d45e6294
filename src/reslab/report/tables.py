"""Plain-text tables for the terminal: a run's or an evaluation's figures, then its classes."""

from __future__ import annotations

from ..document import Table, terminal_table

INDENT = "  "
NAME_WIDTH = 18  # the headline figures' names
CLASS_WIDTH = 16  # class names are cut to this

WEIGHTS = {"live": "live (as trained)", "ema": "averaged (EMA), better on validation"}


def metrics_table(metrics: dict) -> str:
    """A run's (or an evaluation's) headline figures and its per-class table."""
    result = metrics.get(metrics.get("split", "test"), metrics)
    lines = []
    if "model" in metrics:
        lines.append(f"{metrics['model']} on {metrics['dataset']}"
                     + (f" ({metrics['split']} split)" if "split" in metrics else " (test split)"))
    if "map" in result:
        return "\n".join(lines + _multilabel_lines(result))
    rows = [("accuracy", result["accuracy"]), ("error", result["error"])]
    if "top5_accuracy" in result:
        rows.append(("top-5 accuracy", result["top5_accuracy"]))
    rows += [("loss", result["loss"]),
             ("precision (macro)", result["macro_precision"]), ("recall (macro)", result["macro_recall"]),
             ("F1 (macro)", result["macro_f1"]), ("F1 (weighted)", result["weighted_f1"])]
    rows += [(name, result[key]) for key, name in (("ece", "ECE (15 bins)"), ("mce", "MCE"), ("nll", "NLL"),
                                                    ("brier", "Brier score")) if result.get(key) is not None]
    figures = [[name, f"{value:.4f}"] for name, value in rows]
    for key, name in (("parameters", "parameters"), ("train_seconds", "train time (s)"),
                      ("images_per_second", "images/s"), ("best_epoch", "best epoch")):
        if key in metrics:
            value = metrics[key]
            figures.append([name, f"{value:,.0f}" if isinstance(value, float) else f"{value:,}"])
    if metrics.get("calibrated"):  # reslab calibrate's temperature, applied
        calibrated = metrics["calibrated"]
        figures.append(["temperature", f"{calibrated['temperature']:.4f}  (then ECE {calibrated['ece']:.4f}, "
                                       f"NLL {calibrated['nll']:.4f})"])
    if "best_weights" in metrics:  # which weights the test figures are of
        figures.append(["weights", WEIGHTS[metrics["best_weights"]]])
    lines += [_headline(figures), ""]
    classes = [[row["class"][:CLASS_WIDTH], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                str(row["support"])] for row in result["per_class"]]
    lines.append(terminal_table(Table(["class", "precision", "recall", "F1", "support"], classes), INDENT,
                                widths=[CLASS_WIDTH, 9, 9, 9, 8]))
    return "\n".join(lines)


def _headline(figures: list[list[str]]) -> str:
    """Name and value, one a line."""
    return terminal_table(Table([], figures, ["left", "left"]), INDENT, widths=[NAME_WIDTH])


def _multilabel_lines(result: dict) -> list[str]:
    figures = [["mAP", f"{result['map']:.4f}  (over {result['map_classes']} classes with positives)"]]
    for suffix, title in (("", f"at threshold {result['threshold']}"), ("_top3", "top-3 labels")):
        figures.append([title, "  ".join(f"{name} {result[key + suffix]:.4f}"
                                         for key, name in (("cp", "CP"), ("cr", "CR"), ("cf1", "CF1"), ("op", "OP"),
                                                           ("or", "OR"), ("of1", "OF1")))])
    figures += [["subset accuracy", f"{result['subset_accuracy']:.4f}"],
                ["Hamming loss", f"{result['hamming_loss']:.4f}"], ["loss (BCE)", f"{result['loss']:.4f}"]]
    classes = [[row["class"][:CLASS_WIDTH], "-" if row["ap"] is None else f"{row['ap']:.4f}",
                f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"])]
               for row in result["per_class"]]
    table = Table(["class", "AP", "precision", "recall", "F1", "support"], classes)
    return [_headline(figures), "", terminal_table(table, INDENT, widths=[CLASS_WIDTH, 9, 9, 9, 9, 8])]
