"""A study's report, built from finished run folders.

Every number comes from the runs' own metrics.json and history.csv. Error is always
1 - accuracy (top-1, test split); in report.json and the CSV files accuracy and error are
fractions, in the Markdown and HTML tables error is in percent, as in the papers.
Precision, recall and F1 are macro averages. Training error is 1 - the last epoch's
running training accuracy (with augmentation), the dashed lines of He et al. Fig. 6.

Written to ``out``: report.md, report.html (self-contained: figures embedded as base64
PNG), runs.csv (one row per run), summary.csv (mean and std over seeds per net),
report.json (all of it, with per-class figures and confusion matrices) and figures/.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..document import Block, Bullets, Figure, Heading, Paragraph, Table, csv_records, html_page, markdown
from ..errors import ReslabError
from ..experiments.bench import busy_warning
from ..runfs import atomic_write_json, atomic_write_text, read_json
from ..stats import Difference, binomial_standard_error, compare, percent, plus_minus
from ..train.run_folder import load_result, read_run_yaml
from .paper import paper_error
from .plots import slug
from .robustness import robustness_section

# Figures averaged over the seeds of one net; error and training error are derived from
# the means of accuracy and training accuracy, so error = 1 - accuracy holds exactly.
MEANED = ("accuracy", "precision", "recall", "f1", "train_accuracy", "train_seconds", "images_per_second",
          "peak_memory_bytes")

RUN_FIELDS = ["run", "model", "variant", "dataset", "seed", "family", "depth", "parameters", "macs", "epochs",
              "best_epoch", "test_samples", "accuracy", "error", "precision", "recall", "f1", "train_accuracy",
              "train_error", "paper_error", "error_minus_paper", "paper_source", "train_seconds",
              "images_per_second", "peak_memory_bytes", "run_dir"]


@dataclass
class Run:
    """One finished run, as read from its folder."""

    run_dir: Path
    metrics: dict
    history: list[dict]
    config: dict
    variant: str | None = None


@dataclass
class Report:
    out: Path
    rows: list[dict]  # one per run
    summary: list[dict]  # one per net (mean and std over seeds)
    findings: list[str]  # the depth statements
    figures: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------- reading run folders


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders from the paths given: a run folder, a study folder (study.json), or a
    folder holding run folders (a demo's)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "metrics.json").is_file():
            found.append(path)
        elif (path / "study.json").is_file():
            runs = [path / entry["name"] for entry in study_entries(path / "study.json")]
            unfinished = [r.name for r in runs if not (r / "metrics.json").is_file()]
            if unfinished:
                raise ReslabError(f"study {path} has unfinished runs ({', '.join(unfinished[:3])}"
                                  f"{', ...' if len(unfinished) > 3 else ''}); finish it with reslab compare first")
            found.extend(runs)
        elif path.is_dir() and any((child / "metrics.json").is_file() for child in path.iterdir()):
            found.extend(sorted(child for child in path.iterdir() if (child / "metrics.json").is_file()))
        elif (path / "config.yaml").is_file():
            raise ReslabError(f"{path} is not a finished run (no metrics.json); finish it with "
                              f"reslab train --resume {path}")
        else:
            raise ReslabError(f"{path} is not a run folder (no metrics.json) nor a folder of runs")
    if not found:
        raise ReslabError("no run folders given")
    return found


def read_run(run_dir: Path) -> Run:
    result = load_result(run_dir)
    problem = metrics_problem(result.metrics)
    if problem:
        raise ReslabError(f"{Path(run_dir) / 'metrics.json'} is damaged: {problem}; the run's checkpoints can be "
                          "evaluated again with reslab evaluate")
    config = read_run_yaml(run_dir) if (Path(run_dir) / "config.yaml").is_file() else {}
    return Run(Path(run_dir), result.metrics, result.history, config, _variant(Path(run_dir)))


# What the report reads of a run's metrics.json (train/loop.py's finish writes it).
NAMES = ("model", "dataset")
NUMBERS = ("seed", "parameters", "macs")
OPTIONAL_NUMBERS = ("epochs", "best_epoch", "train_seconds", "images_per_second", "peak_memory_bytes",
                    "peak_memory_mb")
TEST_NUMBERS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
OPTIONAL_TEST_NUMBERS = ("samples", "ece", "nll", "brier")
MAX_NAME = 200  # a run folder's name holds the model's, the dataset's and the variant's


def _number(value) -> bool:
    """A figure as reslab writes it: finite, and (an integer) within 64 bits, so that NumPy,
    matplotlib and float() take it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 2**63 if isinstance(value, int) else math.isfinite(value)


