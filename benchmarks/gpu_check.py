"""The GPU check (issue 22): one prepared script for a lent GPU machine, run there as it is
(its python3 with torch 2.11, no venv, no install), in at most 8 minutes, every result under
--out (the device tool's $OUT: at most 8 files come back, and these are 6):

  1. pytest -m gpu tests/test_gpu.py     the CUDA paths                  -> pytest.xml
  2. benchmarks/train_speed.py           ResNet-20 32x32 images/s, reslab
                                         against the reference loop      -> train_speed.json
  3. benchmarks/time_to_accuracy.py      Fashion-MNIST, 60 s budget      -> time_to_accuracy.json, .png
  then summary.json (each stage's status, the figures, the issue's goals) and gpu_check.log
  (every stage's whole output). The summary table is printed last, so the tool's output_tail
  holds it. Each stage has its own time limit: one that hangs costs only its own figures, and
  the speed benchmark writes its JSON after every repeat.

A session lent a GPU: first, on its own machine, `make gpu-data` (Fashion-MNIST's IDX files
into data/fashion-mnist, which git ignores: it travels through `carry`), then the device tool's

  run(command="PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --data data/fashion-mnist",
      carry=["data/fashion-mnist"], timeout_s=540)

and give the machine back at once unless it reruns straight away: the 15 minutes of device
time hold one whole run and its start, and then a rerun of one stage on the warm machine
(--stages pytest, or train_speed, or time_to_accuracy). Here: `make gpu-check`
(OUT=folder, default runs/gpu-check). `make gpu-check DRY=1` (--dry-run) runs every stage on
the CPU at a tiny size, with CUDA hidden, on generated IDX files; tests/test_gpu_check.py runs
that in the suite, so this script cannot rot between the sessions that have a GPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 470  # the 8 minutes, less the start of the script
GOAL_ACCURACY, GOAL_SECONDS, GOAL_SPEEDUP = 0.94, 60.0, 2.0
# train_speed.py's variants on the GPU: eager fp32 and bf16 (NCHW and channels-last), and bf16
# channels-last with CUDA graphs (its plain fp32 NCHW run is left out for time).
GPU_VARIANTS = ("reslab fp32 channels_last", "reslab bf16", "reslab bf16 channels_last",
                "reslab bf16 channels_last reduce-overhead")


@dataclass
class Stage:
    name: str
    command: list[str]
    limit: float  # seconds
    outputs: list[str] = field(default_factory=list)  # files it writes under --out


def stages(out: Path, data: Path, dry: bool) -> list[Stage]:
    """The three stages and their time limits. On the GPU they share the 8 minutes, by a guess
    not yet measured (tests 2 min, much of it compiling; speed 2 min; time to accuracy 2.5 min,
    1 min of it the training budget); a dry run's are loose, as it runs in the suite on two
    busy cores."""
    python = sys.executable
    pytest = Stage("pytest", [python, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-v", "-rs",
                              "-p", "no:cacheprovider", f"--junitxml={out / 'pytest.xml'}"],
                   180 if dry else 160, ["pytest.xml"])
    if dry:
        speed = ["--device", "cpu", "--models", "resnet8", "--images", "256", "--batch-size", "64", "--repeats", "1",
                 "--ref-workers", "0", "--variants", "reslab fp32 channels_last"]
        accuracy = ["--device", "cpu", "--model", "resnet8", "--reference-epochs", "1", "--workers", "0",
                    "--budget-seconds", "2", "--max-epochs", "2", "--no-expert", "data.val_size=100",
                    "model.name=resnet8", "train.batch_size=64"]
    else:
        # 100 steps an epoch (the rate is the second epoch's), two interleaved repeats.
        speed = ["--device", "cuda", "--models", "resnet20", "--images", "12800", "--repeats", "2", "--compile",
                 "--variants", ",".join(GPU_VARIANTS)]
        accuracy = ["--device", "cuda", "--budget-seconds", str(GOAL_SECONDS), "--goal", str(GOAL_ACCURACY),
                    "--max-epochs", "60"]
    return [
        pytest,
        Stage("train_speed", [python, "benchmarks/train_speed.py", "--no-inference", "--json",
                              str(out / "train_speed.json"), *speed], 180 if dry else 150, ["train_speed.json"]),
        Stage("time_to_accuracy", [python, "benchmarks/time_to_accuracy.py", "--data-root", str(data), "--json",
                                   str(out / "time_to_accuracy.json"), *accuracy], 180 if dry else 160,
              ["time_to_accuracy.json", "time_to_accuracy.png"]),
    ]


def write_tiny_fashion_mnist(folder: Path, train: int = 600, test: int = 200) -> Path:
    """Random images in Fashion-MNIST's four gzipped IDX files (LeCun's format), for the dry run."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (count, 28, 28))),
                            ("labels-idx1", rng.integers(0, 10, count))):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            raw = header + array.astype(np.uint8).tobytes()
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(raw))
    return folder


