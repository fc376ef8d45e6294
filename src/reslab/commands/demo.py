"""reslab demo: the main job, ResNet-20 against Plain-20 on the embedded digits, and its report."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main job: ResNet-20 vs Plain-20 on the embedded digits")
    parser.add_argument("--out", default="runs", help="parent folder of the demo's run folder")
    parser.add_argument("--epochs", type=int, help="epochs per model (recipe: 40)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..experiments.demo import run_demo
    from ..report.report import build_report, report_text

    demo = run_demo(Path(args.out), epochs=args.epochs, progress=not args.no_progress)
    report = build_report(demo.run_dirs, demo.folder / "report", title="ResNet-20 vs Plain-20 on digits")
    print()
    print(report_text(report, table=demo.table))
    print(f"\nrun folder: {demo.folder}  (comparison.md, error_curves.png, report/report.html, and one folder "
          "per model)")
    return 0