def _name(value, longest: int = MAX_NAME) -> bool:
    """A model, dataset, variant or class name as reslab writes it: printable, and short (a
    study's files name folders, figures and their titles after it)."""
    return isinstance(value, str) and 0 < len(value) <= longest and value.isprintable()


def _nonnegative(value) -> bool:
    return _number(value) and value >= 0


def _fraction(value) -> bool:
    return _number(value) and -1e-9 <= value <= 1 + 1e-9  # the 1e-9: rounding in a mean of fractions


def metrics_problem(metrics: dict) -> str | None:
    """Why a run's metrics (a mapping with a ``test`` mapping, as ``load_result`` checks)
    cannot be reported, or None: each figure the report reads, of the type it reads."""
    test = metrics["test"]
    wrong = ([f"'{key}' is not a name" for key in NAMES if not _name(metrics.get(key))]
             + [f"'{key}' is not a number (at least 0)" for key in NUMBERS if not _nonnegative(metrics.get(key))]
             + [f"'{key}' is not a number (at least 0)" for key in OPTIONAL_NUMBERS
                if metrics.get(key) is not None and not _nonnegative(metrics[key])]
             + [f"'test.{key}' is not a number (a fraction)" for key in TEST_NUMBERS if not _fraction(test.get(key))]
             + [f"'test.{key}' is not a number (at least 0)" for key in OPTIONAL_TEST_NUMBERS
                if test.get(key) is not None and not _nonnegative(test[key])])
    if wrong:
        return wrong[0]
    per_class = test.get("per_class")
    if not (isinstance(per_class, list) and per_class and all(
            isinstance(c, dict) and _name(c.get("class"), 255) and _fraction(c.get("f1")) for c in per_class)):
        return "'test.per_class' is not a list of classes with their F1"
    matrix, size = test.get("confusion_matrix"), len(per_class)
    if matrix is not None and not (isinstance(matrix, list) and len(matrix) == size and all(
            isinstance(row, list) and len(row) == size and all(_nonnegative(v) for v in row) for row in matrix)):
        return f"'test.confusion_matrix' is not {size} rows of {size} counts"
    reliability = test.get("reliability")
    if reliability is not None and not (isinstance(reliability, dict) and _nonnegative(reliability.get("bins")) and all(
            isinstance(reliability.get(key), list) and len(reliability[key]) == reliability["bins"]
            for key in ("count", "confidence", "accuracy"))
            and all(_nonnegative(v) for v in reliability["count"])
            and all(v is None or _number(v) for key in ("confidence", "accuracy") for v in reliability[key])):
        return "'test.reliability' is not the bins of a reliability diagram"
    return None


def _variant(run_dir: Path) -> str | None:
    """The study variant a run belongs to, from its study's manifest when there is one."""
    manifest = run_dir.parent / "study.json"
    if not manifest.is_file():
        return None
    for entry in study_entries(manifest):
        if entry["name"] == run_dir.name:
            variant = entry.get("variant")
            return variant if isinstance(variant, str) else None
    return None


def study_entries(manifest: Path) -> list[dict]:
    """The runs a study manifest (study.json) lists, each named by a folder inside the study
    (a name that is absolute or climbs out of the study folder is refused)."""
    runs = read_json(manifest, "study manifest").get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in runs):
        raise ReslabError(f"study manifest {manifest} is damaged: 'runs' must be a list of objects with a name")
    for entry in runs:
        name = entry["name"]
        if not _name(name, 255) or name in (".", "..") or "/" in name or "\\" in name:
            raise ReslabError(f"study manifest {manifest} names run {name[:80]!r}, which is not a folder inside "
                              "the study; reslab reads only the study's own runs")
        if entry.get("variant") is not None and not _name(entry["variant"]):
            raise ReslabError(f"study manifest {manifest} is damaged: the variant of run {name[:80]!r} is not a "
                              f"printable name of at most {MAX_NAME} characters")
    return runs


# ---------------------------------------------------------------- rows


def family(model: str) -> str:
    return "plain" if model.startswith("plain") else "residual"


def depth(model: str) -> int | None:
    """The depth in a model's name: resnet56 -> 56, preact_resnet164 -> 164, wrn28_10 -> 28."""
    match = re.search(r"(\d+)", model)
    return int(match.group(1)) if match else None


def label(model: str, variant: str | None) -> str:
    return f"{model} [{variant}]" if variant else model


