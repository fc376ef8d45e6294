"""Multi-label classification metrics (MS COCO's, after ML-GCN, Chen et al. 2019), from a
model's logits (one sigmoid per class) and multi-hot targets.

- ``map``: the mean over classes of the average precision (scikit-learn's
  ``average_precision_score``: precision summed at each positive's rank, no
  interpolation). A class with no positive image among the targets has no AP; it is
  left out of the mean (and its ``ap`` is None) and ``map_classes`` says how many
  classes the mean is over.
- At a threshold on the probability (default 0.5) and for the top-3 labels of each
  image (suffix ``_top3``): CP and CR, the per-class precision and recall averaged over
  all classes (a class with nothing predicted or nothing present counts 0, as
  scikit-learn's ``zero_division=0``); CF1 = 2 CP CR / (CP + CR); OP, OR and OF1 from
  the true / false positive counts pooled over classes.
- ``subset_accuracy`` (every label of an image right) and ``hamming_loss`` (the
  fraction of wrong labels), at the threshold.
- ``loss``: binary cross-entropy with logits, averaged over images and classes.

Figures are fractions in [0, 1]; papers print them x100 (ResNet-101 at 448x448 about
77.3 mAP on COCO 2014).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                       threshold: float = 0.5, top_k: int = 3) -> dict:
    from sklearn.metrics import accuracy_score, average_precision_score, hamming_loss

    logits = logits.float().cpu()
    truth = (targets.float().cpu() >= 0.5).numpy()  # soft (mixed) targets count as present from 0.5
    scores = torch.sigmoid(logits).numpy()
    samples, num_classes = truth.shape
    result = {
        "samples": int(samples),
        "loss": float(F.binary_cross_entropy_with_logits(logits, targets.float().cpu())) if samples else float("nan"),
    }
    aps = [None] * num_classes
    for c in range(num_classes):
        if truth[:, c].any():
            aps[c] = float(average_precision_score(truth[:, c], scores[:, c]))
    kept = [ap for ap in aps if ap is not None]
    result["map"] = float(np.mean(kept)) if kept else float("nan")
    result["map_classes"] = len(kept)

    predicted = scores >= threshold
    result.update(_counts_metrics(truth, predicted))
    k = min(top_k, num_classes)
    top = np.zeros_like(truth)
    if samples:
        np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :k], True, axis=1)
    result.update({f"{key}_top{top_k}": value for key, value in _counts_metrics(truth, top).items()})
    result["threshold"] = threshold
    result["subset_accuracy"] = float(accuracy_score(truth, predicted)) if samples else 0.0
    result["hamming_loss"] = float(hamming_loss(truth, predicted)) if samples else 0.0

    tp, fp, fn = _class_counts(truth, predicted)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    result["macro_f1"] = float(f1.mean())  # the mean of per-class F1s (differs from CF1)
    result["per_class"] = [
        {"class": name, "ap": ap, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, ap, p, r, f, s in zip(classes, aps, precision, recall, f1, truth.sum(0))
    ]
    return result


def _class_counts(truth: np.ndarray, predicted: np.ndarray):
    tp = (truth & predicted).sum(0).astype(np.float64)
    fp = (~truth & predicted).sum(0).astype(np.float64)
    fn = (truth & ~predicted).sum(0).astype(np.float64)
    return tp, fp, fn


def _ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _counts_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    tp, fp, fn = _class_counts(truth, predicted)
    cp = float(_ratio(tp, tp + fp).mean())
    cr = float(_ratio(tp, tp + fn).mean())
    op = float(_ratio(tp.sum(), tp.sum() + fp.sum()))
    overall_recall = float(_ratio(tp.sum(), tp.sum() + fn.sum()))
    return {"cp": cp, "cr": cr, "cf1": _f1(cp, cr), "op": op, "or": overall_recall,
            "of1": _f1(op, overall_recall)}


def running_subset_correct(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Images of a batch with every label right at ``threshold``, as a tensor (no host
    sync in the training step): the multi-label counterpart of ``running_accuracy``."""
    predicted = logits >= math.log(threshold / (1 - threshold))  # sigmoid(logit) >= threshold
    return (predicted == (targets >= 0.5)).all(1).sum()


SUMMARY_KEYS = ("map", "cf1", "of1", "cf1_top3", "of1_top3", "cp", "cr", "op", "or", "subset_accuracy",
                "hamming_loss", "loss")


def summary(metrics: dict) -> dict:
    """The scalar headline figures of a multi-label metrics dict."""
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
