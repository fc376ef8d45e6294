"""`make gpu-check DRY=1`: the GPU check (benchmarks/gpu_check.py) runs every stage on the CPU
at a tiny size, so that the script a session lent a GPU runs cannot rot between such sessions."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BROUGHT_BACK = ["gpu_check.log", "pytest.xml", "summary.json", "time_to_accuracy.json", "time_to_accuracy.png",
                "train_speed.json"]


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_dry_run_runs_every_stage_and_writes_what_a_gpu_run_brings_back(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(["make", "--no-print-directory", "gpu-check", "DRY=1", f"OUT={out}",
                                f"GPU_PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # The table comes last (the device tool returns the output's tail): 3 stages, 2 goals.
    assert completed.stdout.splitlines()[-7].startswith("gpu-check (dry run on the CPU) in ")
    # What the device tool brings back: at most 8 files, plain names.
    assert sorted(p.name for p in out.iterdir()) == BROUGHT_BACK
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in BROUGHT_BACK)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    assert {name: stage["status"] for name, stage in summary["stages"].items()} == {
        "pytest": "passed", "train_speed": "passed", "time_to_accuracy": "passed"}

    # Every CUDA test ran into its hardware skip, and nothing else.
    cases = list(ElementTree.parse(out / "pytest.xml").getroot().iter("testcase"))
    assert len(cases) >= 10
    assert all(case.find("skipped").get("message") == "no CUDA device" for case in cases)
    tests = summary["stages"]["pytest"]
    assert (tests["tests"], tests["skipped"], tests["failed"]) == (len(cases), len(cases), 0)
    assert tests["skip_reasons"] == {"no CUDA device": len(cases)}

    speed = json.loads((out / "train_speed.json").read_text())["training"]["resnet8"]
    for name in ("reference fp32", "reslab fp32 channels_last"):
        assert speed[name]["images_per_second"] > 0 and len(speed[name]["repeats"]) == 1
    assert speed["reslab fp32 channels_last"]["first_epoch_seconds"][0] > 0
    figures = summary["stages"]["train_speed"]["figures"]["resnet8"]
    assert figures["ratio"] == pytest.approx(speed["reslab fp32 channels_last"]["ratio"])

    accuracy = json.loads((out / "time_to_accuracy.json").read_text())
    assert accuracy["budget"] == "fixed" and accuracy["budget_seconds"] == 2
    assert len(accuracy["reference"]) == 1 and accuracy["reslab_epochs"] == len(accuracy["reslab"]) >= 1
    seconds = [row["seconds"] for row in accuracy["reslab"]]
    assert seconds == sorted(seconds) and all(0 <= row["test_accuracy"] <= 1 for row in accuracy["reslab"])
    assert set(accuracy["time_to_goal_seconds"]) == {"reference", "reslab"}
    # Random pixels and labels cannot reach 94%: both goals are judged, and not met.
    assert [goal["met"] for goal in summary["goals"].values()] == [False, False]


def test_a_real_run_on_a_machine_without_cuda_is_refused_in_one_line(tmp_path):
    completed = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "out")], cwd=ROOT,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert completed.returncode == 2
    assert completed.stderr.strip() == ("gpu-check: error: no CUDA device here; run it on a GPU machine (see this "
                                        "script's header) or with --dry-run (make gpu-check DRY=1)")
    assert not list((tmp_path / "out").iterdir())


def test_the_gpu_run_asks_for_what_its_benchmarks_offer_within_eight_minutes(tmp_path):
    gpu_check, train_speed = benchmark("gpu_check"), benchmark("train_speed")
    offered = train_speed.reslab_variants(torch.device("cuda"), native_bf16=True, compiled=True)
    assert set(gpu_check.GPU_VARIANTS) <= set(offered)
    stages = gpu_check.stages(tmp_path, ROOT / "data" / "fashion-mnist", dry=False)
    assert [stage.name for stage in stages] == ["pytest", "train_speed", "time_to_accuracy"]
    assert sum(stage.limit for stage in stages) <= gpu_check.BUDGET_SECONDS <= 8 * 60
    assert all("cuda" in stage.command for stage in stages[1:])
    written = [name for stage in stages for name in stage.outputs] + ["gpu_check.log", "summary.json"]
    assert sorted(written) == BROUGHT_BACK
    # The device call in the header carries the folder `make gpu-data` fills and the script reads.
    assert 'carry=["data/fashion-mnist"]' in gpu_check.__doc__ and "--data data/fashion-mnist" in gpu_check.__doc__
    assert "data/fashion-mnist" in (ROOT / "Makefile").read_text()
