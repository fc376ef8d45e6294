"""reslab report: a Markdown/HTML report, tables and figures from run folders."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReslabError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="Markdown/HTML report, CSV/JSON and figures from run folders")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, a study folder or a demo folder")
    parser.add_argument("--out", help="folder for report.md, report.html, CSV, JSON and figures/ (default: "
                        "FOLDER/report for one folder)")
    parser.add_argument("--title", help="the report's title")
    parser.add_argument("--bench", metavar="JSON", help="include a reslab bench --json file")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..report.report import build_report, load_bench, report_text

    if args.out is None and len(args.runs) > 1:
        raise ReslabError("give --out DIR for a report on several folders (one folder's report goes to "
                          "FOLDER/report by default)")
    out = Path(args.out) if args.out is not None else Path(args.runs[0]) / "report"
    bench = load_bench(args.bench) if args.bench else None
    print(report_text(build_report(args.runs, out, title=args.title, bench=bench)))
    return 0
