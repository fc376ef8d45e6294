"""The multi-label path on real pixels: reslab trained through ``--data coco`` on 2x2 mosaics
of Fashion-MNIST images (JPEGs with COCO instance annotations, fashion_mnist_folders.py),
its test figures (mAP, CP, CR, CF1, OP, OR, OF1), and a cross-check of them against
scikit-learn on the same model outputs.

The run is an ordinary one (``reslab.train.loop.train``), by default the Fashion-MNIST fast
recipe at 56x56 with the settings multi-label data needs (binary cross-entropy, no label
smoothing), normalization 0.5 / 0.5 and the recipe's pad-2 crop and flip. Its test split
is val2017 (the mosaics of the official test images). Then the best checkpoint is run over
val2017 again as ``reslab evaluate`` runs it (``load_for_evaluation``: the run's precision
and flip TTA), and on those logits:

- mAP with scikit-learn's ``average_precision_score`` per class (the mean over the classes
  with a positive image, reslab's definition: evaluate/multilabel.py), and with its
  ``average="macro"`` over all classes;
- CP and CR with ``precision_score`` / ``recall_score(average="macro", zero_division=0)`` at
  the run's threshold, CF1 = 2 CP CR / (CP + CR); OP, OR, OF1 with ``average="micro"``;
  subset accuracy with ``accuracy_score``;
- the targets the loader gave against the classes written in instances_val2017.json.

Printed: reslab's figures in metrics.json, reslab's on the re-run outputs, scikit-learn's
on them, and the differences (the same outputs must agree to 1e-6; metrics.json against
the re-run shows whether re-evaluation reproduces the run).

    python benchmarks/coco_mosaics.py --mosaics /tmp/fmnist-coco --epochs 3
    python benchmarks/coco_mosaics.py --mosaics /tmp/fmnist-coco --train-mosaics 4000 --val-mosaics 1000 --epochs 2

Writes benchmarks/results/coco_mosaics.json (or --json) with the CPU flags and the exact
``reslab train`` command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reslab.config import load
from reslab.evaluate.multilabel import multilabel_metrics
from reslab.evaluate.runner import load_for_evaluation
from reslab.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks beside this one
from fashion_mnist_folders import DATA_ROOT, YEAR, write_mosaics

from common import cpu_flags, run_script, write_figures

RESULTS = Path(__file__).parent / "results"
FIGURES = ("map", "cp", "cr", "cf1", "op", "or", "of1", "subset_accuracy")


def sklearn_figures(logits: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict:
    """mAP, CP, CR and CF1 of ``logits`` computed with scikit-learn alone."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score

    truth = targets.numpy() >= 0.5
    scores = torch.sigmoid(logits.float()).numpy()
    with_positives = [c for c in range(truth.shape[1]) if truth[:, c].any()]
    per_class = [average_precision_score(truth[:, c], scores[:, c]) for c in with_positives]
    predicted = scores >= threshold
    cp = precision_score(truth, predicted, average="macro", zero_division=0)
    cr = recall_score(truth, predicted, average="macro", zero_division=0)
    return {
        "map": float(np.mean(per_class)),
        "map_classes": len(with_positives),
        "map_macro_all_classes": float(average_precision_score(truth, scores, average="macro")),
        "cp": float(cp), "cr": float(cr), "cf1": float(2 * cp * cr / (cp + cr)) if cp + cr > 0 else 0.0,
        # OP, OR, OF1: the counts pooled over classes, scikit-learn's "micro" average
        "op": float(precision_score(truth, predicted, average="micro", zero_division=0)),
        "or": float(recall_score(truth, predicted, average="micro", zero_division=0)),
        "of1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(truth, predicted)),
    }