def peak_memory(metrics: dict) -> float | None:
    """Peak training memory in bytes, where the run recorded it."""
    if metrics.get("peak_memory_bytes") is not None:
        return float(metrics["peak_memory_bytes"])
    if metrics.get("peak_memory_mb") is not None:
        return float(metrics["peak_memory_mb"]) * 2**20
    return None


def run_row(run: Run) -> dict:
    """A run's figures, every one read from its metrics.json and history.csv."""
    metrics, test = run.metrics, run.metrics["test"]
    train_accuracy = run.history[-1].get("train_accuracy") if run.history else None
    reference = paper_error(metrics["model"], metrics["dataset"])
    error = 1.0 - test["accuracy"]
    paper = reference.comparable / 100 if reference else None
    return {
        "run": run.run_dir.name, "model": metrics["model"], "variant": run.variant, "dataset": metrics["dataset"],
        "seed": metrics["seed"], "family": family(metrics["model"]), "depth": depth(metrics["model"]),
        "parameters": metrics["parameters"], "macs": metrics["macs"],
        "epochs": metrics.get("epochs", len(run.history)), "best_epoch": metrics.get("best_epoch"),
        "accuracy": test["accuracy"], "error": error, "test_samples": test.get("samples"),
        "precision": test["macro_precision"], "recall": test["macro_recall"], "f1": test["macro_f1"],
        "train_accuracy": train_accuracy, "train_error": None if train_accuracy is None else 1.0 - train_accuracy,
        "paper_error": paper, "error_minus_paper": None if paper is None else error - paper,
        "paper_source": reference.source if reference else None,
        "train_seconds": metrics.get("train_seconds"), "images_per_second": metrics.get("images_per_second"),
        "peak_memory_bytes": peak_memory(metrics), "run_dir": str(run.run_dir),
    }


def _sort_key(row: dict):
    return (row["dataset"], row["variant"] or "", row["family"] != "plain", row["depth"] or 0, row["model"])


