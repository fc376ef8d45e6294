"""A tuning study's outcome: the study's trials as a table (summarize), the files in the
tune folder (best.yaml, trials.csv, trials.md, tune.json), and the report in
``<out>/report/``: the best configuration against the base recipe's, the table of trials,
and Optuna's optimisation history, parameter importances and per-epoch values (its
matplotlib plots), as report.md, report.html (self-contained) and figures/.

Optuna draws with pyplot and a style sheet of its own: each plot is drawn inside
``matplotlib.rc_context`` and its figure closed once saved, so pyplot's state and the
process's style are as they were.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from ..config import RunConfig
from ..document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    csv_records,
    html_page,
    markdown,
    markdown_table,
)
from ..errors import ReslabError
from ..experiments.tune import (
    Ledger,
    TuneSettings,
    first_attempt,
    load_study,
    params_text,
    redact,
    retry_history,
    trial_config,
)
from ..figures import save_figure
from ..runfs import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the study's trials


@dataclass
class TuneSummary:
    settings: TuneSettings
    rows: list[dict]  # one per trial, in order
    best: dict | None
    baseline: dict | None
    counts: dict[str, int]
    finished: int

    @property
    def done(self) -> bool:
        return self.finished >= self.settings.trials


def summarize(settings: TuneSettings, study=None) -> TuneSummary:
    """The study's trials as a table, its best and baseline trials."""
    study = study or load_study(settings)
    trials = study.get_trials(deepcopy=False)
    ledger = Ledger(trials)
    retried_as = {retry_history(t)[-1]: t.number for t in trials if retry_history(t)}
    rows = [_trial_row(t, settings, retried_as) for t in trials]
    complete = [row for row in rows if row["state"] == "complete"]
    best = None
    if complete:
        pick = min if settings.direction == "minimize" else max
        best = pick(complete, key=lambda row: (row["value"], -row["trial"] if pick is max else row["trial"]))
    baseline = next((row for row in rows if row["baseline"] and row["state"] == "complete"), None)
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return TuneSummary(settings, rows, best, baseline, counts, ledger.finished)


def _trial_row(trial, settings: TuneSettings, retried_as: dict[int, int]) -> dict:
    state = {"fail": "failed"}.get(trial.state.name.lower(), trial.state.name.lower())
    if trial.user_attrs.get("surplus"):
        state, note = "unused", "not run: the budget was full"
    elif trial.number in retried_as:
        state, note = "stopped", f"stopped; resumed as trial {retried_as[trial.number]}"
    elif first_attempt(trial) is not None:
        note = f"resumes trial {first_attempt(trial)}"
        if trial.user_attrs.get("resumed_after_epoch"):
            note += f" after epoch {trial.user_attrs['resumed_after_epoch']}"
    elif trial.user_attrs.get("error"):
        note = trial.user_attrs["error"].splitlines()[0][:160]
    elif state == "pruned" and trial.intermediate_values:
        note = f"pruned after epoch {max(trial.intermediate_values)}"
    else:
        note = ""
    if trial.user_attrs.get("baseline"):
        note = "the recipe's values" + (f"; {note}" if note else "")
    value = trial.value if state == "complete" else (
        trial.intermediate_values[max(trial.intermediate_values)] if state == "pruned" and trial.intermediate_values
        else None)
    return {"trial": trial.number, "state": state, "value": value, "epochs": trial.user_attrs.get("epochs"),
            "params": dict(trial.params), "baseline": bool(trial.user_attrs.get("baseline")), "note": note,
            "run_dir": trial.user_attrs.get("run_dir"), "seconds": trial.user_attrs.get("seconds"),
            "worker": trial.user_attrs.get("worker")}


def trials_table(summary: TuneSummary) -> Table:
    keys = [p.key for p in summary.settings.space]
    headers = ["trial", "state", summary.settings.metric, "epochs", *keys, "note"]
    body = []
    for row in summary.rows:
        body.append([str(row["trial"]), row["state"], "–" if row["value"] is None else f"{row['value']:.4f}",
                     "–" if row["epochs"] is None else str(row["epochs"]),
                     *[_cell(row["params"].get(k)) for k in keys], row["note"]])
    return Table(headers, body, align=["left" if i in (1, len(headers) - 1) else "right"  # state and note
                                       for i in range(len(headers))])


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_markdown(summary: TuneSummary) -> str:
    return markdown_table(trials_table(summary))


# ---------------------------------------------------------------- the tune folder's files