def run_stage(stage: Stage, env: dict, log, deadline: float) -> dict:
    limit = max(1.0, min(stage.limit, deadline - time.monotonic()))
    log.write(f"\n===== {stage.name}: {' '.join(stage.command)}  (limit {limit:.0f} s)\n")
    log.flush()
    started = time.monotonic()
    # Its own process group, so that a stage stopped at its limit takes its loader workers along.
    process = subprocess.Popen(stage.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        code = process.wait(timeout=limit)
        status = "passed" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code, status = None, "timed out"
    seconds = time.monotonic() - started
    log.write(f"===== {stage.name}: {status} in {seconds:.1f} s\n")
    log.flush()
    print(f"gpu-check: {stage.name} {status} in {seconds:.0f} s", flush=True)
    return {"status": status, "returncode": code, "seconds": round(seconds, 1), "limit_seconds": round(limit)}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pytest_figures(path: Path) -> dict:
    """Counts, failures and skip reasons from pytest's JUnit XML."""
    try:
        suite = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return {"junit": "missing (pytest crashed or was stopped)"}
    cases = list(suite.iter("testcase"))
    outcome = {"passed": [], "failed": [], "skipped": []}
    reasons: dict[str, int] = {}
    for case in cases:
        name = case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome["failed"].append(name)
        elif (skip := case.find("skipped")) is not None:
            outcome["skipped"].append(name)
            reason = skip.get("message", "").removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            outcome["passed"].append(name)
    return {"tests": len(cases), **{key: len(names) for key, names in outcome.items()},
            "failures": outcome["failed"], "skip_reasons": reasons}


def speed_figures(results: dict | None) -> dict:
    """Per model: the reference's rate and reslab's fastest variant against it."""
    if not results or not results.get("training"):
        return {}
    figures = {}
    for model, rows in results["training"].items():
        if rows.get("unfinished"):
            figures[model] = {"unfinished": True}
            continue
        reference = rows["reference fp32"]["images_per_second"]
        fastest = max((name for name in rows if name.startswith("reslab")),
                      key=lambda name: rows[name]["images_per_second"])
        figures[model] = {"reference_images_per_second": reference, "fastest": fastest,
                          "fastest_images_per_second": rows[fastest]["images_per_second"],
                          "ratio": rows[fastest]["images_per_second"] / reference,
                          "cudagraph_skips": (results.get("cudagraph_skips") or {}).get(model)}
    return figures


def accuracy_figures(results: dict | None) -> dict:
    if not results:
        return {}
    return {"device": results["machine"].get("device"), "budget_seconds": results["budget_seconds"],
            "reslab_epochs": results["reslab_epochs"], "reslab_reached": results["reslab_reached"],
            "reference_reached": results["reference_reached"],
            "reslab_final_test_accuracy": results["reslab_final_test_accuracy"],
            "time_to_goal_seconds": results["time_to_goal_seconds"], "goal": results["goal"]}


def goals(speed: dict, accuracy: dict) -> dict:
    """The issue's two goals for the first GPU run (ResNet-20; the dry run's ResNet-8 stands in
    for it); "met" is None where the stage gave no figure."""
    model = "resnet20" if "resnet20" in speed else next(iter(speed), None)
    ratio = speed.get(model, {}).get("ratio")
    seconds = (accuracy.get("time_to_goal_seconds") or {}).get("reslab") if accuracy else None
    return {
        f"training_at_least_{GOAL_SPEEDUP:g}x_the_reference": {
            "met": None if ratio is None else ratio >= GOAL_SPEEDUP, "model": model, "ratio": ratio},
        f"fashion_mnist_{100 * GOAL_ACCURACY:.1f}_percent_in_under_{GOAL_SECONDS:g}_s": {
            "met": None if not accuracy else seconds is not None and seconds < GOAL_SECONDS,
            "seconds_to_goal": seconds, "best_within_budget": accuracy.get("reslab_reached") if accuracy else None},
    }


def table(summary: dict) -> str:
    lines = [f"gpu-check ({'dry run on the CPU' if summary['dry_run'] else summary['device']}) "
             f"in {summary['seconds']:.0f} s",
             f"  {'stage':<18}{'status':<11}{'seconds':>8}  result"]
    for name, stage in summary["stages"].items():
        if name == "pytest":
            result = (f"{stage.get('tests', 0)} tests: {stage.get('passed', 0)} passed, {stage.get('failed', 0)} "
                      f"failed, {stage.get('skipped', 0)} skipped {stage.get('skip_reasons') or ''}"
                      if "tests" in stage else stage.get("junit", ""))
        elif name == "train_speed":
            result = "; ".join(
                f"{model}: reference {row['reference_images_per_second']:.0f} img/s, {row['fastest']} "
                f"{row['fastest_images_per_second']:.0f} ({row['ratio']:.2f}x)" if "ratio" in row
                else f"{model}: unfinished" for model, row in stage.get("figures", {}).items()) or "no figures"
        else:
            figures = stage.get("figures") or {}
            reached = (figures.get("time_to_goal_seconds") or {}).get("reslab")
            result = (f"reslab best {figures['reslab_reached'] or 0:.4f} within {figures['budget_seconds']:.0f} s "
                      f"({figures['reslab_epochs']} epochs); {100 * figures['goal']:.1f}% reached "
                      f"{'never' if reached is None else f'after {reached:.1f} s'}" if figures else "no figures")
        lines.append(f"  {name:<18}{stage['status']:<11}{stage['seconds']:>8.1f}  {result}")
    for goal, value in summary["goals"].items():
        verdict = {True: "met", False: "not met", None: "no figure"}[value["met"]]
        lines.append(f"  goal {goal}: {verdict}  {json.dumps({k: v for k, v in value.items() if k != 'met'})}")
    return "\n".join(lines)


def environment(env: dict) -> dict:
    """The machine as torch sees it (in a child, so that this process never starts CUDA)."""
    code = ("import json, platform, torch; c = torch.cuda.is_available(); print(json.dumps({"
            "'torch': torch.__version__, 'cuda': torch.version.cuda, "
            "'device': torch.cuda.get_device_name(0) if c else 'cpu', "
            "'capability': list(torch.cuda.get_device_capability(0)) if c else None, "
            "'python': platform.python_version()}))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1:] or ["torch failed to start"]}
    return json.loads(completed.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check", help="results folder ($OUT)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "fashion-mnist",
                        help="Fashion-MNIST's four IDX files (make gpu-data puts them in data/fashion-mnist)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at a tiny size")
    parser.add_argument("--stages", default="pytest,train_speed,time_to_accuracy",
                        help="comma-separated: the stages to run (a rerun of one)")
    args = parser.parse_args()
    wanted = args.stages.split(",")
    known = [stage.name for stage in stages(args.out, args.data, args.dry_run)]
    if set(wanted) - set(known):
        parser.error(f"--stages: unknown {sorted(set(wanted) - set(known))}; choose from {', '.join(known)}")
    started = time.monotonic()
    deadline = started + BUDGET_SECONDS
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), "PYTHONUNBUFFERED": "1",
           "PYTHONWARNINGS": "ignore",
           # cuBLAS is deterministic with a fixed workspace set before it starts (the resume tests)
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a machine with a GPU
    machine = environment(env)
    if not args.dry_run and machine.get("device") in (None, "cpu"):
        print("gpu-check: error: no CUDA device here; run it on a GPU machine (see this script's header) "
              "or with --dry-run (make gpu-check DRY=1)", file=sys.stderr)
        return 2
    data = args.data
    with tempfile.TemporaryDirectory() as folder:
        if args.dry_run:
            data = write_tiny_fashion_mnist(Path(folder) / "fashion-mnist")
        elif not any(data.glob("train-images-idx3-ubyte*")):
            print(f"gpu-check: error: no Fashion-MNIST IDX files in {data}; run make gpu-data first and carry "
                  "data/fashion-mnist", file=sys.stderr)
            return 2
        results = {}
        with open(args.out / "gpu_check.log", "w") as log:
            log.write(f"gpu-check {'dry run' if args.dry_run else ''} on {json.dumps(machine)}\n")
            if not args.dry_run:
                try:
                    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
                    log.write(smi.stdout + smi.stderr)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    log.write(f"nvidia-smi: {exc}\n")
            for stage in stages(args.out, data, args.dry_run):
                if stage.name in wanted:
                    results[stage.name] = run_stage(stage, env, log, deadline)
    if "pytest" in results:
        results["pytest"].update(pytest_figures(args.out / "pytest.xml"))
    if "train_speed" in results:
        results["train_speed"]["figures"] = speed_figures(read_json(args.out / "train_speed.json"))
    if "time_to_accuracy" in results:
        results["time_to_accuracy"]["figures"] = accuracy_figures(read_json(args.out / "time_to_accuracy.json"))
    summary = {"dry_run": args.dry_run, **machine, "seconds": round(time.monotonic() - started, 1),
               "stages": results,
               "goals": goals(results.get("train_speed", {}).get("figures", {}),
                              results.get("time_to_accuracy", {}).get("figures", {}))}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary))
    return 0 if all(stage["status"] == "passed" for stage in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