def summary_rows(rows: list[dict]) -> list[dict]:
    """One row per net (dataset, variant, model): mean and sample std over its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["variant"], row["model"]), []).append(row)
    summary = []
    for (dataset, variant, model), members in groups.items():
        first = members[0]
        out = {"model": model, "label": label(model, variant), "variant": variant, "dataset": dataset,
               "family": first["family"], "depth": first["depth"], "parameters": first["parameters"],
               "macs": first["macs"], "runs": len(members), "seeds": [m["seed"] for m in members],
               "test_samples": sum(m["test_samples"] for m in members) if all(
                   m.get("test_samples") for m in members) else None}
        for key in MEANED:
            values = [m[key] for m in members if m[key] is not None]
            out[f"{key}_mean"] = float(np.mean(values)) if values else None
            out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
        out["error_mean"] = 1.0 - out["accuracy_mean"]
        out["error_std"] = out["accuracy_std"]
        has_train = out["train_accuracy_mean"] is not None
        out["train_error_mean"] = 1.0 - out["train_accuracy_mean"] if has_train else None
        out["train_error_std"] = out["train_accuracy_std"]
        reference = paper_error(model, dataset)
        out["paper_error"] = reference.comparable / 100 if reference else None
        out["error_minus_paper"] = out["error_mean"] - out["paper_error"] if reference else None
        out["paper_source"] = reference.source if reference else None
        out["paper_note"] = reference.note if reference else None
        summary.append(out)
    return sorted(summary, key=_sort_key)


# ---------------------------------------------------------------- what the numbers say


def _compare(deep: dict, shallow: dict, key: str, tolerance: float) -> Difference | None:
    """``deep`` against ``shallow`` in ``key`` (``reslab.stats.compare``); for test error the
    noise includes 1.96 binomial standard errors of the difference: 2 images in 359 are not
    a finding."""
    standard_error = binomial_standard_error(deep["error_mean"], deep.get("test_samples"), shallow["error_mean"],
                                             shallow.get("test_samples")) if key == "error" else None
    return compare(deep, shallow, key, tolerance, standard_error)


def _both(row: dict) -> str:
    return f"{percent(row['error_mean'])} test error, {percent(row['train_error_mean'])} training error"


def depth_findings(summary: list[dict], tolerance: float = 0.005) -> list[str]:
    """Statements about depth computed from the numbers: did the plain nets degrade (higher
    *training* error when deeper, He et al. §4.2), did the residual nets gain from depth,
    and how the two compare at equal depth. Differences within the noise (``_compare``)
    count as no difference."""
    groups: dict[tuple, list[dict]] = {}
    for row in summary:
        if row["depth"] is not None:
            groups.setdefault((row["dataset"], row["variant"]), []).append(row)
    findings = []
    for (dataset, variant), rows in groups.items():
        prefix = f"{dataset}{f' [{variant}]' if variant else ''}: " if len(groups) > 1 else ""
        plain = sorted((r for r in rows if r["family"] == "plain"), key=lambda r: r["depth"])
        residual = sorted((r for r in rows if r["family"] == "residual"), key=lambda r: r["depth"])
        if len(plain) >= 2:
            findings.append(prefix + _plain_statement(plain, tolerance))
        if len(residual) >= 2:
            findings.append(prefix + _residual_statement(residual, tolerance))
        pairs = [(p, r) for p in plain for r in residual if p["depth"] == r["depth"]]
        if pairs:
            findings.append(prefix + _pairs_statement(pairs, tolerance))
    if not findings:
        findings.append("No two depths of one kind of net on one dataset: nothing to say about depth.")
    return findings


def _plain_statement(plain: list[dict], tolerance: float) -> str:
    shallow, deep = plain[0], plain[-1]
    by_depth = ""
    if len(plain) > 2:
        by_depth = " Training error by depth: " + ", ".join(
            f"{r['label']} {percent(r['train_error_mean'])}" for r in plain) + "."
    train = _compare(deep, shallow, "train_error", tolerance)
    test = _compare(deep, shallow, "error", tolerance)
    if train == 1:
        return (f"{deep['label']} ({_both(deep)}) trained worse than {shallow['label']} ({_both(shallow)}): "
                "the degradation problem (He et al. 2016, §4.2, Fig. 6). The deeper plain net has the higher "
                "training error, so this is not overfitting." + by_depth)
    if train is None and test == 1:
        return (f"{deep['label']} has a higher test error than {shallow['label']} ({percent(deep['error_mean'])} vs "
                f"{percent(shallow['error_mean'])}); without training histories degradation cannot be told from "
                "overfitting." + by_depth)
    if test == 1:
        return (f"{deep['label']} has a higher test error than {shallow['label']} ({percent(deep['error_mean'])} vs "
                f"{percent(shallow['error_mean'])}) but not a higher training error "
                f"({percent(deep['train_error_mean'])} vs {percent(shallow['train_error_mean'])}): overfitting, not "
                "the degradation problem." + by_depth)
    within = ""
    if train == 0 and deep["train_error_mean"] > shallow["train_error_mean"]:
        within = (f" (its training error is {100 * (deep['train_error_mean'] - shallow['train_error_mean']):.2f} "
                  "points higher, within the noise)")
    return (f"The plain nets did not degrade at these depths: {deep['label']} ({_both(deep)}) against "
            f"{shallow['label']} ({_both(shallow)}){within}." + by_depth)


def _residual_statement(residual: list[dict], tolerance: float) -> str:
    shallow, deep = residual[0], residual[-1]
    test = _compare(deep, shallow, "error", tolerance)
    numbers = f"{deep['label']} ({_both(deep)}) against {shallow['label']} ({_both(shallow)})"
    if test == -1:
        return f"The residual nets improved with depth: {numbers}."
    if test == 1:
        worse_training = _compare(deep, shallow, "train_error", tolerance) == 1
        return (f"The residual nets did not improve with depth: {numbers}"
                + (", the deeper one trained worse too." if worse_training else "."))
    return f"The residual nets did not change with depth beyond the noise: {numbers}."


def _pairs_statement(pairs: list[tuple[dict, dict]], tolerance: float) -> str:
    parts = [f"depth {p['depth']}: {percent(r['error_mean'])} vs {percent(p['error_mean'])}" for p, r in pairs]
    wins = sum(_compare(p, r, "error", tolerance) == 1 for p, r in pairs)
    losses = sum(_compare(p, r, "error", tolerance) == -1 for p, r in pairs)
    verdict = (f"the residual net was better at {wins} of {len(pairs)} depths"
               + (f" and worse at {losses}" if losses else "")) if wins or losses else \
        "no difference beyond the noise at any depth"
    return f"Test error, residual vs plain at equal depth ({'; '.join(parts)}): {verdict}."


# ---------------------------------------------------------------- document blocks


def _duration(seconds: float | None, std: float | None = None, runs: int = 1) -> str:
    if seconds is None:
        return "–"
    unit, scale = ("s", 1.0) if seconds < 120 else ("min", 60.0) if seconds < 7200 else ("h", 3600.0)
    return plus_minus(seconds / scale, (std or 0.0) / scale, runs, ".1f") + f" {unit}"


def _count(value) -> str:
    if value is None:
        return "–"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{value:,}"


def summary_table(summary: list[dict]) -> Table:
    memory = any(r["peak_memory_bytes_mean"] is not None for r in summary)
    several = len({r["dataset"] for r in summary}) > 1
    headers = (["dataset"] if several else []) + [
        "model", "depth", "params", "MACs", "accuracy", "precision", "recall", "F1 (macro)", "error (%)",
        "paper error (%)", "vs paper (pp)", "train error (%)", "train time", "images/s"] + \
        (["peak memory (MB)"] if memory else []) + ["seeds"]
    body = []
    for r in summary:
        n = r["runs"]
        line = ([r["dataset"]] if several else []) + [
            r["label"], str(r["depth"] or "–"), f"{r['parameters']:,}", _count(r["macs"]),
            plus_minus(r["accuracy_mean"], r["accuracy_std"], n, ".4f"),
            plus_minus(r["precision_mean"], r["precision_std"], n, ".4f"),
            plus_minus(r["recall_mean"], r["recall_std"], n, ".4f"),
            plus_minus(r["f1_mean"], r["f1_std"], n, ".4f"),
            plus_minus(r["error_mean"], r["error_std"], n, ".2f", 100),
            "–" if r["paper_error"] is None else f"{100 * r['paper_error']:.2f}",
            "–" if r["error_minus_paper"] is None else f"{100 * r['error_minus_paper']:+.2f}",
            plus_minus(r["train_error_mean"], r["train_error_std"], n, ".2f", 100),
            _duration(r["train_seconds_mean"], r["train_seconds_std"], n),
            plus_minus(r["images_per_second_mean"], r["images_per_second_std"], n, ",.0f"),
        ]
        if memory:
            line.append(plus_minus(r["peak_memory_bytes_mean"], r["peak_memory_bytes_std"], n, ",.0f", 2**-20))
        line.append(", ".join(str(s) for s in r["seeds"]))
        body.append(line)
    return Table(headers, body)


def runs_table(rows: list[dict]) -> Table:
    headers = ["run", "seed", "accuracy", "error (%)", "train error (%)", "F1 (macro)", "best epoch", "epochs",
               "train time", "images/s"]
    body = [[r["run"], str(r["seed"]), f"{r['accuracy']:.4f}", f"{100 * r['error']:.2f}",
             "–" if r["train_error"] is None else f"{100 * r['train_error']:.2f}", f"{r['f1']:.4f}",
             str(r["best_epoch"]), str(r["epochs"]), _duration(r["train_seconds"]),
             "–" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}"] for r in rows]
    return Table(headers, body)


def bench_table(bench: dict) -> Table:
    headers = ["model", "device", "precision", "batch", "input", "params", "MACs", "train images/s",
               "train ms/batch", "inference images/s", "inference ms/batch", "train peak (MB)",
               "inference peak (MB)"]

    def mb(value):
        return "–" if value is None else f"{value / 2**20:,.1f}"

    body = [[r["model"], r["device"], r["precision"], str(r["batch_size"]), "x".join(map(str, r["input_size"])),
             f"{r['parameters']:,}", _count(r["macs"]), f"{r['train_images_per_second']:,.1f}",
             f"{r['train_latency_ms']:,.2f}", f"{r['inference_images_per_second']:,.1f}",
             f"{r['inference_latency_ms']:,.2f}", mb(r["train_peak_memory_bytes"]),
             mb(r["inference_peak_memory_bytes"])] for r in bench["results"]]
    return Table(headers, body)


# ---------------------------------------------------------------- figures


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    """The epoch-by-epoch mean of several seeds' histories (as long as the shortest)."""
    length = min(len(h) for h in histories)
    mean = []
    for index in range(length):
        rows = [h[index] for h in histories]
        row = {"epoch": rows[0]["epoch"]}
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            values = [r.get(key) for r in rows]
            row[key] = float(np.mean(values)) if all(v is not None for v in values) else None
        mean.append(row)
    return mean


