"""reslab predict: classify image files with a trained model, optionally with Grad-CAM."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify image files with a trained model (top-k, Grad-CAM)")
    parser.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file, a hub folder "
                        "(timm's layout: config.json + model.safetensors) or hf-hub:org/name")
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--threshold", type=float,
                        help="multi-label checkpoints: show every label over this probability (default 0.5)")
    parser.add_argument("--explain", metavar="DIR", help="also write a Grad-CAM overlay PNG per image into DIR")
    parser.add_argument("--class", dest="target_class", metavar="NAME",
                        help="with --explain: explain this class (name or index), not the predicted one")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..inference.predict_command import run_predict

    print(run_predict(args.checkpoint, args.images, top_k=args.top_k, style=args.format, threshold=args.threshold,
                      explain=args.explain, target_class=args.target_class, batch_size=args.batch_size,
                      device=args.device, note=lambda line: print(line, file=sys.stderr)))
    return 0
