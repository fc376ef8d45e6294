"""reslab calibrate: temperature scaling of a run on its validation split."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="temperature scaling on the validation split; predict and serve then use it",
        description="Fits one temperature T on the run's validation split (Guo et al. 2017), reports ECE, MCE, NLL "
                    "and Brier before and after on the validation and test splits, and writes calibration.json "
                    "and calibration.png into the run folder (best.pt is not rewritten).")
    parser.add_argument("run", help="a run folder (its best checkpoint) or a checkpoint in its checkpoints/")
    parser.add_argument("--data-root", help="where the dataset is (default: as in training)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate.calibrate import calibrate_run, calibration_table

    record = calibrate_run(Path(args.run), device=args.device, data_root=args.data_root)
    print(calibration_table(record))
    print(f"\nwritten: calibration.json and {record['figure']} in the run folder; reslab predict and serve now divide "
          f"{record['checkpoint']}'s logits by T = {record['temperature']:.4f}")
    return 0