def make_figures(runs: list[Run], rows: list[dict], summary: list[dict], folder: Path) -> dict[str, list[tuple]]:
    """Write every figure into ``folder``; return {section: [(path, caption), ...]}."""
    from ..evaluate.plots import plot_confusion, plot_history
    from ..experiments.compare import plot_error_curves
    from .plots import FAMILY_COLOURS, plot_against_depth, plot_per_class

    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[tuple]] = {"depth": [], "classes": [], "curves": []}
    by_key: dict[tuple, list[Run]] = {}
    for run, row in zip(runs, rows):
        by_key.setdefault((row["dataset"], row["variant"], row["model"]), []).append(run)
    datasets = sorted({r["dataset"] for r in summary})
    for dataset in datasets:
        nets = [s for s in summary if s["dataset"] == dataset]
        variants = sorted({s["variant"] or "" for s in nets})
        tag = slug(dataset)

        # He et al. Fig. 6: training (dashed) and validation (solid) error per epoch, mean over seeds.
        for variant in variants:
            curves = {s["label"]: _mean_history([r.history for r in by_key[(dataset, s["variant"], s["model"])]])
                      for s in nets if (s["variant"] or "") == variant}
            curves = {name: history for name, history in curves.items() if history}
            if curves:
                path = folder / f"error_curves-{tag}{'-' + slug(variant) if variant else ''}.png"
                seeds = " (mean over seeds)" if any(s["runs"] > 1 for s in nets) else ""
                plot_error_curves(curves, path, title=f"{dataset}{f' [{variant}]' if variant else ''}: "
                                                      f"plain vs residual{seeds}")
                figures["depth"].append((path, "Training error (dashed) and validation error (solid) per epoch, "
                                               "plain nets left, residual right (He et al. 2016, Fig. 6)"))

        lines_error, lines_time = [], []
        for variant in variants:
            for kind in ("plain", "residual"):
                group = sorted((s for s in nets if s["family"] == kind and (s["variant"] or "") == variant
                                and s["depth"] is not None), key=lambda s: s["depth"])
                if not group:
                    continue
                name = f"{kind}{f' [{variant}]' if variant else ''}"
                depths = [s["depth"] for s in group]
                colour = FAMILY_COLOURS[kind] if len(variants) == 1 else None
                lines_error.append({"label": f"{name}: test error", "depths": depths, "colour": colour,
                                    "values": [100 * s["error_mean"] for s in group],
                                    "stds": [100 * s["error_std"] for s in group]})
                if all(s["train_error_mean"] is not None for s in group):
                    lines_error.append({"label": f"{name}: training error", "depths": depths, "colour": colour,
                                        "style": "s--", "alpha": 0.7,
                                        "values": [100 * s["train_error_mean"] for s in group],
                                        "stds": [100 * (s["train_error_std"] or 0) for s in group]})
                if all(s["train_seconds_mean"] is not None for s in group):
                    lines_time.append({"label": name, "depths": depths, "colour": colour,
                                       "values": [s["train_seconds_mean"] for s in group],
                                       "stds": [s["train_seconds_std"] or 0 for s in group]})
        papers = sorted((s["depth"], 100 * s["paper_error"]) for s in nets
                        if s["paper_error"] is not None and s["depth"] is not None)
        if papers:
            lines_error.append({"label": "He et al. (paper)", "depths": [d for d, _ in papers],
                                "values": [e for _, e in papers], "colour": "grey", "style": "x:"})
        if lines_error:
            path = folder / f"error_vs_depth-{tag}.png"
            plot_against_depth(lines_error, path, "error (%)", title=f"{dataset}: error vs depth (mean ± std)")
            figures["depth"].append((path, "Test error (solid) and final training error (dashed) against depth"))
        if lines_time:
            path = folder / f"time_vs_depth-{tag}.png"
            plot_against_depth(lines_time, path, "training time (s)", title=f"{dataset}: training time vs depth")
            figures["depth"].append((path, "Training time against depth (report 001, Fig. 1)"))

        # Per class: F1 bars of every net, and each net's confusion matrix summed over its seeds.
        classes, bars = None, {}
        for s in nets:
            members = by_key[(dataset, s["variant"], s["model"])]
            per_class = [run.metrics["test"]["per_class"] for run in members]
            classes = [c["class"] for c in per_class[0]]
            bars[s["label"]] = [float(np.mean([pc[i]["f1"] for pc in per_class])) for i in range(len(classes))]
            if "confusion_matrix" not in members[0].metrics["test"]:
                continue  # multi-label: per-class F1 and AP, no confusion matrix
            matrix = np.sum([run.metrics["test"]["confusion_matrix"] for run in members], axis=0).tolist()
            path = folder / f"confusion-{tag}-{slug(s['label'])}.png"
            seeds = f", {len(members)} seeds summed" if len(members) > 1 else ""
            plot_confusion(matrix, classes, path, title=f"{s['label']} on {dataset}: test confusion matrix{seeds}")
            figures["classes"].append((path, f"{s['label']}: confusion matrix (test{seeds})"))
        if bars:
            path = folder / f"f1_per_class-{tag}.png"
            plot_per_class(classes, bars, path, "F1", title=f"{dataset}: per-class F1 (test, mean over seeds)")
            figures["classes"].insert(0, (path, "Per-class F1 on the test split"))

    # Report 000's Fig. 3: accuracy and loss against epoch, one figure per run.
    for run, row in zip(runs, rows):
        if run.history:
            path = folder / f"curves-{slug(row['run'])}.png"
            plot_history(run.history, path, title=f"{row['run']}: loss and accuracy")
            figures["curves"].append((path, f"{row['run']}: loss and accuracy per epoch"))
    return figures


