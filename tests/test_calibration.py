"""Calibration (reslab.evaluate.calibration): ECE, MCE, NLL and Brier score against values
computed by hand and by an independent implementation; temperature scaling that finds a
known temperature and repairs overconfident logits; a stored temperature applied only to
the checkpoint it was fitted on."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from reslab.evaluate.calibration import (
    brier_score,
    calibration_metrics,
    checkpoint_digest,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    negative_log_likelihood,
    plot_calibration,
    plot_reliability,
    reliability_bins,
    stored_temperature,
)
from reslab.evaluate.metrics import classification_metrics

# Four images, three classes: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.35 (right).
PROBABILITIES = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.35, 0.33, 0.32]])
TARGETS = torch.tensor([0, 1, 0, 0])


def test_ece_and_mce_by_hand():
    # bins of width 1/15: 0.9 falls in (13/15, 14/15], 0.6 in (8/15, 9/15], 0.35 in (5/15, 6/15]
    # ECE = 2/4 |0.5 - 0.9| + 1/4 |1 - 0.6| + 1/4 |1 - 0.35| = 0.2 + 0.1 + 0.1625
    assert expected_calibration_error(PROBABILITIES, TARGETS) == pytest.approx(0.4625)
    assert maximum_calibration_error(PROBABILITIES, TARGETS) == pytest.approx(0.65)
    bins = reliability_bins(PROBABILITIES, TARGETS)
    assert bins["count"][13] == 2 and bins["count"][8] == 1 and bins["count"][5] == 1 and sum(bins["count"]) == 4
    assert bins["accuracy"][13] == pytest.approx(0.5) and bins["confidence"][8] == pytest.approx(0.6)
    assert bins["accuracy"][0] is None  # an empty bin


def test_nll_and_brier_by_hand():
    logits = PROBABILITIES.log()  # softmax(log p) = p
    nll = -(math.log(0.9) + math.log(0.05) + math.log(0.6) + math.log(0.35)) / 4
    assert negative_log_likelihood(logits, TARGETS) == pytest.approx(nll, rel=1e-6)
    brier = ((0.1 ** 2 + 0.05 ** 2 * 2) + (0.9 ** 2 + 0.95 ** 2 + 0.05 ** 2) + (0.4 ** 2 + 0.3 ** 2 + 0.1 ** 2)
             + (0.65 ** 2 + 0.33 ** 2 + 0.32 ** 2)) / 4
    assert brier_score(PROBABILITIES, TARGETS) == pytest.approx(brier, rel=1e-6)


def independent_ece(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """Guo et al.'s definitions written out with explicit bin edges (lo, hi]."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == targets
    edges = np.linspace(0, 1, bins + 1)
    ece, mce = 0.0, 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            ece += inside.mean() * gap
            mce = max(mce, gap)
    return ece, mce


def test_metrics_agree_with_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=generator) * 3
    targets = torch.randint(0, 10, (2000,), generator=generator)
    metrics = calibration_metrics(logits, targets)
    probabilities = torch.softmax(logits.double(), 1).numpy()
    ece, mce = independent_ece(probabilities, targets.numpy())
    assert metrics["ece"] == pytest.approx(ece, abs=1e-5)
    assert metrics["mce"] == pytest.approx(mce, abs=1e-5)
    assert metrics["nll"] == pytest.approx(log_loss(targets.numpy(), probabilities, labels=list(range(10))), rel=1e-5)
    one_hot = np.eye(10)[targets.numpy()]
    assert metrics["brier"] == pytest.approx(((probabilities - one_hot) ** 2).sum(1).mean(), rel=1e-5)


@pytest.mark.parametrize("scale", [0.5, 2.0, 5.0])  # under-, roughly and over-confident logits
def test_ece_and_mce_agree_with_torchmetrics(scale):
    """torchmetrics' MulticlassCalibrationError (15 equal-width bins; norm l1 is the ECE, max
    the MCE) on the same logits. Its bins are [lo, hi) where Guo et al.'s are (lo, hi]: a
    confidence on an edge, or of exactly 1 (a bin of its own there), would be binned
    differently, and random float64 logits of this size reach neither."""
    from torchmetrics.classification import MulticlassCalibrationError

    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3000, 10, generator=generator, dtype=torch.float64) * scale
    targets = torch.randint(0, 10, (3000,), generator=generator)
    probabilities = torch.softmax(logits, 1)
    assert bool((probabilities.max(1).values < 1).all())
    ours = calibration_metrics(logits, targets)
    for norm, key in (("l1", "ece"), ("max", "mce")):
        reference = MulticlassCalibrationError(num_classes=10, n_bins=15, norm=norm)(probabilities, targets)
        assert ours[key] == pytest.approx(float(reference), abs=2e-6), norm


