"""The main job, ``reslab demo``: ResNet-20 and Plain-20 trained on the embedded digits with
the ``demo-digits`` recipe into one folder, compared in a table and in He et al.'s Fig. 6
error curves."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..config import load
from ..runfs import new_run_dir
from ..train.loop import train
from ..train.run_folder import RunResult
from .compare import comparison_rows, plot_error_curves, write_comparison

logger = logging.getLogger(__name__)

MODELS = ("resnet20", "plain20")
NOTE = ("Test split: 20% of the 1,797 digits held out (data.split_seed 0); best epoch chosen on a 10% "
        "validation split; error = 1 - accuracy; precision, recall and F1 are macro averages.")


@dataclass
class DemoResult:
    folder: Path
    results: list[RunResult]
    table: str  # the comparison, in Markdown

    @property
    def run_dirs(self) -> list[Path]:
        return [result.run_dir for result in self.results]


def run_demo(out: Path, epochs: int | None = None, progress: bool = True) -> DemoResult:
    folder = new_run_dir(Path(out), f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    results = []
    for model in MODELS:
        overrides = [f"model.name={model}", f"output.dir={folder}", f"output.name={model}"]
        if epochs:
            overrides.append(f"train.epochs={epochs}")
        logger.info("== training %s on scikit-learn's digits ==", model)
        results.append(train(load("demo-digits", overrides), progress=progress))
    table = write_comparison(comparison_rows([r.metrics for r in results]), folder, NOTE)
    plot_error_curves({r.metrics["model"]: r.history for r in results}, folder / "error_curves.png",
                      title="ResNet-20 vs Plain-20 on digits")
    return DemoResult(folder, results, table)