# ---------------------------------------------------------------- the document


def _varying_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value differs between the runs (what the study compares)."""
    values: dict[str, set] = {}
    for run in runs:
        for section, entries in run.config.items():
            if isinstance(entries, dict):
                for key, value in entries.items():
                    values.setdefault(f"{section}.{key}", set()).add(json.dumps(value, sort_keys=True))
    return sorted(k for k, v in values.items() if len(v) > 1 and k not in ("output.name", "output.dir"))


def _setup_lines(runs: list[Run]) -> list[str]:
    config = runs[0].config
    lines = []
    if config:
        optim, schedule, train, augment = (config.get(k, {}) for k in ("optim", "schedule", "train", "augment"))
        length = (f"{train.get('epochs')} epochs" if train.get("epochs") else "") + \
            (" or " if train.get("epochs") and train.get("max_iters") else "") + \
            (f"{train.get('max_iters')} iterations" if train.get("max_iters") else "")
        lines.append(f"Recipe (first run): {optim.get('name')} lr {optim.get('lr')}, momentum {optim.get('momentum')}, "
                     f"weight decay {optim.get('weight_decay')}; {schedule.get('name')} schedule; {length}, "
                     f"batch {train.get('batch_size')}; augmentation: crop padding {augment.get('crop_padding')}, "
                     f"flip {augment.get('hflip')}; precision {train.get('precision')}.")
    varying = _varying_keys(runs)
    lines.append("Config keys that differ between runs: " + (", ".join(varying) if varying else "none") + ".")
    devices = sorted({str(run.metrics.get("device", "?")) for run in runs})
    lines.append(f"Device: {', '.join(devices)}.")
    for run in runs[:1]:
        dataset = run.run_dir / "dataset.json"
        if dataset.is_file():
            sizes = read_json(dataset, "dataset description").get("sizes")
            if isinstance(sizes, dict) and all(isinstance(v, int) for v in sizes.values()):
                lines.append(f"Split sizes ({run.metrics['dataset']}): "
                             + ", ".join(f"{k} {v:,}" for k, v in sizes.items()) + ".")
    return lines


NOTE = ("Error = 1 − accuracy (top-1) on the test split; accuracy, precision, recall and F1 are on the test "
        "split, precision/recall/F1 macro-averaged over classes; the weights are the epoch best on validation. "
        "Training error = 1 − the last epoch's running training accuracy (with augmentation), as the dashed "
        "lines of He et al. Fig. 6. Paper error: He et al. 2016 Table 6 (CIFAR-10; ResNet-110: the mean of 5 "
        "runs, 6.61%; best 6.43%), the pre-activation paper for ResNet-164/1001, or the ImageNet 10-crop top-1 "
        "error; '–' where the paper has no figure (plain nets were only plotted). 'vs paper' is error − paper "
        "error in percentage points. Where several seeds ran, figures are mean ± sample standard deviation.")


NOISE_NOTE = ("Computed from the table's numbers: a difference counts only beyond the noise, the largest of "
              "{:.1f} percentage points, the two nets' standard deviations over seeds added, and (test error) "
              "1.96 binomial standard errors of the difference of two test errors.")


def build_report(run_dirs: list[str | Path], out: Path, title: str | None = None, bench: dict | None = None,
                 tolerance: float = 0.005) -> Report:
    """Read the runs, write report.md/.html, runs.csv, summary.csv, report.json and figures/."""
    out = Path(out)
    runs = [read_run(path) for path in find_runs(run_dirs)]  # bad input fails before a folder is made
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create report folder {out}: {exc.strerror}") from None
    pairs = sorted(zip((run_row(run) for run in runs), runs), key=lambda pair: (_sort_key(pair[0]), pair[0]["seed"]))
    rows, runs = [p[0] for p in pairs], [p[1] for p in pairs]
    summary = summary_rows(rows)
    findings = depth_findings(summary, tolerance)
    figures = make_figures(runs, rows, summary, out / "figures")
    title = title or "Comparison of " + ", ".join(dict.fromkeys(s["label"] for s in summary))

    blocks: list[Block] = [Heading(title), Paragraph(f"{len(rows)} runs of {len(summary)} nets on "
                                                     f"{', '.join(sorted({r['dataset'] for r in rows}))}; "
                                                     f"report written {datetime.now():%Y-%m-%d %H:%M}.")]
    blocks += [Heading("Results", 2), summary_table(summary), Paragraph(NOTE)]
    blocks += [Heading("Depth: plain vs residual", 2), Bullets(findings),
               Paragraph(NOISE_NOTE.format(100 * tolerance))]
    blocks += [Figure(path, caption) for path, caption in figures["depth"]]
    robustness = robustness_section(runs, rows, out / "figures", tolerance)  # empty without robustness.json
    blocks += robustness.blocks
    blocks += [Heading("Per class", 2)] + [Figure(path, caption) for path, caption in figures["classes"]]
    if bench:
        environment = bench.get("environment", {})
        blocks += [Heading("Throughput", 2), bench_table(bench),
                   Paragraph(f"{environment.get('device', '?')}, {environment.get('threads', '?')} threads, "
                             f"torch {environment.get('torch', '?')}; median latency per batch after warm-up. "
                             f"{bench.get('memory_note', '')} {busy_warning(bench)}".strip())]
    blocks += [Heading("Every run", 2), runs_table(rows)]
    blocks += [Heading("Training curves", 2)] + [Figure(path, caption) for path, caption in figures["curves"]]
    blocks += [Heading("Setup", 2), Bullets(_setup_lines(runs))]

    atomic_write_text(out / "report.md", markdown(blocks, out))
    atomic_write_text(out / "report.html", html_page(blocks, title))
    atomic_write_text(out / "runs.csv", csv_records(rows, RUN_FIELDS))
    atomic_write_text(out / "summary.csv", csv_records(summary, list(summary[0]) if summary else []))
    atomic_write_json(out / "report.json", {
        "title": title, "findings": findings, "tolerance": tolerance, "summary": summary,
        "runs": [{**row, "per_class": run.metrics["test"]["per_class"],
                  "confusion_matrix": run.metrics["test"].get("confusion_matrix"), "history": run.history}
                 for row, run in zip(rows, runs)],
        "bench": bench, "robustness": robustness.data,
    })
    paths = [path for section in figures.values() for path, _ in section] + robustness.figures
    return Report(out, rows, summary, findings + robustness.findings, paths)


def report_text(report: Report, table: str | None = None) -> str:
    """What the command line shows of a report: the summary table (or ``table``), the
    findings, and where the report's files are."""
    files = Paragraph(f"report: {report.out / 'report.md'} and report.html, runs.csv, summary.csv, report.json, "
                      f"{len(report.figures)} figures in figures/")
    head = Paragraph(table) if table else summary_table(report.summary)
    return markdown([head, Bullets(report.findings), files]).removesuffix("\n")


