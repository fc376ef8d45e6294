"""What differs between single-label (softmax, accuracy, F1) and multi-label (sigmoids, mAP)
evaluation: the running count of correct images, the metrics, and the score a best
checkpoint is chosen by. The loss that trains each kind is ``reslab.train.losses``'."""

from __future__ import annotations

import torch

from .metrics import classification_metrics, running_accuracy
from .multilabel import multilabel_metrics, running_subset_correct


class Task:
    def __init__(self, kind: str, classes: list[str], threshold: float = 0.5):
        self.multi_label = kind == "multi-label"
        self.classes = classes
        self.threshold = threshold

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Correct images in a batch, as a tensor (no host sync in the training step)."""
        if self.multi_label:
            return running_subset_correct(logits, targets.round() if targets.is_floating_point() else targets,
                                          self.threshold)
        if targets.ndim == 2:  # mixup / cutmix: soft targets, the larger share counts
            targets = targets.argmax(1)
        return running_accuracy(logits, targets)

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict:
        if self.multi_label:
            metrics = multilabel_metrics(logits, targets, self.classes, threshold=self.threshold)
            # The names single-label tables use: accuracy is exact-match (subset) accuracy,
            # macro precision / recall are CP / CR (means over classes).
            metrics.update(accuracy=metrics["subset_accuracy"], error=1 - metrics["subset_accuracy"],
                           macro_precision=metrics["cp"], macro_recall=metrics["cr"])
            return metrics
        return classification_metrics(logits, targets, self.classes)

    def score(self, metrics: dict) -> tuple[float, float]:
        """Higher is better: (mAP or accuracy, -loss)."""
        return (metrics["map"] if self.multi_label else metrics["accuracy"], -metrics["loss"])