def test_every_single_label_evaluation_reports_calibration():
    metrics = classification_metrics(PROBABILITIES.log(), TARGETS, ["a", "b", "c"])
    assert metrics["ece"] == pytest.approx(0.4625) and metrics["mce"] == pytest.approx(0.65)
    assert metrics["nll"] == pytest.approx(metrics["loss"], rel=1e-6)  # NLL is the cross-entropy
    assert sum(metrics["reliability"]["count"]) == 4
    json.dumps(metrics)  # goes into metrics.json as it is


def labels_from(logits: torch.Tensor, temperature: float, seed: int) -> torch.Tensor:
    """Labels drawn from softmax(logits / temperature): a model calibrated at that temperature."""
    return torch.multinomial(torch.softmax(logits / temperature, 1), 1,
                             generator=torch.Generator().manual_seed(seed)).squeeze(1)


def test_temperature_scaling_recovers_a_known_temperature():
    logits = torch.randn(8000, 10, generator=torch.Generator().manual_seed(1)) * 4
    for true_temperature in (0.5, 2.5):
        fitted = fit_temperature(logits, labels_from(logits, true_temperature, seed=2))
        assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_temperature_scaling_repairs_overconfident_logits_without_changing_predictions():
    logits = torch.randn(5000, 10, generator=torch.Generator().manual_seed(3)) * 2
    targets = labels_from(logits, 1.0, seed=4)
    overconfident = 4 * logits
    with torch.inference_mode():  # logits as evaluation hands them over
        handed = overconfident.clone()
    temperature = fit_temperature(handed, targets)
    before = calibration_metrics(overconfident, targets)
    after = calibration_metrics(overconfident, targets, temperature)
    assert temperature > 2.5
    assert after["nll"] < before["nll"] - 0.5 and after["ece"] < before["ece"] / 3
    assert torch.equal((overconfident / temperature).argmax(1), overconfident.argmax(1))


def test_reliability_figures_are_written(tmp_path):
    metrics = calibration_metrics(PROBABILITIES.log(), TARGETS)
    plot_reliability(metrics["reliability"], tmp_path / "reliability.png", title="t")
    plot_calibration(metrics, calibration_metrics(PROBABILITIES.log(), TARGETS, 2.0), 2.0, tmp_path / "both.png")
    for name in ("reliability.png", "both.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_run(tmp_path, temperature=1.7):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(b"weights")
    (run / "calibration.json").write_text(json.dumps({"temperature": temperature, "checkpoint": "checkpoints/best.pt",
                                                      "checkpoint_sha256": checkpoint_digest(best)}))
    return run, best


def test_a_stored_temperature_applies_to_its_own_checkpoint_only(tmp_path, caplog):
    run, best = fake_run(tmp_path)
    assert stored_temperature(run) == pytest.approx(1.7)
    assert stored_temperature(best) == pytest.approx(1.7)
    epoch = run / "checkpoints" / "epoch-0001.pt"
    epoch.write_bytes(b"other weights")
    assert stored_temperature(epoch) is None
    best.write_bytes(b"retrained weights")
    module_logger = logging.getLogger("reslab.evaluate.calibration")
    module_logger.addHandler(caplog.handler)  # the CLI stops reslab's records at its own handler
    try:
        assert stored_temperature(run) is None
    finally:
        module_logger.removeHandler(caplog.handler)
    assert "reslab calibrate" in caplog.text


@pytest.mark.parametrize("bad", [0.0, -1.0, "warm"])
def test_a_bad_stored_temperature_is_ignored(tmp_path, bad):
    run, _ = fake_run(tmp_path, temperature=bad)
    assert stored_temperature(run) is None
