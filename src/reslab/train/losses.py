"""Losses beyond PyTorch's: class-weighted cross-entropy for imbalanced data, and the
asymmetric loss for multi-label classification."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ReslabError


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with each image's loss weighed by its class's weight, then a plain mean.

    Not ``CrossEntropyLoss(weight=...)``, whose mean divides by the batch's summed weights:
    that makes the gradient depend on how a batch is split among processes or micro-batches.
    With weights whose mean over the training images is 1 (``balanced_weights``) the plain
    mean keeps the loss's scale, and so the learning rate's meaning. Soft targets (mixup,
    cutmix) weigh each image by its mix of classes.
    """

    def __init__(self, weights: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        self.weights: torch.Tensor
        self.register_buffer("weights", weights.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)
        weights = self.weights.to(logits.device)
        per_image = targets.float() @ weights if targets.is_floating_point() else weights[targets]
        return (losses * per_image).mean()


def balanced_weights(class_counts) -> torch.Tensor:
    """scikit-learn's "balanced" class weights, n / (classes x count); their mean over the
    images is 1. A class with no training image gets weight 0 (nothing to weigh)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification"), on logits
    and multi-hot (or soft) targets.

    With p = sigmoid(logit), per class:

        positive: L+ = (1 - p)^gamma_pos * log(p)
        negative: L- = p_m^gamma_neg * log(1 - p_m),  p_m = max(p - clip, 0)   (eq. 5-6)

    and the loss is -(y L+ + (1 - y) L-). Focusing (gamma_neg > gamma_pos) turns down the
    many easy negatives of an image with few labels; the probability margin ``clip``
    discards negatives with p < clip outright and so also the mislabelled ones with a
    very high p weigh less (§3.2). The paper's defaults: gamma_neg 4, gamma_pos 0, clip
    0.05. With gamma_neg = gamma_pos = clip = 0 this is binary cross-entropy.

    ``reduction``: "sum" (over images and classes) as the authors' code, "mean" (as
    ``BCEWithLogitsLoss``'s default) or "none". ``detach_focusing`` computes the focusing
    weights without gradient, the authors' ``disable_torch_grad_focal_loss`` option.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "sum", detach_focusing: bool = False):
        super().__init__()
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")
        if gamma_neg < 0 or gamma_pos < 0 or not 0 <= clip < 1:
            raise ValueError("gamma_neg and gamma_pos must not be negative and clip must be in [0, 1)")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.reduction = reduction
        self.detach_focusing = detach_focusing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        probability = torch.sigmoid(logits)
        if self.clip > 0:
            # 1 - p_m = min(1 - p + clip, 1): the shifted probability of a negative.
            not_shifted = (1 - probability + self.clip).clamp(max=1)
            log_negative = torch.log(not_shifted.clamp(min=self.eps))
        else:
            not_shifted = 1 - probability
            log_negative = F.logsigmoid(-logits)  # log(1 - p), exact where p rounds to 1
        log_positive = F.logsigmoid(logits)
        loss = targets * log_positive + (1 - targets) * log_negative
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(not self.detach_focusing and torch.is_grad_enabled()):
                base = 1 - (probability * targets + not_shifted * (1 - targets))  # 1 - p_t
                gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
                weight = torch.pow(base, gamma)
            loss = loss * weight
        loss = -loss
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.mean()
        return loss


def build_criterion(loss: str, multi_label: bool, label_smoothing: float = 0.0,
                    class_weights: torch.Tensor | None = None) -> nn.Module:
    """The training loss ``train.loss`` names (``auto``: cross-entropy, or BCE for multi-label
    targets), weighed by ``class_weights`` if given; a loss that cannot train the data's kind
    of targets is refused."""
    if class_weights is not None and multi_label:
        raise ReslabError("train.class_weights=balanced is for single-label data; multi-label losses (bce, "
                          "asymmetric) weigh each label on its own: leave it at none")
    if loss == "auto":
        loss = "bce" if multi_label else "cross_entropy"
    if multi_label and loss == "cross_entropy":
        raise ReslabError("train.loss=cross_entropy cannot train multi-label targets; use bce or asymmetric")
    if not multi_label and loss != "cross_entropy":
        raise ReslabError(f"train.loss={loss} is for multi-label data (coco); use cross_entropy")
    if loss == "cross_entropy" and class_weights is not None:
        return WeightedCrossEntropy(class_weights, label_smoothing)
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if label_smoothing:
        raise ReslabError(f"train.label_smoothing is for cross-entropy; train.loss={loss} (multi-label) does not "
                          "use it: set it to 0")
    # Means, not the ASL authors' sum: the global-batch rule needs a loss whose gradient does
    # not depend on how a batch is split among processes (and BCE's scale for the same lr).
    return nn.BCEWithLogitsLoss() if loss == "bce" else AsymmetricLoss(reduction="mean")
