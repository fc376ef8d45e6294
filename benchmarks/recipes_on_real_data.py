"""Every recipe family on real data: Fashion-MNIST (Debian's dataset-fashion-mnist), each
residual net beside its plain twin trained the same way in the same run.

    python benchmarks/recipes_on_real_data.py                 # 20,000 training images, 3 epochs
    python benchmarks/recipes_on_real_data.py --train-size 0 --epochs 10     # the whole set

Each line is one ``reslab train`` command (printed, so it can be run alone); the table
gives its epochs, training wall time and test accuracy on the 10,000 official test images,
with the CPU's flags. Validation (5,000 images held out of the training set) chooses the
checkpoint; the test set chooses nothing. Writes benchmarks/results/recipes_on_real_data.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from time_to_accuracy import RESULTS, cpu_flags

FASHION = "/usr/share/datasets/fashion-mnist"


def lines(data_root: str, out: Path, epochs: int, train_size: int) -> list[tuple[str, str, list[str]]]:
    """(family, net, reslab train arguments) for every line of the table."""
    # Options first, then every section.key=value together (argparse takes one run of them).
    data = ["--data", "fashion-mnist", "--data-root", data_root, "--epochs", str(epochs), "--out", str(out),
            "--no-progress", "data.download=false", "data.val_size=5000", "output.plots=false"]
    if train_size:
        data.append(f"data.train_size={train_size}")
    # The paper's schedule (lr / 10 at 32k and 48k of 64k iterations) shrunk to this length.
    paper_steps = ["schedule.unit=epoch", f"schedule.milestones=[{max(1, epochs // 2)},{max(1, 3 * epochs // 4)}]"]
    pretrained = str(out / "digits-resnet20" / "checkpoints" / "best.pt")
    transfer = [f"model.pretrained={pretrained}", "model.freeze=backbone", "model.unfreeze_epoch=2",
                "optim.backbone_lr=0.02"]
    table = []
    for net in ("resnet20", "plain20"):
        table += [
            ("paper (He et al. §4.2, shortened)", net, ["--config", f"paper-cifar10-{net}", *data, *paper_steps]),
            ("fast (one-cycle, EMA, TTA)", net, ["--config", "fast-fashion-mnist-resnet20", "--model", net, *data]),
            ("demo (the digits recipe)", net, ["--config", "demo-digits", "--model", net, *data]),
        ]
    table += [
        ("transfer: digits ResNet-20, frozen then fine-tuned", "resnet20",
         ["--config", "fast-fashion-mnist-resnet20", *data, *transfer]),
        ("transfer baseline: same schedule from scratch", "resnet20",
         ["--config", "fast-fashion-mnist-resnet20", *data, "model.freeze=none", "optim.backbone_lr=0.02"]),
    ]
    return table


def reslab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reslab", "train", *args], capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=FASHION)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=20_000, help="training images (0: all 55,000)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    machine = cpu_flags()
    print(f"CPU: {machine}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        # The transfer lines start from a ResNet-20 trained on scikit-learn's digits (8x8).
        source = reslab("--config", "demo-digits", "--model", "resnet20", "--out", str(out), "--name",
                        "digits-resnet20", "--no-progress")
        if source.returncode:
            sys.exit(source.stderr)
        for index, (family, net, arguments) in enumerate(lines(args.data_root, out, args.epochs, args.train_size)):
            name = f"line{index}-{net}"
            started = time.perf_counter()
            process = reslab(*arguments, "--name", name)
            wall = time.perf_counter() - started
            if process.returncode:
                sys.exit(f"{family} / {net} failed:\n{process.stderr[-3000:]}")
            metrics = json.loads((out / name / "metrics.json").read_text())
            shown = ["reslab", "train", *arguments]
            row = {"family": family, "net": net, "epochs": metrics["epochs"], "wall_seconds": wall,
                   "train_seconds": metrics["train_seconds"], "test_accuracy": metrics["test"]["accuracy"],
                   "best_weights": metrics.get("best_weights"), "precision": metrics["precision"],
                   "command": " ".join(shlex.quote(a) for a in shown).replace(str(out), "runs")}
            rows.append(row)
            print(f"{family:<52} {net:<9} {row['epochs']} epochs  {wall:6.0f} s  "
                  f"test accuracy {row['test_accuracy']:.4f}  ({row['best_weights']} weights)", flush=True)
    print("\n| recipe family | net | epochs | wall time | test accuracy |\n|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['family']} | {row['net']} | {row['epochs']} | {row['wall_seconds'] / 60:.1f} min | "
              f"{100 * row['test_accuracy']:.2f}% |")
    (RESULTS / "recipes_on_real_data.json").write_text(json.dumps({"machine": machine, "rows": rows,
                                                                    "train_size": args.train_size}, indent=2))
    print(f"\nwritten: {RESULTS / 'recipes_on_real_data.json'}")


if __name__ == "__main__":
    main()