def annotated_targets(root: Path, classes: int) -> np.ndarray:
    """Multi-hot rows of val{YEAR}'s images in image-id order, from the JSON itself."""
    document = json.loads((root / "annotations" / f"instances_val{YEAR}.json").read_text())
    ids = sorted(image["id"] for image in document["images"])
    row = {image_id: number for number, image_id in enumerate(ids)}
    rows = np.zeros((len(ids), classes), dtype=bool)
    for annotation in document["annotations"]:
        rows[row[annotation["image_id"]], annotation["category_id"] - 1] = True
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mosaics", type=Path, required=True,
                        help="the COCO mosaic set (fashion_mnist_folders.py --mosaics; written here if not complete)")
    parser.add_argument("--train-mosaics", type=int, default=None, help="default: 15,000 (each training image once)")
    parser.add_argument("--val-mosaics", type=int, default=None, help="default: 2,500 (each test image once)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the Fashion-MNIST IDX files")
    parser.add_argument("--recipe", default="fast-fashion-mnist-resnet20")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--val-size", type=float, default=0.1, help="held out of train2017 to choose the checkpoint")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=None, help="keep the run folder here (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=RESULTS / "coco_mosaics.json")
    parser.add_argument("overrides", nargs="*", help="section.key=value for the run (e.g. model.name=resnet8)")
    args = parser.parse_args(argv)
    export = write_mosaics(args.mosaics, args.train_mosaics, args.val_mosaics, root=args.data_root)
    machine = cpu_flags()
    print(f"machine: {machine}")
    print(f"{args.mosaics}: {export['images']['train']:,} train{YEAR} and {export['images']['val']:,} val{YEAR} "
          f"mosaics, {export['mean_labels_per_image']['val']:.2f} labels per val{YEAR} image", flush=True)
    overrides = ["data.name=coco", f"data.root={args.mosaics}", f"data.coco_year={YEAR}", "data.download=false",
                 f"data.image_size={args.image_size}", f"data.val_size={args.val_size}", "data.normalization=inception",
                 "train.loss=bce", "train.label_smoothing=0", f"train.epochs={args.epochs}", "train.max_iters=null",
                 f"train.seed={args.seed}", "output.plots=false", *args.overrides]
    with tempfile.TemporaryDirectory() as temporary:
        out = args.runs or Path(temporary)
        overrides += [f"output.dir={out}", f"output.name=coco-mosaics-seed{args.seed}"]
        config = load(args.recipe, overrides)
        started = time.perf_counter()
        result = train(config, progress=False)
        wall = time.perf_counter() - started
        stored = result.metrics["test"]
        pipeline = json.loads((result.run_dir / "dataset.json").read_text()).get("pipeline")
        checkpoint = result.run_dir / "checkpoints" / "best.pt"
        with load_for_evaluation(checkpoint, device=str(result.metrics["device"])) as loaded:
            logits, targets = loaded.logits(loaded.loader("test"))
            threshold = loaded.config.train.threshold
            classes = loaded.bundle.classes
    rerun = multilabel_metrics(logits, targets, classes, threshold)
    checked = sklearn_figures(logits, targets, threshold)
    truth = annotated_targets(args.mosaics, len(classes))
    targets_match = truth.shape == tuple(targets.shape) and bool((truth == (targets.numpy() >= 0.5)).all())

    print(f"\ntrained {result.metrics['epochs']} epochs in {result.metrics['train_seconds']:.1f} s "
          f"({result.metrics['images_per_second']:.0f} img/s), {wall:.1f} s wall; best weights: "
          f"{result.metrics.get('best_weights')}")
    print(f"test (val{YEAR}, {stored['samples']} mosaics), threshold {threshold}:")
    print("| figure | metrics.json | reslab on the re-run outputs | scikit-learn on them | difference |")
    print("|---|---:|---:|---:|---:|")
    differences = {}
    for key in FIGURES:
        reference = checked.get(key)
        difference = None if reference is None else rerun[key] - reference
        differences[key] = difference
        shown = "" if reference is None else f"{reference:.6f}"
        gap = "" if difference is None else f"{difference:.1e}"
        print(f"| {key} | {stored[key]:.6f} | {rerun[key]:.6f} | {shown} | {gap} |")
    run_vs_rerun = {key: stored[key] - rerun[key] for key in FIGURES}
    print(f"mAP over {checked['map_classes']} classes with positives; scikit-learn's average='macro' over all "
          f"{len(classes)}: {checked['map_macro_all_classes']:.6f}")
    print(f"mAP: |reslab - scikit-learn| on the same outputs = {abs(differences['map']):.1e}; "
          f"|metrics.json - re-run| = {abs(run_vs_rerun['map']):.1e}")
    print(f"targets of the loader {'match' if targets_match else 'DO NOT match'} the classes in "
          f"instances_val{YEAR}.json")
    summary = {
        "machine": machine, "torch": torch.__version__, "recipe": args.recipe, "epochs": args.epochs,
        "image_size": args.image_size, "mosaics": str(args.mosaics), "mosaic_export": export["request"],
        "images": export["images"], "mean_labels_per_image": export["mean_labels_per_image"],
        "classes": classes, "threshold": threshold, "pipeline": pipeline,
        "train_seconds": result.metrics["train_seconds"],
        "wall_seconds": wall, "images_per_second": result.metrics["images_per_second"],
        "best_weights": result.metrics.get("best_weights"), "bad_files": result.metrics["bad_files"],
        "test": {key: stored[key] for key in (*FIGURES, "map_classes", "samples", "hamming_loss", "loss")},
        "per_class_ap": {row["class"]: row["ap"] for row in stored["per_class"]},
        "rerun": {key: rerun[key] for key in FIGURES}, "sklearn": checked,
        "sklearn_minus_reslab": {key: -value for key, value in differences.items() if value is not None},
        "metrics_json_minus_rerun": run_vs_rerun, "targets_match_annotations": targets_match,
        "command": shlex.join(["reslab", "train", "--config", args.recipe, *overrides, "--no-progress"]),
    }
    write_figures(args.json, summary)
    return summary


if __name__ == "__main__":
    run_script(main, "coco_mosaics")
