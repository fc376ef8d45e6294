"""A tuning study's report: the best configuration against the base recipe's, the table of
trials, and Optuna's optimisation history, parameter importances and per-epoch values
(its matplotlib plots), in ``<out>/report/``: report.md, report.html (self-contained) and
figures/.

Optuna draws with pyplot and a style sheet of its own: each plot is drawn inside
``matplotlib.rc_context`` and its figure closed once saved, so pyplot's state and the
process's style are as they were.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime
from pathlib import Path

from ..errors import ReslabError
from ..experiments.tune import TuneSummary, load_study, redact, trials_table
from ..figures import save_figure
from ..runfs import atomic_write_text
from .report import _html, _markdown

logger = logging.getLogger(__name__)


def build_tune_report(summary: TuneSummary, out: Path, study=None) -> Path:
    """Write the report into ``out``; returns report.md's path."""
    out = Path(out)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create report folder {out}: {exc.strerror}") from None
    settings = summary.settings
    study = study or load_study(settings)
    figures, notes = tune_figures(study, out / "figures", settings.metric)
    title = f"Tuning study {settings.name}"
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    blocks: list[tuple] = [("h1", title), ("p", f"{summary.finished} of {settings.trials} trials finished ({counts}); "
                                                 f"report written {datetime.now():%Y-%m-%d %H:%M}.")]
    blocks += [("h2", "Best configuration"), ("ul", best_lines(summary))]
    blocks += [("h2", "Trials"), ("table", *trials_table(summary)),
               ("p", f"{settings.metric}: the trial's best epoch ({settings.direction}d); for val_* metrics each "
                     "epoch counts the better of the live and averaged weights, the ones reslab keeps. Pruned "
                     "trials show their last reported epoch. Every trial is a run folder under trials/.")]
    blocks += [("h2", "Search")] + [("img", path, caption) for path, caption in figures]
    if notes:
        blocks.append(("ul", notes))
    blocks += [("h2", "Setup"), ("ul", setup_lines(summary))]
    atomic_write_text(out / "report.md", _markdown(blocks, out))
    atomic_write_text(out / "report.html", _html(blocks, title))
    return out / "report.md"


def tune_text(summary: TuneSummary, best_file: Path | None, report: Path | None, shown: int = 20) -> str:
    """What the command line shows: the trials (the best ``shown`` when there are more),
    the best against the base recipe, and where the files are."""
    from ..experiments.tune import trials_markdown

    lines = [trials_markdown(summary if len(summary.rows) <= shown else _best_rows(summary, shown)), ""]
    if len(summary.rows) > shown:
        lines += [f"(the best {shown} of {len(summary.rows)} trials; all in {summary.settings.out / 'trials.csv'})", ""]
    lines += [f"- {line}" for line in best_lines(summary)]
    lines += ["", f"files: {summary.settings.out / 'trials.csv'}, trials.md, tune.json"
              + (", best.yaml" if best_file else "") + (f"; report: {report} and report.html" if report else "")]
    return "\n".join(lines)


def _best_rows(summary: TuneSummary, count: int) -> TuneSummary:
    import dataclasses

    scored = [row for row in summary.rows if row["value"] is not None]
    scored.sort(key=lambda row: row["value"], reverse=summary.settings.direction == "maximize")
    return dataclasses.replace(summary, rows=sorted(scored[:count], key=lambda row: row["trial"]))


def best_lines(summary: TuneSummary) -> list[str]:
    metric = summary.settings.metric
    best, baseline = summary.best, summary.baseline
    if best is None:
        return ["No trial has completed yet."]
    lines = [f"Trial {best['trial']}: {metric} {best['value']:.4f} after {best['epochs']} epochs; "
             + ", ".join(f"{k} = {_value(v)}" for k, v in best["params"].items()) + "."]
    if baseline is not None:
        gain = best["value"] - baseline["value"]
        lines.append(f"The base recipe's own values (trial {baseline['trial']}): {metric} {baseline['value']:.4f}; "
                     f"the best is {gain:+.4f} from it on the same budget.")
    lines.append(f"As a recipe: {summary.settings.out / 'best.yaml'} (reslab train --config "
                 f"{summary.settings.out / 'best.yaml'}).")
    return lines


def setup_lines(summary: TuneSummary) -> list[str]:
    settings = summary.settings
    lines = [f"Base recipe: {settings.recipe or 'the defaults'}"
             + (f", with {' '.join(settings.overrides)}" if settings.overrides else "") + ".",
             "Space: " + "; ".join(f"{p.key}: {p.describe()}" for p in settings.space) + ".",
             f"Sampler: Optuna TPE; pruner: {settings.pruner}; seed: {settings.seed}.",
             f"Storage: {redact(settings.storage)}, study {settings.name!r}."]
    workers = sorted({row["worker"] for row in summary.rows if row["worker"]})
    if workers:
        lines.append(f"Workers: {len(workers)} ({', '.join(workers[:6])}{', ...' if len(workers) > 6 else ''}).")
    return lines


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_figures(study, folder: Path, metric: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """Optuna's history, importance and per-epoch plots as PNGs; a note for each that the
    study cannot draw yet (importances need two complete trials that differ)."""
    import matplotlib
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    plots = [("history.png", optuna_plots.plot_optimization_history,
              f"Optimisation history: each trial's {metric} and the best so far", 1),
             ("importance.png", optuna_plots.plot_param_importances,
              f"Parameter importances for {metric} (Optuna's default evaluator)", 2),
             ("epochs.png", optuna_plots.plot_intermediate_values,
              f"{metric} per epoch of every trial (pruned ones stop early)", 1)]
    figures, notes = [], []
    for name, plot, caption, needed in plots:
        if len(complete) < needed:
            notes.append(f"{caption.split(':')[0].split(' for ')[0]}: needs {needed} complete trials.")
            continue
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
            try:
                axes = plot(study, target_name=metric) if name != "epochs.png" else plot(study)
            except Exception as exc:  # noqa: BLE001  (e.g. importances of parameters that never varied)
                notes.append(f"{caption.split(':')[0]}: not drawn ({str(exc).splitlines()[0][:120]}).")
                continue
            figure = _figure_of(axes)
            try:
                save_figure(figure, folder / name)
            finally:
                import matplotlib.pyplot as plt

                plt.close(figure)
        figures.append((folder / name, caption))
    return figures, notes


def _figure_of(axes):
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.figure
