"""Comparative studies, their reports and the benchmark (reslab.report).

One small study (ResNet-8 and Plain-8 x two seeds, one epoch on the digits) is stopped
during its third run and started again; the tests read what it left behind.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest

import reslab.experiments.study as study_module
import reslab.train.run_folder as run_folder
from reslab import ReslabError
from reslab.cli import main
from reslab.experiments.bench import FIELDS, run_bench
from reslab.experiments.study import load_study, plan, run_state, run_study, study_from_dict
from reslab.report.paper import paper_error, reference_error
from reslab.report.report import Run, build_report, depth_findings, run_row, summary_rows
from reslab.train.run_folder import load_run_config

STUDY = {"recipe": "demo-digits", "models": ["resnet8", "plain8"], "seeds": [0, 1],
         "overrides": ["train.epochs=1", "train.batch_size=128", "output.plots=false"]}
RUN_NAMES = ["resnet8-digits-seed0", "resnet8-digits-seed1", "plain8-digits-seed0", "plain8-digits-seed1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "depth"
    calls, lines = [], {"first": [], "second": [], "third": []}
    real_train, real_history = study_module.train, run_folder.write_history

    def counting_train(config, resume=None, progress=True):
        calls.append((config.model.name, config.train.seed, resume is not None))
        return real_train(config, resume=resume, progress=progress)

    def killed_in_third_run(path, history):  # after the third run's first epoch checkpoint
        real_history(path, history)
        if len(calls) == 3:
            raise RuntimeError("simulated kill")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_module, "train", counting_train)
        patch.setattr(run_folder, "write_history", killed_in_third_run)
        with pytest.raises(RuntimeError, match="simulated kill"):
            run_study(study_from_dict({**STUDY, "out": str(out)}), progress=False, log=lines["first"].append)
        patch.setattr(run_folder, "write_history", real_history)
        first_calls = list(calls)
        state_after_kill = {name: run_state(out / name) for name in RUN_NAMES}
        manifest_after_kill = json.loads((out / "study.json").read_text())
        finished_before = {name: _snapshot(out / name) for name in RUN_NAMES[:2]}
        calls.clear()
        second = run_study(study_from_dict({**STUDY, "out": str(out)}), progress=False, log=lines["second"].append)
        second_calls = list(calls)
        calls.clear()
        third = run_study(study_from_dict({**STUDY, "out": str(out)}), progress=False, log=lines["third"].append)
        third_calls = list(calls)
    return SimpleNamespace(out=out, lines=lines, first_calls=first_calls, second_calls=second_calls,
                           third_calls=third_calls, state_after_kill=state_after_kill,
                           manifest_after_kill=manifest_after_kill,
                           finished_before=finished_before, second=second, third=third)


@pytest.fixture(scope="module")
def bench():
    return run_bench(["resnet8"], [2], [(1, 8, 8)], ["fp32", "bf16"], device="cpu", warmup=1, repeats=2)


@pytest.fixture(scope="module")
def report(study, bench, tmp_path_factory):
    return build_report([study.out], tmp_path_factory.mktemp("report"), title="depth", bench=bench)


def _metrics(study, name: str) -> dict:
    return json.loads((study.out / name / "metrics.json").read_text())


# ---------------------------------------------------------------- the study


def test_each_run_has_a_fixed_folder(study):
    assert [run.name for run in study.second.runs] == RUN_NAMES
    for name in RUN_NAMES:
        metrics = _metrics(study, name)
        assert f"{metrics['model']}-{metrics['dataset']}-seed{metrics['seed']}" == name


def test_a_kill_leaves_finished_runs_and_one_interrupted_run(study):
    assert study.first_calls == [("resnet8", 0, False), ("resnet8", 1, False), ("plain8", 0, False)]
    assert study.state_after_kill == {RUN_NAMES[0]: "finished", RUN_NAMES[1]: "finished",
                                      RUN_NAMES[2]: "interrupted", RUN_NAMES[3]: "new"}
    statuses = [run["status"] for run in study.manifest_after_kill["runs"]]
    assert statuses == ["finished", "finished", "stopped", "pending"]


def test_a_restart_repeats_no_finished_run(study):
    assert study.second_calls == [("plain8", 0, True), ("plain8", 1, False)]  # resumed, then new
    assert study.second.trained == 2
    for name, files in study.finished_before.items():
        assert _snapshot(study.out / name) == files, f"{name} was rewritten"


def test_the_interrupted_run_finishes_from_its_checkpoint(study):
    metrics = _metrics(study, RUN_NAMES[2])
    assert metrics["epochs"] == 1
    assert len((study.out / RUN_NAMES[2] / "history.csv").read_text().splitlines()) == 2


def test_progress_is_shown_across_the_study(study):
    assert study.lines["first"][0] == f"run 1/4: {RUN_NAMES[0]} (training)"
    assert any("study stopped at run 3/4" in line for line in study.lines["first"])
    assert f"run 1/4: {RUN_NAMES[0]} (finished, reused)" in study.lines["second"]
    assert f"run 3/4: {RUN_NAMES[2]} (interrupted, resuming)" in study.lines["second"]
    assert f"run 4/4: {RUN_NAMES[3]} (training)" in study.lines["second"]


def test_a_finished_study_trains_nothing(study):
    assert study.third_calls == [] and study.third.trained == 0
    assert sum("(finished, reused)" in line for line in study.lines["third"]) == 4
    assert [r.metrics for r in study.third.results] == [_metrics(study, name) for name in RUN_NAMES]


def test_a_changed_recipe_does_not_reuse_old_runs(study):
    changed = study_from_dict({**STUDY, "overrides": ["train.epochs=2", "train.batch_size=128",
                                                      "output.plots=false"], "out": str(study.out)})
    with pytest.raises(ReslabError, match="train.epochs=1"):
        run_study(changed, progress=False, log=lambda line: None)


def test_shipped_studies_plan_without_training():
    runs = plan(load_study("cifar10-depth"))
    assert len(runs) == 10 * 3 and runs[0].name == "resnet20-cifar10-seed0"
    by_name = {run.name: run for run in runs}
    assert by_name["resnet110-cifar10-seed2"].config.schedule.warmup == "constant"  # its own recipe
    assert by_name["plain56-cifar10-seed1"].config.train.max_iters == 64000
    assert [run.name for run in plan(load_study("digits-depth"))] == [
        "resnet20-digits-seed0", "resnet56-digits-seed0", "plain20-digits-seed0", "plain56-digits-seed0"]


def test_variants_are_one_more_axis_of_the_study(tmp_path):
    study = study_from_dict({**STUDY, "seeds": [0], "out": str(tmp_path),
                             "variants": {"sgd": [], "adam": ["optim.name=adam", "optim.lr=0.001"]}})
    runs = plan(study)
    assert [run.name for run in runs] == ["resnet8-digits-sgd-seed0", "plain8-digits-sgd-seed0",
                                          "resnet8-digits-adam-seed0", "plain8-digits-adam-seed0"]
    assert [run.config.optim.name for run in runs] == ["sgd", "sgd", "adam", "adam"]
    assert all(run.config.train.epochs == 1 and run.run_dir.parent == tmp_path for run in runs)


def test_a_bad_study_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("models: [resnet8]\nseed: [0]\n")
    with pytest.raises(ReslabError, match="unknown config key 'seed'"):
        load_study(path)
    with pytest.raises(ReslabError, match="neither a file nor a shipped study"):
        load_study("no-such-study")
    with pytest.raises(ReslabError, match="invalid depth 9"):  # before any run trains
        plan(study_from_dict({**STUDY, "models": ["resnet8", "resnet9"], "out": str(tmp_path)}))


def test_a_restarted_study_gives_its_interrupted_runs_a_new_device_and_data_root(tmp_path, monkeypatch):
    study = {"recipe": "demo-digits", "models": ["resnet8"], "out": str(tmp_path / "study"),
             "overrides": ["train.epochs=2", "output.plots=false"]}
    real = run_folder.write_history

    def killed_after_first_epoch(path, history):
        real(path, history)
        raise RuntimeError("simulated kill")

    monkeypatch.setattr(run_folder, "write_history", killed_after_first_epoch)
    with pytest.raises(RuntimeError):
        run_study(study_from_dict(study), progress=False, log=lambda line: None)
    monkeypatch.setattr(run_folder, "write_history", real)
    moved = {**study, "overrides": study["overrides"] + ["train.device=cpu", f"data.root={tmp_path / 'elsewhere'}"]}
    result = run_study(study_from_dict(moved), progress=False, log=lambda line: None)
    saved = load_run_config(result.run_dirs[0])
    assert saved.train.device == "cpu" and saved.data.root == str(tmp_path / "elsewhere")
    assert result.trained == 1 and result.results[0].metrics["epochs"] == 2


# ---------------------------------------------------------------- the report


def test_report_numbers_equal_the_runs_metrics(study, report):
    data = json.loads((report.out / "report.json").read_text())
    assert [row["run"] for row in data["runs"]] == sorted(RUN_NAMES, key=lambda n: (n.startswith("resnet"), n))
    for row in data["runs"]:
        metrics = _metrics(study, row["run"])
        test = metrics["test"]
        assert (row["accuracy"], row["precision"], row["recall"], row["f1"]) == (
            test["accuracy"], test["macro_precision"], test["macro_recall"], test["macro_f1"])
        assert (row["parameters"], row["macs"], row["train_seconds"]) == (
            metrics["parameters"], metrics["macs"], metrics["train_seconds"])
        assert row["confusion_matrix"] == test["confusion_matrix"]
    for net in data["summary"]:
        accuracies = [_metrics(study, f"{net['model']}-digits-seed{s}")["test"]["accuracy"] for s in (0, 1)]
        assert net["runs"] == 2 and net["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
        assert net["paper_error"] is None  # He et al. has no digits figures


def test_error_is_one_minus_accuracy_everywhere(report):
    with open(report.out / "runs.csv") as handle:
        for row in csv.DictReader(handle):
            assert float(row["error"]) == pytest.approx(1 - float(row["accuracy"]), abs=1e-12)
    with open(report.out / "summary.csv") as handle:
        for row in csv.DictReader(handle):
            assert float(row["error_mean"]) == pytest.approx(1 - float(row["accuracy_mean"]), abs=1e-12)
    data = json.loads((report.out / "report.json").read_text())
    for row in data["runs"] + data["summary"]:
        accuracy, error = row.get("accuracy", row.get("accuracy_mean")), row.get("error", row.get("error_mean"))
        assert error == pytest.approx(1 - accuracy, abs=1e-12)
    table = [line for line in (report.out / "report.md").read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    checked = 0
    for line in table[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header) or "accuracy" not in header:
            break
        accuracy = float(cells[header.index("accuracy")].split(" ± ")[0])
        error = float(cells[header.index("error (%)")].split(" ± ")[0])
        assert error == pytest.approx(100 * (1 - accuracy), abs=0.011)  # 4 and 2 decimals printed
        checked += 1
    assert checked == 2


def test_figures_are_written_as_valid_pngs(report):
    names = {path.name for path in report.figures}
    for expected in ("error_curves-digits.png", "error_vs_depth-digits.png", "time_vs_depth-digits.png",
                     "f1_per_class-digits.png", "confusion-digits-resnet8.png", "confusion-digits-plain8.png",
                     *(f"curves-{name}.png" for name in RUN_NAMES)):
        assert expected in names
    for path in report.figures:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000, path
        assert matplotlib.image.imread(path).ndim == 3


def test_html_is_self_contained_and_markdown_links_exist(report):
    page = (report.out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(report.figures)
    assert "figures/" not in page
    markdown = (report.out / "report.md").read_text()
    for link in [part.split(")")[0] for part in markdown.split("](")[1:]]:
        assert (report.out / link).is_file(), link
    assert "## Throughput" in markdown and "resnet8" in markdown


def test_paper_figures_are_the_references():
    assert paper_error("resnet20", "cifar10").error == 8.75
    assert paper_error("resnet110", "cifar10").comparable == 6.61  # mean of 5; best 6.43
    assert paper_error("resnet110", "cifar10").error == 6.43
    assert paper_error("preact_resnet1001", "cifar100").error == 22.71
    assert paper_error("resnet152", "imagenet").top5 == 5.71
    assert reference_error("resnet56", "cifar10").error == 6.61
    assert paper_error("plain20", "cifar10") is None and paper_error("resnet20", "digits") is None


# ---------------------------------------------------------------- what the numbers say


def fake_run(model: str, test_accuracy: float, train_accuracy: float, dataset: str = "digits", seed: int = 0) -> Run:
    metrics = {"model": model, "dataset": dataset, "seed": seed, "parameters": 1000, "macs": 10_000,
               "epochs": 1, "best_epoch": 1, "train_seconds": 10.0, "images_per_second": 100.0,
               "test": {"accuracy": test_accuracy, "macro_precision": test_accuracy, "macro_recall": test_accuracy,
                        "macro_f1": test_accuracy}}
    return Run(Path(f"/runs/{model}-{seed}"), metrics, [{"epoch": 1.0, "train_accuracy": train_accuracy}], {})


def findings(*runs: Run) -> str:
    return " ".join(depth_findings(summary_rows([run_row(run) for run in runs])))


def test_deeper_plain_net_with_higher_training_error_is_degradation():
    text = findings(fake_run("plain20", 0.92, 0.98), fake_run("plain56", 0.85, 0.90))
    assert "plain56 (15.00% test error, 10.00% training error) trained worse than plain20 " \
           "(8.00% test error, 2.00% training error): the degradation problem" in text


def test_deeper_plain_net_that_trains_as_well_did_not_degrade():
    text = findings(fake_run("plain20", 0.92, 0.98), fake_run("plain56", 0.93, 0.99))
    assert "did not degrade" in text and "degradation problem" not in text


def test_deeper_plain_net_worse_only_on_test_is_overfitting():
    text = findings(fake_run("plain20", 0.92, 0.98), fake_run("plain56", 0.85, 0.995))
    assert "overfitting, not the degradation problem" in text


def test_residual_nets_improving_or_not_with_depth():
    assert "residual nets improved with depth" in findings(fake_run("resnet20", 0.91, 0.97),
                                                          fake_run("resnet56", 0.93, 0.99))
    assert "residual nets did not improve with depth" in findings(fake_run("resnet20", 0.93, 0.99),
                                                                 fake_run("resnet56", 0.90, 0.99))


def test_differences_within_the_seeds_spread_are_no_difference():
    runs = [fake_run("plain20", 0.92, 0.98, seed=0), fake_run("plain20", 0.88, 0.94, seed=1),
            fake_run("plain56", 0.89, 0.95, seed=0), fake_run("plain56", 0.87, 0.93, seed=1)]
    assert "did not degrade" in findings(*runs)


def test_residual_and_plain_compared_at_equal_depth_and_against_the_paper():
    runs = [fake_run("plain56", 0.85, 0.90, "cifar10"), fake_run("resnet56", 0.93, 0.99, "cifar10")]
    text = findings(*runs)
    assert "depth 56: 7.00% vs 15.00%" in text and "better at 1 of 1 depths" in text
    resnet = next(row for row in summary_rows([run_row(run) for run in runs]) if row["model"] == "resnet56")
    assert resnet["paper_error"] == pytest.approx(0.0697)
    assert resnet["error_minus_paper"] == pytest.approx(0.07 - 0.0697)


# ---------------------------------------------------------------- benchmark and command line


def test_bench_reports_every_field(bench):
    assert [(r["precision"], r["batch_size"]) for r in bench["results"]] == [("fp32", 2), ("bf16", 2)]
    for result in bench["results"]:
        assert set(FIELDS) <= set(result)
        assert result["parameters"] > 0 and result["macs"] > 0
        for key in ("train_images_per_second", "train_latency_ms", "inference_images_per_second",
                    "inference_latency_ms"):
            assert result[key] > 0, key
        assert result["train_images_per_second"] == pytest.approx(2 / (result["train_latency_ms"] / 1000))
        assert result["train_peak_memory_bytes"] >= 0 and result["inference_peak_memory_bytes"] >= 0
    assert bench["environment"]["device"] == "cpu" and "Peak memory" in bench["memory_note"]


def test_cli_bench_writes_json_and_report_includes_it(study, tmp_path, capsys):
    path = tmp_path / "not-yet" / "bench.json"  # the folder is made, as `make bench` needs
    assert main(["bench", "--models", "plain8", "--batch-sizes", "2", "--input-size", "1,8,8",
                 "--precisions", "fp32", "--device", "cpu", "--warmup", "0", "--repeats", "1",
                 "--json", str(path)]) == 0
    assert "plain8" in capsys.readouterr().out
    assert set(FIELDS) <= set(json.loads(path.read_text())["results"][0])
    assert main(["report", str(study.out / RUN_NAMES[0]), str(study.out / RUN_NAMES[2]), "--out",
                 str(tmp_path / "r"), "--bench", str(path)]) == 0
    assert "| resnet8 |" in capsys.readouterr().out
    assert "plain8" in (tmp_path / "r" / "report.md").read_text().split("## Throughput")[1]


def test_cli_compare_reuses_a_finished_study(study, capsys):
    assert main(["compare", "--recipe", "demo-digits", "--models", "resnet8,plain8", "--seeds", "0,1",
                 "--out", str(study.out), "--epochs", "1", "train.batch_size=128", "output.plots=false",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()  # progress is logged (stderr), results printed (stdout)
    assert captured.err.count("(finished, reused)") == 4 and "(0 trained now)" in captured.out
    assert (study.out / "report" / "report.html").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert main(["bench", "--models", "resnet8", "--precisions", "fp64"]) == 2
    assert main(["compare"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reslab: error:")]
    assert len(errors) == 3


# ---------------------------------------------------------------- damaged folders, default output


def _copy_of(study, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(study.out, tmp_path / "study", ignore=shutil.ignore_patterns("*.pt", "report")))


@pytest.mark.parametrize("manifest, fragment", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "a JSON object was expected"),
    ('{"runs": {"name": "x"}}', "must be a list of objects"),
    ('{"runs": [{"name": "../elsewhere"}]}', "not a folder inside the study"),
    ('{"runs": [{"name": "/tmp"}]}', "not a folder inside the study"),
])
def test_a_damaged_study_manifest_is_one_error_line(study, tmp_path, capsys, manifest, fragment):
    folder = _copy_of(study, tmp_path)
    (folder / "study.json").write_text(manifest)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reslab: error: study manifest") and fragment in err and err.count("\n") == 1, err
    assert not (folder / "report").exists()  # nothing written for input that was refused


@pytest.mark.parametrize("description", ["{not json", '"sizes"', "\xff\xfe"])
def test_a_damaged_dataset_description_is_one_error_line(study, tmp_path, capsys, description):
    folder = _copy_of(study, tmp_path)
    for name in RUN_NAMES:
        (folder / name / "dataset.json").write_text(description, errors="surrogateescape")
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reslab: error: dataset description") and err.count("\n") == 1, err


def test_a_damaged_run_config_is_one_error_line(study, tmp_path, capsys):
    folder = _copy_of(study, tmp_path)
    (folder / RUN_NAMES[0] / "config.yaml").write_text("train: [unclosed")
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err.startswith("reslab: error: run config file")
    (folder / RUN_NAMES[0] / "config.yaml").write_text("train: 5\n")
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 2
    assert "is damaged" in capsys.readouterr().err


def test_a_report_goes_into_the_folder_by_default(study, tmp_path, capsys):
    folder = _copy_of(study, tmp_path)
    assert main(["report", str(folder / RUN_NAMES[0])]) == 0
    assert (folder / RUN_NAMES[0] / "report" / "report.md").is_file()
    capsys.readouterr()
    assert main(["report", str(folder / RUN_NAMES[0]), str(folder / RUN_NAMES[1])]) == 2
    assert "give --out" in capsys.readouterr().err