def best_recipe(summary: TuneSummary) -> dict:
    """The best trial's config as a recipe: the base recipe, the overrides and the best
    values, with the output folder left to whoever trains it."""
    config = trial_config(summary.settings, summary.best["params"], Path("runs") / "x")
    config.output.dir = RunConfig().output.dir
    config.output.name = None
    return config.to_dict()


def write_outputs(summary: TuneSummary) -> dict[str, Path]:
    """best.yaml (a recipe: ``reslab train --config <out>/best.yaml``), trials.csv,
    trials.md and tune.json in the tune folder."""
    settings, out = summary.settings, summary.settings.out
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    if summary.best is not None:
        best = summary.best
        baseline = summary.baseline
        header = [f"reslab tune: the best of {summary.finished} finished trials of study {settings.name!r}: trial "
                  f"{best['trial']}, {settings.metric} {best['value']:.4f}"
                  + (f" (the base recipe's values, trial {baseline['trial']}: {baseline['value']:.4f})"
                     if baseline else ""),
                  f"base: {settings.recipe or 'defaults'}" + (f" with {' '.join(settings.overrides)}"
                                                              if settings.overrides else ""),
                  f"tuned: {params_text(best['params'])}",
                  f"train it: reslab train --config {out / 'best.yaml'}"]
        text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(best_recipe(summary), sort_keys=False)
        atomic_write_text(out / "best.yaml", text)
        written["best"] = out / "best.yaml"
    keys = [p.key for p in settings.space]
    fields = ["trial", "state", settings.metric, "epochs", *keys, "note", "seconds", "worker", "run_dir"]
    records = [{**row, settings.metric: row["value"], **{k: row["params"].get(k) for k in keys}}
               for row in summary.rows]
    atomic_write_text(out / "trials.csv", csv_records(records, fields))
    atomic_write_text(out / "trials.md", trials_markdown(summary) + "\n")
    atomic_write_json(out / "tune.json", {
        "study": settings.name, "storage": redact(settings.storage), "metric": settings.metric,
        "direction": settings.direction, "budget": settings.trials, "finished": summary.finished,
        "counts": summary.counts, "recipe": settings.recipe, "overrides": settings.overrides,
        "space": {p.key: {p.kind: p.values} for p in settings.space}, "best": summary.best,
        "baseline": summary.baseline, "trials": summary.rows})
    written.update(csv=out / "trials.csv", markdown=out / "trials.md", json=out / "tune.json")
    return written


# ---------------------------------------------------------------- the report


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
    blocks: list[Block] = [Heading(title), Paragraph(f"{summary.finished} of {settings.trials} trials finished "
                                                     f"({counts}); report written {datetime.now():%Y-%m-%d %H:%M}.")]
    blocks += [Heading("Best configuration", 2), Bullets(best_lines(summary))]
    blocks += [Heading("Trials", 2), trials_table(summary),
               Paragraph(f"{settings.metric}: the trial's best epoch ({settings.direction}d); for val_* metrics "
                         "each epoch counts the better of the live and averaged weights, the ones reslab keeps. "
                         "Pruned trials show their last reported epoch. Every trial is a run folder under trials/.")]
    blocks += [Heading("Search", 2)] + [Figure(path, caption) for path, caption in figures]
    if notes:
        blocks.append(Bullets(notes))
    blocks += [Heading("Setup", 2), Bullets(setup_lines(summary))]
    atomic_write_text(out / "report.md", markdown(blocks, out))
    atomic_write_text(out / "report.html", html_page(blocks, title))
    return out / "report.md"


def tune_text(summary: TuneSummary, best_file: Path | None, report: Path | None, shown: int = 20) -> str:
    """What the command line shows: the trials (the best ``shown`` when there are more),
    the best against the base recipe, and where the files are."""
    blocks: list[Block] = [trials_table(summary if len(summary.rows) <= shown else _best_rows(summary, shown))]
    if len(summary.rows) > shown:
        blocks.append(Paragraph(f"(the best {shown} of {len(summary.rows)} trials; all in "
                                f"{summary.settings.out / 'trials.csv'})"))
    blocks += [Bullets(best_lines(summary)),
               Paragraph(f"files: {summary.settings.out / 'trials.csv'}, trials.md, tune.json"
                         + (", best.yaml" if best_file else "") + (f"; report: {report} and report.html" if report
                                                                   else ""))]
    return markdown(blocks).removesuffix("\n")


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
            except Exception as exc:
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
