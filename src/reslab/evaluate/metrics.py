"""Single-label classification metrics, computed by scikit-learn from a model's logits.

Error is always 1 - accuracy (top-1), so a table can never contradict itself the way
report 001's did.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .calibration import calibration_metrics


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, error, loss, top-5, macro/weighted/per-class precision, recall, F1, confusion,
    and calibration: ECE and MCE (15 bins), NLL, Brier score and the reliability bins."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

    logits = logits.float().cpu()
    targets = targets.cpu()
    labels = list(range(len(classes)))
    predicted = logits.argmax(1).numpy()
    truth = targets.numpy()
    accuracy = float((predicted == truth).mean()) if len(truth) else 0.0
    result = {
        "samples": int(len(truth)),
        "loss": float(F.cross_entropy(logits, targets)) if len(truth) else float("nan"),
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
    }
    if len(classes) > 5:
        result["top5_accuracy"] = float(top_k_accuracy_score(truth, logits.numpy(), k=5, labels=labels))
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, predicted, labels=labels, average=average, zero_division=0
        )
        result[f"{average}_precision"] = float(precision)
        result[f"{average}_recall"] = float(recall)
        result[f"{average}_f1"] = float(f1)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, average=None, zero_division=0
    )
    result["per_class"] = [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    result["confusion_matrix"] = confusion_matrix(truth, predicted, labels=labels).tolist()
    result.update(calibration_metrics(logits, targets))  # ece, mce, nll, brier, reliability (Guo et al. 2017)
    return result


def running_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Correct predictions in a batch, as a tensor (no host sync in the training step)."""
    return (logits.argmax(1) == targets).sum()


SUMMARY_KEYS = ("accuracy", "error", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
                "weighted_f1", "loss", "ece")


def summary(metrics: dict) -> dict:
    """The scalar headline figures of a metrics dict."""
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
