"""Class weights on an imbalanced folder of real images: Fashion-MNIST's PNG class folders
(fashion_mnist_folders.py) cut down so that half the classes are rare, trained twice with the
same recipe, epochs and seed, once with ``train.class_weights=none`` and once with
``balanced``, and scored on the whole (balanced) test split. Prints each class's recall and
F1 side by side, with accuracy and the macro figures; writes
benchmarks/results/class_weights.json with the CPU flags and the exact commands.

    python benchmarks/class_weights.py --folders /tmp/fmnist-png --common 1000 --rare 50 --epochs 5
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from reslab.config import load
from reslab.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks beside this one
from fashion_mnist_folders import write_folders

from common import cpu_flags, write_figures

RESULTS = Path(__file__).parent / "results"


def imbalanced_copy(folders: Path, out: Path, common: int, rare: int) -> dict[str, int]:
    """out/train: the first ``common`` images of the first half of the classes and the first
    ``rare`` of the others; out/test: the whole test split (copied files, not links)."""
    counts = {}
    classes = sorted(p.name for p in (folders / "train").iterdir() if p.is_dir())
    for index, name in enumerate(classes):
        keep = common if index < len(classes) // 2 else rare
        target = out / "train" / name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted((folders / "train" / name).iterdir())[:keep]:
            shutil.copyfile(path, target / path.name)
        counts[name] = keep
    shutil.copytree(folders / "test", out / "test", dirs_exist_ok=True)
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=Path, default=Path("/tmp/fmnist-png"), help="the PNG class folders")
    parser.add_argument("--common", type=int, default=1000, help="training images of each common class")
    parser.add_argument("--rare", type=int, default=50, help="training images of each rare class")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--recipe", default="scratch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "class_weights.json")
    parser.add_argument("overrides", nargs="*", help="more section.key=value for both runs")
    args = parser.parse_args(argv)
    if not (args.folders / "train").is_dir():
        write_folders(args.folders)  # all 70,000 images, about a minute
    work = Path(tempfile.mkdtemp(prefix="class-weights-"))
    counts = imbalanced_copy(args.folders, work / "data", args.common, args.rare)
    rows, commands = {}, {}
    for weights in ("none", "balanced"):
        overrides = ["data.name=folder", f"data.root={work / 'data'}", f"train.epochs={args.epochs}",
                     f"train.seed={args.seed}", f"train.class_weights={weights}", "output.plots=false",
                     *args.overrides, f"output.dir={work / 'runs'}", f"output.name={weights}"]
        commands[weights] = "reslab train --config " + shlex.join([args.recipe, *overrides])
        started = time.perf_counter()
        result = train(load(args.recipe, overrides), progress=False)
        test = result.metrics["test"]
        rows[weights] = {"accuracy": test["accuracy"], "macro_recall": test["macro_recall"],
                         "macro_f1": test["macro_f1"], "wall_seconds": time.perf_counter() - started,
                         "per_class": {row["class"]: {"recall": row["recall"], "f1": row["f1"]}
                                       for row in test["per_class"]}}
    print(f"training images per class: {counts}; {args.epochs} epochs, recipe {args.recipe}, seed {args.seed}")
    print(f"{'class':<14}{'train':>7}{'recall none':>13}{'recall bal.':>13}{'F1 none':>10}{'F1 bal.':>10}")
    for name, count in counts.items():
        none, balanced = rows["none"]["per_class"][name], rows["balanced"]["per_class"][name]
        print(f"{name:<14}{count:>7}{none['recall']:>13.3f}{balanced['recall']:>13.3f}{none['f1']:>10.3f}"
              f"{balanced['f1']:>10.3f}")
    for key in ("accuracy", "macro_recall", "macro_f1"):
        print(f"{key:<21}{rows['none'][key]:>13.4f}{rows['balanced'][key]:>13.4f}")
    rare = [name for name, count in counts.items() if count == args.rare]
    mean_rare = {w: sum(rows[w]["per_class"][n]["recall"] for n in rare) / len(rare) for w in rows}
    print(f"mean recall of the rare classes: {mean_rare['none']:.3f} -> {mean_rare['balanced']:.3f}")
    report = {"counts": counts, "epochs": args.epochs, "recipe": args.recipe, "seed": args.seed, "runs": rows,
              "rare_mean_recall": mean_rare, "commands": commands, "cpu": cpu_flags()}
    write_figures(args.json, report)
    shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