def load_bench(path: str | Path) -> dict:
    if not Path(path).exists():
        raise ReslabError(f"bench file {path} does not exist; write one with reslab bench --json")
    data = read_json(Path(path), "bench file")
    if isinstance(data, dict) and data.get("kind") == "inference-engines":
        raise ReslabError(f"{path} compares inference engines (reslab bench RUN); --bench takes the model speeds "
                          "that reslab bench MODEL... --json writes")
    if "results" not in data:
        raise ReslabError(f"{path} is not a reslab bench file (no results)")
    results, environment = data["results"], data.get("environment")
    numbers = ("batch_size", "parameters", "train_images_per_second", "train_latency_ms",
               "inference_images_per_second", "inference_latency_ms")
    optional = ("macs", "train_peak_memory_bytes", "inference_peak_memory_bytes")
    rows_fit = isinstance(results, list) and all(
        isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("model", "device", "precision"))
        and all(_number(row.get(k)) for k in numbers) and isinstance(row.get("input_size"), list)
        and all(row.get(k) is None or _number(row[k]) for k in optional) for row in results)
    load = environment.get("load_average_before") if isinstance(environment, dict) else "missing"
    if not rows_fit or not (load is None or _number(load)):
        raise ReslabError(f"bench file {path} is damaged: not the 'results' and 'environment' reslab bench --json "
                          "writes; write it again with reslab bench --json")
    return data
