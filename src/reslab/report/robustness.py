"""The report's section on robustness and calibration (``reslab compare --robustness``):
clean error, corruption error and ECE of every net, residual against plain at equal depth,
ECE against depth (Guo et al. 2017 found deeper ResNets less calibrated), heat-maps and
reliability diagrams.

Read from each run folder: metrics.json (clean test error and calibration on the whole test
split), robustness.json (errors under corruption, on the images it names) and, where
``reslab calibrate`` ran, calibration.json. Statements are computed from the numbers and a
difference counts only beyond the noise: the largest of the tolerance, the two nets'
standard deviations over seeds added, and 1.96 standard errors of the difference: binomial
for error rates (on the images they were measured on), and for ECE the spread of its bins'
accuracies, sqrt(sum_m n_m acc_m (1 - acc_m)) / n, a first-order estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..document import Block, Bullets, Figure, Heading, Paragraph, Table
from ..errors import ReslabError
from ..evaluate.calibration import CALIBRATION_FILE, plot_reliability, temperature_problem
from ..evaluate.robustness import RESULTS_FILE, plot_heatmap, summarise
from ..runfs import read_json
from ..stats import Difference, binomial_standard_error, compare, percent, plus_minus
from .plots import FAMILY_COLOURS, plot_against_depth, slug

SUMMED = ("clean_error", "mean_corruption_error", "mce", "relative_mce", "ece", "ece_calibrated", "nll", "brier",
          "corruption_ece")


@dataclass
class RobustnessSection:
    blocks: list[Block] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    data: dict | None = None  # for report.json


def robustness_section(runs: list, rows: list[dict], folder: Path, tolerance: float = 0.005) -> RobustnessSection:
    """The section's blocks, statements, figures and figures' numbers; empty when no run
    holds corruption results."""
    entries = [entry for entry in (_entry(run, row) for run, row in zip(runs, rows)) if entry is not None]
    if not entries:
        return RobustnessSection()
    _normalise(entries)
    nets = _nets(entries)
    baseline = next((e["baseline_model"] for e in entries if e["baseline_model"]), None)
    findings = _findings(nets, tolerance)
    folder.mkdir(parents=True, exist_ok=True)
    figures = _figures(nets, folder)
    images = sorted({e["images"] for e in entries})
    severities = entries[0]["result"]["severities"]
    blocks: list[Block] = [
        Heading("Robustness and calibration", 2), _table(nets, baseline),
        Paragraph(_note(baseline, images, len(entries[0]["result"]["errors"]), severities)),
        Bullets(findings),
        Paragraph("Computed from the table's numbers: a difference counts only beyond the noise, the largest of "
                  f"{100 * tolerance:.1f} percentage points, the two nets' standard deviations over seeds added, "
                  "and 1.96 standard errors of the difference (binomial for errors, on the images measured; for "
                  "ECE from the spread of its bins' accuracies).")]
    blocks += [Figure(path, caption) for path, caption in figures]
    data = {"baseline": baseline, "nets": [{k: v for k, v in net.items() if k not in ("members", "reliability",
                                                                                      "result")}
                                           for net in nets],
            "runs": [{k: v for k, v in e.items() if k != "reliability"} for e in entries], "findings": findings}
    return RobustnessSection(blocks, findings, [path for path, _ in figures], data)


# ---------------------------------------------------------------- reading


def _entry(run, row: dict) -> dict | None:
    path = Path(run.run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        stored = read_json(path, "robustness file")  # a huge file is refused unread
    except ReslabError as exc:
        raise ReslabError(f"{exc}; delete it and run reslab compare --robustness again") from None
    try:
        errors = stored["errors"]
        severities = sorted(set.intersection(*(set(v) for v in errors.values())), key=int)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReslabError(f"{path} is not a reslab robustness file ({exc}); delete it and run "
                          "reslab compare --robustness again") from None
    result = {**stored, "severities": [int(s) for s in severities],
              "errors": {n: {s: v[s] for s in severities} for n, v in errors.items()},
              "ece": {n: {s: v[s] for s in severities} for n, v in stored.get("ece", {}).items()}}
    test = run.metrics["test"]
    calibrated = _calibrated(Path(run.run_dir))
    return {"run": row["run"], "model": row["model"], "variant": row["variant"], "dataset": row["dataset"],
            "seed": row["seed"], "family": row["family"], "depth": row["depth"],
            "label": f"{row['model']} [{row['variant']}]" if row["variant"] else row["model"],
            "test_samples": row["test_samples"], "images": stored.get("images"), "result": result,
            "baseline_model": stored.get("baseline_model"), "clean_error": row["error"],
            "ece": test.get("ece"), "nll": test.get("nll"), "brier": test.get("brier"),
            "reliability": test.get("reliability"),
            "ece_calibrated": calibrated.get("ece"), "temperature": calibrated.get("temperature")}


def _calibrated(run_dir: Path) -> dict:
    """The temperature and the test ECE after scaling that ``reslab calibrate`` stored, or {}
    where it did not run or its file is damaged (evaluate and predict warn of that)."""
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        stored = read_json(path, "calibration file")  # a huge file is refused unread
        ece = stored["after"]["test"]["ece"]
    except (ReslabError, KeyError, TypeError):
        return {}
    if temperature_problem(stored.get("temperature")) or not isinstance(ece, (int, float)) or isinstance(ece, bool):
        return {}
    return {"temperature": float(stored["temperature"]), "ece": float(ece)}


def _normalise(entries: list[dict]) -> None:
    """Each run's summary; mCE against the baseline model's run of the same dataset, variant and seed."""
    for entry in entries:
        twin = next((e for e in entries if e["model"] == entry["baseline_model"] and e["dataset"] == entry["dataset"]
                     and e["variant"] == entry["variant"] and e["seed"] == entry["seed"]), None)
        try:
            summary = summarise(entry["result"], twin["result"] if twin else None)
        except ReslabError:  # measured on other images: no normalised figures
            summary = summarise(entry["result"])
        entry.update(mean_corruption_error=summary["mean_corruption_error"], mce=summary["mce"],
                     relative_mce=summary["relative_mce"], corruption_ece=summary["mean_ece"],
                     subset_clean_error=summary["clean_error"])


def _nets(entries: list[dict]) -> list[dict]:
    """One row per net (dataset, variant, model): means and sample stds over its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        groups.setdefault((entry["dataset"], entry["variant"], entry["model"]), []).append(entry)
    nets = []
    for (dataset, variant, model), members in groups.items():
        first = members[0]
        net = {"model": model, "label": first["label"], "dataset": dataset, "variant": variant,
               "family": first["family"], "depth": first["depth"], "runs": len(members),
               "seeds": [m["seed"] for m in members], "images": sum(m["images"] or 0 for m in members),
               "test_samples": sum(m["test_samples"] or 0 for m in members), "members": members}
        for key in SUMMED:
            values = [m[key] for m in members if m[key] is not None]
            net[f"{key}_mean"] = float(np.mean(values)) if values else None
            net[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
        net["reliability"] = _pooled([m["reliability"] for m in members if m["reliability"]])
        net["ece_se"] = _ece_standard_error(net["reliability"])
        net["result"] = _mean_result([m["result"] for m in members])
        nets.append(net)
    return sorted(nets, key=lambda n: (n["dataset"], n["variant"] or "", n["family"] != "plain", n["depth"] or 0,
                                       n["model"]))


def _pooled(reliabilities: list[dict]) -> dict | None:
    """Reliability bins of several runs as one: counts added, accuracy and confidence weighted."""
    if not reliabilities:
        return None
    bins = reliabilities[0]["bins"]
    count = [sum(r["count"][m] for r in reliabilities) for m in range(bins)]

    def weighted(key: str) -> list:
        return [sum(r["count"][m] * r[key][m] for r in reliabilities if r["count"][m]) / count[m] if count[m]
                else None for m in range(bins)]

    return {"bins": bins, "count": count, "accuracy": weighted("accuracy"), "confidence": weighted("confidence")}


def _ece_standard_error(reliability: dict | None) -> float | None:
    if not reliability or not sum(reliability["count"]):
        return None
    total = sum(reliability["count"])
    spread = sum(n * a * (1 - a) for n, a in zip(reliability["count"], reliability["accuracy"]) if n)
    return math.sqrt(spread) / total


def _mean_result(results: list[dict]) -> dict:
    first = results[0]
    names = [n for n in first["errors"] if all(n in r["errors"] for r in results)]
    severities = first["severities"]
    return {"model": first["model"], "dataset": first["dataset"], "severities": severities,
            "clean": {"error": float(np.mean([r["clean"]["error"] for r in results]))},
            "errors": {n: {str(s): float(np.mean([r["errors"][n][str(s)] for r in results])) for s in severities}
                       for n in names}}


# ---------------------------------------------------------------- statements


def _difference(a: dict, b: dict, key: str, tolerance: float) -> Difference | None:
    """``a`` against ``b`` in ``key`` (``reslab.stats.compare``), the noise including 1.96
    standard errors of the difference: binomial for error rates, from the bins for ECE."""
    standard_error = None
    if key == "ece" and a["ece_se"] is not None and b["ece_se"] is not None:
        standard_error = math.hypot(a["ece_se"], b["ece_se"])
    elif key in ("clean_error", "mean_corruption_error"):
        count = "test_samples" if key == "clean_error" else "images"
        standard_error = binomial_standard_error(a[f"{key}_mean"], a[count], b[f"{key}_mean"], b[count])
    return compare(a, b, key, tolerance, standard_error)


WORDS = {1: "higher for the residual net", -1: "lower for the residual net", 0: "no difference beyond the noise",
         None: "not measured"}


def _findings(nets: list[dict], tolerance: float) -> list[str]:
    findings = []
    groups: dict[tuple, list[dict]] = {}
    for net in nets:
        if net["depth"] is not None:
            groups.setdefault((net["dataset"], net["variant"]), []).append(net)
    for (dataset, variant), members in groups.items():
        prefix = f"{dataset}{f' [{variant}]' if variant else ''}: " if len(groups) > 1 else ""
        plain = {n["depth"]: n for n in members if n["family"] == "plain"}
        residual = {n["depth"]: n for n in members if n["family"] == "residual"}
        for depth in sorted(set(plain) & set(residual)):
            p, r = plain[depth], residual[depth]
            corruption = _difference(r, p, "mean_corruption_error", tolerance)
            clean = _difference(r, p, "clean_error", tolerance)
            ece = _difference(r, p, "ece", tolerance)
            mce = (f"; mCE {percent(r['mce_mean'])} vs {percent(p['mce_mean'])}" if r["mce_mean"] is not None
                   and p["mce_mean"] is not None else "")
            findings.append(
                f"{prefix}depth {depth}, residual vs plain: corruption error "
                f"{percent(r['mean_corruption_error_mean'])} vs {percent(p['mean_corruption_error_mean'])} "
                f"({WORDS[corruption]}){mce}; "
                f"clean error {percent(r['clean_error_mean'])} vs {percent(p['clean_error_mean'])} ({WORDS[clean]}); "
                f"ECE {percent(r['ece_mean'])} vs {percent(p['ece_mean'])} ({WORDS[ece]}).")
        for family, by_depth in (("plain", plain), ("residual", residual)):
            if len(by_depth) < 2:
                continue
            depths = sorted(by_depth)
            shallow, deep = by_depth[depths[0]], by_depth[depths[-1]]
            verdict = _difference(deep, shallow, "ece", tolerance)
            listing = ", ".join(f"{by_depth[d]['label']} {percent(by_depth[d]['ece_mean'])}" for d in depths)
            guo = {1: "the deeper net is less calibrated, as Guo et al. (2017) found for ResNets",
                   -1: "the deeper net is better calibrated, unlike Guo et al.'s (2017) observation",
                   0: "no difference beyond the noise, so Guo et al.'s (2017) observation is not confirmed here",
                   None: "ECE was not recorded"}[verdict]
            findings.append(f"{prefix}ECE against depth, {family} nets ({listing}): {guo}.")
    if not findings:
        findings.append("No plain and residual nets of one depth, nor two depths of one kind: nothing to compare.")
    return findings


# ---------------------------------------------------------------- table and figures


def _table(nets: list[dict], baseline: str | None) -> Table:
    calibrated = any(n["ece_calibrated_mean"] is not None for n in nets)
    several = len({n["dataset"] for n in nets}) > 1
    headers = (["dataset"] if several else []) + ["model", "depth", "clean error (%)", "corruption error (%)"] + \
        ([f"mCE vs {baseline} (%)", "relative mCE (%)"] if baseline else []) + \
        ["ECE (%)"] + (["ECE after T (%)"] if calibrated else []) + ["NLL", "Brier", "ECE under corruption (%)",
                                                                      "images", "seeds"]
    body = []
    for n in nets:
        line = ([n["dataset"]] if several else []) + [
            n["label"], str(n["depth"] or "–"), _cell(n, "clean_error"), _cell(n, "mean_corruption_error")]
        if baseline:
            line += [_cell(n, "mce", ".1f"), _cell(n, "relative_mce", ".1f")]
        line += [_cell(n, "ece")]
        if calibrated:
            line += [_cell(n, "ece_calibrated")]
        line += [_cell(n, "nll", ".3f", 1.0), _cell(n, "brier", ".3f", 1.0), _cell(n, "corruption_ece"),
                 f"{n['members'][0]['images']:,}", ", ".join(str(s) for s in n["seeds"])]
        body.append(line)
    return Table(headers, body)


def _cell(net: dict, key: str, fmt: str = ".2f", scale: float = 100.0) -> str:
    """A net's ``key`` as mean ± std over its seeds, in percent unless told otherwise."""
    return plus_minus(net[f"{key}_mean"], net[f"{key}_std"], net["runs"], fmt, scale)


def _note(baseline: str | None, images: list, types: int, severities: list[int]) -> str:
    shown = ", ".join(f"{i:,}" for i in images if i)
    text = (f"Clean error and ECE (15 bins), NLL and Brier score: the whole test split (metrics.json). Corruption "
            f"error: the mean error over {types} corruption types x severities {', '.join(map(str, severities))} "
            f"(Hendrycks & Dietterich 2019) on {shown} test images, generated on the fly (reslab.data.corruptions; "
            "frost uses a generated stand-in for the photographs).")
    if baseline:
        text += (f" mCE: each type's errors summed over severities, divided by {baseline}'s on the same images, "
                 f"averaged over types ({baseline} = 100%); relative mCE does the same with the errors minus the "
                 "clean error, as the paper does against AlexNet.")
    else:
        text += (" No baseline was named (robustness: baseline:), so the corruption error is not normalised: the "
                 "paper's mCE divides by AlexNet's errors.")
    return text


def _figures(nets: list[dict], folder: Path) -> list[tuple[Path, str]]:
    figures = []
    for dataset in sorted({n["dataset"] for n in nets}):
        members = [n for n in nets if n["dataset"] == dataset]
        ece_lines, error_lines = [], []
        for variant in sorted({n["variant"] or "" for n in members}):
            for family in ("plain", "residual"):
                group = sorted((n for n in members if n["family"] == family and (n["variant"] or "") == variant
                                and n["depth"] is not None), key=lambda n: n["depth"])
                if not group:
                    continue
                name = f"{family}{f' [{variant}]' if variant else ''}"
                depths = [n["depth"] for n in group]
                colour = FAMILY_COLOURS[family]
                if all(n["ece_mean"] is not None for n in group):
                    ece_lines.append({"label": f"{name}: ECE", "depths": depths, "colour": colour,
                                      "values": [100 * n["ece_mean"] for n in group],
                                      "stds": [100 * (n["ece_std"] or 0) for n in group]})
                if all(n["ece_calibrated_mean"] is not None for n in group):
                    ece_lines.append({"label": f"{name}: ECE after temperature scaling", "depths": depths,
                                      "colour": colour, "style": "s--", "alpha": 0.7,
                                      "values": [100 * n["ece_calibrated_mean"] for n in group],
                                      "stds": [100 * (n["ece_calibrated_std"] or 0) for n in group]})
                error_lines.append({"label": f"{name}: corruption error", "depths": depths, "colour": colour,
                                    "values": [100 * n["mean_corruption_error_mean"] for n in group],
                                    "stds": [100 * (n["mean_corruption_error_std"] or 0) for n in group]})
                error_lines.append({"label": f"{name}: clean error", "depths": depths, "colour": colour,
                                    "style": "s--", "alpha": 0.7,
                                    "values": [100 * n["clean_error_mean"] for n in group],
                                    "stds": [100 * (n["clean_error_std"] or 0) for n in group]})
        tag = slug(dataset)
        if ece_lines:
            path = folder / f"ece_vs_depth-{tag}.png"
            plot_against_depth(ece_lines, path, "ECE (%)", title=f"{dataset}: expected calibration error vs depth")
            figures.append((path, "ECE (15 bins, test split) against depth: Guo et al. (2017) found deeper ResNets "
                                  "less calibrated"))
        if error_lines:
            path = folder / f"corruption_error_vs_depth-{tag}.png"
            plot_against_depth(error_lines, path, "error (%)", title=f"{dataset}: corruption and clean error vs depth")
            figures.append((path, "Mean error under corruption (solid) and clean error (dashed) against depth"))
        for net in members:
            seeds = f", mean of {net['runs']} seeds" if net["runs"] > 1 else ""
            path = folder / f"corruption_heatmap-{tag}-{slug(net['label'])}.png"
            plot_heatmap(net["result"], path, title=f"{net['label']} on {dataset}: error (%) under corruption{seeds}")
            figures.append((path, f"{net['label']}: error per corruption and severity{seeds}"))
        for net in members:
            if net["reliability"] is None:
                continue
            path = folder / f"reliability-{tag}-{slug(net['label'])}.png"
            seeds = f", {net['runs']} seeds pooled" if net["runs"] > 1 else ""
            plot_reliability(net["reliability"], path, title=f"{net['label']} on {dataset}: test ECE "
                                                             f"{100 * net['ece_mean']:.2f}%{seeds}")
            figures.append((path, f"{net['label']}: reliability diagram (test{seeds})"))
    return figures
