"""reslab bench: models' training and inference speed and memory; or, given a run, its CPU
inference through several engines."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReslabError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="training and inference throughput, latency and peak memory; or a "
                                   "run's CPU inference through eager, compiled, ONNX Runtime and int8 engines")
    parser.add_argument("run", nargs="?", metavar="RUN", help="a run folder or checkpoint: compare CPU inference "
                        "engines on it (images/s, test accuracy) instead of timing --models")
    parser.add_argument("--models", help="comma-separated model names")
    parser.add_argument("--batch-sizes", default="1,128", help="comma-separated (default 1,128)")
    parser.add_argument("--input-size", default="3,32,32", help="C,H,W; several separated by ';' (default 3,32,32)")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16 (GPU) (default fp32)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations; the median is reported (default 10)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--engines", default="eager,compiled,onnxruntime,int8",
                        help="with RUN: comma-separated, of eager, compiled, onnxruntime, int8 (default all)")
    parser.add_argument("--images", type=int, help="with RUN: accuracy over the first N test images (default all)")
    parser.add_argument("--data-root", help="with RUN: where its dataset is, if it moved since training")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.run is not None:
        from ..inference.engines import cmd_bench_engines

        return cmd_bench_engines(args)
    if not args.models:
        raise ReslabError("give --models NAMES to time models, or a run folder or checkpoint to compare inference "
                          "engines")
    from ..experiments.bench import format_bench, parse_input_sizes, run_bench, write_bench

    def numbers(text: str, flag: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ReslabError(f"{flag} must be numbers separated by commas, got {text!r}") from None

    bench = run_bench([m.strip() for m in args.models.split(",") if m.strip()],
                      numbers(args.batch_sizes, "--batch-sizes"), parse_input_sizes(args.input_size),
                      [p.strip() for p in args.precisions.split(",") if p.strip()], device=args.device,
                      num_classes=args.num_classes, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                      channels_last=args.channels_last)
    print(format_bench(bench))
    if args.json:
        write_bench(bench, Path(args.json))
        print(f"written: {args.json}")
    return 0
