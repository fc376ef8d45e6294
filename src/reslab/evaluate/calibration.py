"""Are a classifier's probabilities calibrated? Guo et al., "On Calibration of Modern Neural
Networks" (ICML 2017): expected and maximum calibration error over 15 equal-width bins of
confidence (their §2, Eq. 3 and 5), negative log-likelihood, the Brier score, the
reliability diagram (their Fig. 1), and temperature scaling (their §4.2): one scalar T
fitted on the validation split by L-BFGS on the NLL, dividing the logits, which changes the
probabilities and never the predicted class.

A fitted temperature is stored beside the run as ``calibration.json`` (not in best.pt: the
training artifacts stay byte for byte what training wrote), with the SHA-256 of the
checkpoint it was fitted on; ``stored_temperature`` gives it to predict and serve only for
that very checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from ..checkpoint import best_or_last
from ..errors import ReslabError
from ..figures import new_figure, save_figure
from ..models.weights.hub import is_hub_source
from ..runfs import read_json

logger = logging.getLogger(__name__)

BINS = 15  # Guo et al.'s M
CALIBRATION_FILE = "calibration.json"
# The temperatures a fit may give and a stored file may hold. Fitted ones lie near 1 to 3;
# beyond these bounds a fit says only that the validation split cannot pin T down (all its
# images right drives T to 0), and a stored one is a damaged file.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


# ---------------------------------------------------------------- the measures


def reliability_bins(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> dict:
    """Per confidence bin ((m-1)/M, m/M]: the images in it, their mean confidence (the top
    probability) and their accuracy (None for an empty bin)."""
    confidence, predicted = probabilities.float().max(1)
    correct = (predicted == targets).float()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins)
    confidence_sum = torch.zeros(bins).index_add_(0, index, confidence)
    correct_sum = torch.zeros(bins).index_add_(0, index, correct)
    return {
        "bins": bins,
        "count": count.tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(confidence_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, count)],
    }


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> float:
    """Sum over bins of (share of images in the bin) x |accuracy - confidence| (Guo et al. Eq. 3)."""
    return _calibration_errors(reliability_bins(probabilities, targets, bins))[0]


def maximum_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> float:
    """The largest |accuracy - confidence| over the bins that hold images (Guo et al. Eq. 5)."""
    return _calibration_errors(reliability_bins(probabilities, targets, bins))[1]


def _calibration_errors(reliability: dict) -> tuple[float, float]:
    total = sum(reliability["count"])
    gaps = [(count, abs(accuracy - confidence))
            for count, accuracy, confidence in zip(reliability["count"], reliability["accuracy"],
                                                   reliability["confidence"]) if count]
    if not total:
        return math.nan, math.nan
    return sum(count * gap for count, gap in gaps) / total, max(gap for _, gap in gaps)


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean -log p(true class), from logits (log-softmax: no overflow)."""
    return float(F.cross_entropy(logits.float(), targets)) if len(targets) else math.nan


