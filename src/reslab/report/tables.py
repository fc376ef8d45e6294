"""Plain-text tables for the terminal."""

from __future__ import annotations

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
    for name, value in rows:
        lines.append(f"  {name:<18} {value:.4f}")
    for key, name in (("parameters", "parameters"), ("train_seconds", "train time (s)"),
                      ("images_per_second", "images/s"), ("best_epoch", "best epoch")):
        if key in metrics:
            value = metrics[key]
            lines.append(f"  {name:<18} {value:,.0f}" if isinstance(value, float) else f"  {name:<18} {value:,}")
    if metrics.get("calibrated"):  # reslab calibrate's temperature, applied
        calibrated = metrics["calibrated"]
        lines.append(f"  {'temperature':<18} {calibrated['temperature']:.4f}  (then ECE {calibrated['ece']:.4f}, "
                     f"NLL {calibrated['nll']:.4f})")
    if "best_weights" in metrics:  # which weights the test figures are of
        lines.append(f"  {'weights':<18} {WEIGHTS[metrics['best_weights']]}")
    lines.append("")
    lines.append(f"  {'class':<16} {'precision':>9} {'recall':>9} {'F1':>9} {'support':>8}")
    for row in result["per_class"]:
        lines.append(f"  {row['class'][:16]:<16} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} "
                     f"{row['support']:>8}")
    return "\n".join(lines)


def _multilabel_lines(result: dict) -> list[str]:
    lines = [f"  {'mAP':<18} {result['map']:.4f}  (over {result['map_classes']} classes with positives)"]
    for suffix, title in (("", f"at threshold {result['threshold']}"), ("_top3", "top-3 labels")):
        figures = "  ".join(f"{name} {result[key + suffix]:.4f}"
                            for key, name in (("cp", "CP"), ("cr", "CR"), ("cf1", "CF1"), ("op", "OP"),
                                              ("or", "OR"), ("of1", "OF1")))
        lines.append(f"  {title:<18} {figures}")
    lines.append(f"  {'subset accuracy':<18} {result['subset_accuracy']:.4f}")
    lines.append(f"  {'Hamming loss':<18} {result['hamming_loss']:.4f}")
    lines.append(f"  {'loss (BCE)':<18} {result['loss']:.4f}")
    lines.append("")
    lines.append(f"  {'class':<16} {'AP':>9} {'precision':>9} {'recall':>9} {'F1':>9} {'support':>8}")
    for row in result["per_class"]:
        ap = f"{row['ap']:.4f}" if row["ap"] is not None else "-"
        lines.append(f"  {row['class'][:16]:<16} {ap:>9} {row['precision']:>9.4f} {row['recall']:>9.4f} "
                     f"{row['f1']:>9.4f} {row['support']:>8}")
    return lines
