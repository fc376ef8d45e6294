"""``reslab calibrate RUN``: temperature scaling fitted on a run's validation split (Guo et
al. 2017, §4.2), judged on its test split, stored beside the run for predict and serve.

Written into the run folder: ``calibration.json`` (the temperature, the checkpoint it was
fitted on and its SHA-256, ECE / MCE / NLL / Brier before and after on both splits) and
``calibration.png`` (the test split's reliability diagrams before and after). best.pt is
never rewritten; ``calibration.json`` replaces an older one atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ReslabError
from ..runfs import atomic_write_json, check_writable
from .calibration import (
    CALIBRATION_FILE,
    calibration_metrics,
    checkpoint_digest,
    fit_temperature,
    plot_calibration,
    resolve_checkpoint,
)
from .runner import load_for_evaluation

logger = logging.getLogger(__name__)

FIGURE = "calibration.png"


def calibrate_run(run: Path | str, device: str = "auto", data_root: str | None = None) -> dict:
    """Fit the temperature of ``run``'s checkpoint (a run folder: its best; or a .pt in its
    checkpoints/), write calibration.json and calibration.png into the run folder; returns
    what calibration.json holds."""
    run = Path(run)
    if not run.exists():
        raise ReslabError(f"{run} does not exist; give a run folder")
    path, run_dir = resolve_checkpoint(run)
    if run_dir is None:
        raise ReslabError(f"{run} is not in a run folder; calibrate writes calibration.json into the run folder, "
                          "so give the run folder (or a checkpoint in its checkpoints/)")
    check_run_outputs(run_dir)  # before the evaluation, not after it
    with load_for_evaluation(path, data_root=data_root, device=device) as loaded:
        if loaded.task.multi_label:
            raise ReslabError(f"{run} is a multi-label checkpoint; temperature scaling here is for softmax "
                              "(single-label) classifiers")
        if loaded.bundle.val is None:
            raise ReslabError(f"{run} has no validation split (data.val_size=0); the temperature is fitted on "
                              "validation images, never on the test split")
        logits = {split: loaded.logits(loaded.loader(split)) for split in ("val", "test")}
        model, dataset = loaded.meta["model"], loaded.config.data.name
    temperature = fit_temperature(*logits["val"])
    before = {split: calibration_metrics(*pair) for split, pair in logits.items()}
    after = {split: calibration_metrics(*pair, temperature=temperature) for split, pair in logits.items()}
    record = {
        "temperature": temperature,
        "checkpoint": path.relative_to(run_dir).as_posix() if path.is_relative_to(run_dir) else path.name,
        "checkpoint_sha256": checkpoint_digest(path),
        "model": model, "dataset": dataset,
        "method": "temperature scaling (Guo et al. 2017): logits / T, T fitted by L-BFGS on the validation NLL",
        "fitted_on": "val", "images": {split: len(pair[1]) for split, pair in logits.items()},
        "before": before, "after": after, "figure": FIGURE,
    }
    target = run_dir / FIGURE
    try:
        plot_calibration(before["test"], after["test"], temperature, target,
                         title=f"{model} on {dataset}: test split, before and after temperature scaling")
        target = run_dir / CALIBRATION_FILE
        atomic_write_json(target, record)  # last: what predict and serve read
    except OSError as exc:
        raise ReslabError(f"cannot write {target}: {exc.strerror or exc}; {CALIBRATION_FILE} is as it was "
                          "before") from None
    logger.info("temperature %.4f fitted on %d validation images of %s; stored in %s", temperature,
                record["images"]["val"], run_dir, run_dir / CALIBRATION_FILE)
    return record


def check_run_outputs(run_dir: Path) -> None:
    """calibration.json and calibration.png can be written into ``run_dir``: each a file or
    absent, in a folder this user may write to."""
    for name in (CALIBRATION_FILE, FIGURE):
        target = run_dir / name
        if target.exists() and not target.is_file():
            raise ReslabError(f"{target} exists and is not a file; calibrate writes its {name} there: move it away "
                              "first")
    try:
        check_writable(run_dir)
    except ReslabError:
        raise ReslabError(f"run folder {run_dir} is not writable; calibrate writes calibration.json there: make it "
                          "writable, or calibrate a copy of the run folder") from None


def calibration_table(record: dict) -> str:
    """What the command line shows: the four measures before and after, per split."""
    lines = [f"{record['model']} on {record['dataset']}: temperature T = {record['temperature']:.4f} "
             f"(fitted on {record['images']['val']:,} validation images)", "",
             f"  {'split':<6} {'':<7} {'ECE (%)':>8} {'MCE (%)':>8} {'NLL':>8} {'Brier':>8}"]
    for split in ("val", "test"):
        for when in ("before", "after"):
            m = record[when][split]
            lines.append(f"  {split if when == 'before' else '':<6} {when:<7} {100 * m['ece']:>8.2f} "
                         f"{100 * m['mce']:>8.2f} {m['nll']:>8.4f} {m['brier']:>8.4f}")
    return "\n".join(lines)