def brier_score(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot
    truth, summed over classes (Brier 1950's multi-class score: 0 is perfect, 2 the worst)."""
    if not len(targets):
        return math.nan
    truth = F.one_hot(targets, probabilities.shape[1]).float()
    return float((probabilities.float() - truth).square().sum(1).mean())


def calibration_metrics(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                        bins: int = BINS) -> dict:
    """ECE, MCE, NLL, Brier score and the reliability bins of single-label logits, divided by
    ``temperature`` first."""
    logits = logits.float().cpu() / temperature
    targets = targets.cpu()
    probabilities = torch.softmax(logits, 1)
    reliability = reliability_bins(probabilities, targets, bins)
    ece, mce = _calibration_errors(reliability)
    return {"ece": ece, "mce": mce, "nll": negative_log_likelihood(logits, targets),
            "brier": brier_score(probabilities, targets), "reliability": reliability}


# ---------------------------------------------------------------- temperature scaling


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (Guo et al. §4.2), by L-BFGS on
    log T (the NLL is convex in 1/T, and log T keeps T positive), kept within
    MIN_TEMPERATURE..MAX_TEMPERATURE."""
    if len(targets) == 0:
        raise ReslabError("temperature scaling needs validation images; the split is empty")
    logits = logits.detach().double().cpu().clone()  # a normal tensor, even from inference mode
    targets = targets.detach().cpu().clone()
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return min(max(float(log_temperature.detach().exp()), MIN_TEMPERATURE), MAX_TEMPERATURE)


# ---------------------------------------------------------------- figures


def plot_reliability(reliability: dict, path: Path, title: str = "") -> None:
    """Guo et al.'s Fig. 1 for one model: accuracy per confidence bin against the diagonal
    (the gap shaded), and below it how many images fall in each bin."""
    figure, (top, bottom) = new_figure(2, 1, size=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    _draw_reliability(top, bottom, reliability, title)
    save_figure(figure, path)


def plot_calibration(before: dict, after: dict, temperature: float, path: Path, title: str = "") -> None:
    """Reliability diagrams side by side: as trained, and after temperature scaling."""
    figure, axes = new_figure(2, 2, size=(10, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    _draw_reliability(axes[0, 0], axes[1, 0], before["reliability"],
                      f"as trained: ECE {100 * before['ece']:.2f}%, NLL {before['nll']:.3f}")
    _draw_reliability(axes[0, 1], axes[1, 1], after["reliability"],
                      f"T = {temperature:.3f}: ECE {100 * after['ece']:.2f}%, NLL {after['nll']:.3f}")
    figure.suptitle(title)
    save_figure(figure, path)


def _draw_reliability(top, bottom, reliability: dict, title: str) -> None:
    bins = reliability["bins"]
    width = 1.0 / bins
    filled = [(m, a, c) for m, (a, c) in enumerate(zip(reliability["accuracy"], reliability["confidence"]))
              if a is not None]
    centres = [(m + 0.5) * width for m, _, _ in filled]
    accuracy = [a for _, a, _ in filled]
    confidence = [c for _, _, c in filled]
    top.bar(centres, accuracy, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(centres, [abs(c - a) for a, c in zip(accuracy, confidence)],
            bottom=[min(a, c) for a, c in zip(accuracy, confidence)], width=width, edgecolor="tab:red",
            color="tab:red", alpha=0.3, hatch="//", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=10)
    total = max(sum(reliability["count"]), 1)
    bottom.bar([(m + 0.5) * width for m in range(bins)], [c / total for c in reliability["count"]], width=width,
               edgecolor="black", color="grey")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("share of images")


# ---------------------------------------------------------------- the stored temperature


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(checkpoint: Path) -> tuple[Path, Path | None]:
    """(the checkpoint file, its run folder or None) for a run folder or a .pt path; a hub
    folder is its own file, outside any run."""
    if is_hub_source(str(checkpoint)):
        return Path(checkpoint), None
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return best_or_last(checkpoint), checkpoint
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "config.yaml").is_file():
        return checkpoint, checkpoint.parent.parent
    return checkpoint, None


def temperature_problem(value) -> str | None:
    """Why ``value`` is no stored temperature (not a number, or beyond the bounds), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"its temperature is not a number (a {type(value).__name__})"
    if not (math.isfinite(value) and MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        return f"its temperature {value!r} is outside {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}"
    return None


def read_calibration(checkpoint: Path) -> dict | None:
    """The run's calibration.json when it was fitted on this very checkpoint file, else None
    (a warning says when one exists for another checkpoint or cannot be used)."""
    path, run_dir = resolve_checkpoint(checkpoint)
    if run_dir is None or not (run_dir / CALIBRATION_FILE).exists():
        return None
    source = run_dir / CALIBRATION_FILE
    try:
        stored = read_json(source, "calibration file")  # a huge file is refused unread
    except ReslabError as exc:
        logger.warning("%s; probabilities are not temperature-scaled: run reslab calibrate %s again", exc, run_dir)
        return None
    problem = temperature_problem(stored.get("temperature"))
    if problem is None and not all(isinstance(stored.get(key), str) for key in ("checkpoint", "checkpoint_sha256")):
        problem = "it does not name the checkpoint it was fitted on"
    if problem:
        logger.warning("calibration file %s is damaged: %s; probabilities are not temperature-scaled: run reslab "
                       "calibrate %s again", source, problem, run_dir)
        return None
    if Path(stored["checkpoint"]).name != path.name:
        return None  # fitted for another checkpoint of the run (best.pt, and this is an epoch file)
    if checkpoint_digest(path) != stored["checkpoint_sha256"]:
        logger.warning("%s was fitted on another %s (the file changed since); probabilities are not "
                       "temperature-scaled: run reslab calibrate %s again", source, path.name, run_dir)
        return None
    return {**stored, "temperature": float(stored["temperature"]), "path": str(source)}


def stored_temperature(checkpoint: Path) -> float | None:
    """The temperature ``reslab calibrate`` fitted for this checkpoint, or None."""
    stored = read_calibration(checkpoint)
    return None if stored is None else stored["temperature"]
