"""Multi-label metrics (mAP, CP/CR/CF1, OP/OR/OF1, top-k, subset accuracy, Hamming loss)
and the asymmetric loss, against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, hamming_loss, precision_recall_fscore_support

from reslab.evaluate.multilabel import multilabel_metrics, running_subset_correct, summary
from reslab.train.losses import AsymmetricLoss, build_criterion

CLASSES = ["cat", "dog", "car"]
TARGETS = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
SCORES = torch.tensor([[0.9, 0.2, 0.6], [0.4, 0.7, 0.3], [0.6, 0.4, 0.1], [0.3, 0.8, 0.2]])
LOGITS = torch.logit(SCORES)


def test_average_precision_by_hand():
    metrics = multilabel_metrics(LOGITS, TARGETS, CLASSES)
    # cat: both positives ranked first -> 1. dog: ranks 2 and 3 -> (1/2 + 2/3) / 2. car: rank 1 -> 1.
    assert [c["ap"] for c in metrics["per_class"]] == pytest.approx([1.0, 7 / 12, 1.0])
    assert metrics["map"] == pytest.approx(31 / 36) and metrics["map_classes"] == 3


def test_threshold_metrics_by_hand():
    metrics = multilabel_metrics(LOGITS, TARGETS, CLASSES, threshold=0.5)
    # Predicted at 0.5: [1,0,1] [0,1,0] [1,0,0] [0,1,0]. Per class (TP, FP, FN): cat (2,0,0),
    # dog (1,1,1), car (1,0,0); pooled (4,1,1).
    assert metrics["cp"] == pytest.approx(5 / 6) and metrics["cr"] == pytest.approx(5 / 6)
    assert metrics["cf1"] == pytest.approx(5 / 6)
    assert metrics["op"] == pytest.approx(0.8) and metrics["or"] == pytest.approx(0.8)
    assert metrics["of1"] == pytest.approx(0.8)
    assert metrics["subset_accuracy"] == pytest.approx(0.5)  # images 0 and 1 exactly right
    assert metrics["hamming_loss"] == pytest.approx(2 / 12)
    assert metrics["per_class"][1] == {"class": "dog", "ap": pytest.approx(7 / 12), "precision": 0.5,
                                       "recall": 0.5, "f1": 0.5, "support": 2}
    assert metrics["macro_f1"] == pytest.approx(5 / 6) and metrics["samples"] == 4


def test_top_k_metrics_by_hand():
    metrics = multilabel_metrics(LOGITS, TARGETS, CLASSES, top_k=2)
    # Top-2 labels: {cat, car} {dog, cat} {cat, dog} {dog, cat}. Per class (TP, FP, FN):
    # cat (2,2,0), dog (2,1,0), car (1,0,0); pooled (5,3,0).
    cp = (1 / 2 + 2 / 3 + 1) / 3
    assert metrics["cp_top2"] == pytest.approx(cp) and metrics["cr_top2"] == pytest.approx(1.0)
    assert metrics["cf1_top2"] == pytest.approx(2 * cp / (cp + 1))
    assert metrics["op_top2"] == pytest.approx(5 / 8) and metrics["or_top2"] == pytest.approx(1.0)
    assert metrics["of1_top2"] == pytest.approx(10 / 13)


def test_the_loss_is_binary_cross_entropy_with_logits():
    metrics = multilabel_metrics(LOGITS, TARGETS, CLASSES)
    expected = -(TARGETS * SCORES.log() + (1 - TARGETS) * (1 - SCORES).log()).mean()
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_against_scikit_learn_and_a_class_without_positives_is_left_out_of_the_map():
    generator = np.random.default_rng(0)
    truth = (generator.random((60, 6)) < 0.3).astype(np.float32)
    truth[:, 4] = 0  # no image has class 4
    logits = generator.normal(size=(60, 6)) + 1.5 * truth
    classes = [f"c{i}" for i in range(6)]
    metrics = multilabel_metrics(torch.tensor(logits), torch.tensor(truth), classes, threshold=0.4)
    scores = 1 / (1 + np.exp(-logits))
    expected = [average_precision_score(truth[:, c], scores[:, c]) for c in range(6) if c != 4]
    assert metrics["map"] == pytest.approx(np.mean(expected)) and metrics["map_classes"] == 5
    assert metrics["per_class"][4]["ap"] is None and metrics["per_class"][4]["support"] == 0
    predicted = scores >= 0.4
    for average, prefix in (("macro", "c"), ("micro", "o")):
        precision, recall, _, _ = precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)
        assert metrics[f"{prefix}p"] == pytest.approx(precision) and metrics[f"{prefix}r"] == pytest.approx(recall)
    assert metrics["subset_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert set(summary(metrics)) >= {"map", "cf1", "of1", "cf1_top3", "of1_top3", "loss"}


def test_running_subset_correct_counts_images_with_every_label_right():
    assert int(running_subset_correct(LOGITS, TARGETS)) == 2


# ---------------------------------------------------------------- asymmetric loss


def test_asymmetric_loss_without_focusing_or_margin_is_binary_cross_entropy():
    logits, targets = torch.randn(5, 7), (torch.rand(5, 7) < 0.3).float()
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)
    assert torch.allclose(plain(logits, targets), torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets, reduction="sum"))
    mean = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, reduction="mean")
    assert torch.allclose(mean(logits, targets), torch.nn.BCEWithLogitsLoss()(logits, targets))


def test_asymmetric_loss_by_hand():
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="none")
    values = loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))  # p = 0.5 for both
    positive = -(1 - 0.5) ** 1 * math.log(0.5)
    negative = -(0.45**4) * math.log(1 - 0.45)  # shifted probability p_m = 0.5 - 0.05
    assert values[0].tolist() == pytest.approx([positive, negative])


def test_asymmetric_loss_discards_easy_negatives_below_the_margin():
    logits = torch.tensor([[torch.logit(torch.tensor(0.03)).item(), 2.0]], requires_grad=True)
    targets = torch.zeros(1, 2)
    values = AsymmetricLoss(reduction="none")(logits, targets)
    values.sum().backward()
    assert values[0, 0] == 0 and logits.grad[0, 0] == 0 and values[0, 1] > 0


def test_asymmetric_loss_gradients_stay_finite_at_saturated_logits():
    logits = torch.tensor([[40.0, -40.0, 40.0, -40.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_the_asymmetric_loss_is_a_mean_so_a_split_batch_gives_the_same_gradient_scale():
    criterion = build_criterion("asymmetric", multi_label=True)
    logits = torch.randn(8, 5)
    targets = (torch.rand(8, 5) > 0.7).float()
    halves = (criterion(logits[:4], targets[:4]) + criterion(logits[4:], targets[4:])) / 2
    assert criterion(logits, targets) == pytest.approx(halves.item(), rel=1e-5)
