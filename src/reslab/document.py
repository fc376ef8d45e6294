"""Documents as a list of small blocks, rendered as Markdown, HTML, CSV or terminal text.

Every report, study, tune and robustness output is built as blocks (``Heading``,
``Paragraph``, ``Bullets``, ``Table``, ``Figure``) and written by one renderer per
format, so that a table reads the same in report.md, report.html and the terminal:

    blocks = [Heading("Results"), Table(["model", "error (%)"], [["resnet20", "8.75"]])]
    markdown(blocks, out)      # figure links relative to ``out``
    html_page(blocks, title)   # self-contained: figures embedded as base64 PNG, text escaped
    csv_table(table)           # one table as CSV
    terminal(blocks)           # aligned columns for the command line

Cells are text: the caller formats its numbers (``reslab.stats`` has the shared formats).

Layering: this module sits at the package's top level beside errors.py and runfs.py and
imports nothing of reslab, so that every layer (experiments.compare as much as report)
can use it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Alignment = Literal["left", "right", "center"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1  # 1 to 6, as Markdown's # to ######


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A header row and rows of text cells. ``align`` gives each column's alignment; by
    default the first column (a name) is left-aligned and the others (numbers) right."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: Sequence[Alignment] | None = field(default=None)

    @property
    def columns(self) -> int:
        return len(self.headers) if self.headers else max((len(row) for row in self.rows), default=0)

    def alignments(self) -> list[Alignment]:
        if self.align is not None:
            if len(self.align) != self.columns:
                raise ValueError(f"a table of {self.columns} columns given {len(self.align)} alignments")
            return list(self.align)
        return [default_alignment(index) for index in range(self.columns)]


@dataclass(frozen=True)
class Figure:
    """An image file (PNG) and its caption."""

    path: Path
    caption: str


Block = Heading | Paragraph | Bullets | Table | Figure


def default_alignment(index: int) -> Alignment:
    return "left" if index == 0 else "right"


# ---------------------------------------------------------------- Markdown

MARKDOWN_RULES = {"left": "---", "right": "---:", "center": ":---:"}


def markdown(blocks: Iterable[Block], base: Path = Path(".")) -> str:
    """The blocks as Markdown, each followed by a blank line; figures linked by their path
    relative to ``base`` (the folder the Markdown file is written to)."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            lines.append(block.text)
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items]
        elif isinstance(block, Table):
            lines.append(markdown_table(block))
        elif isinstance(block, Figure):
            lines.append(f"![{block.caption}]({_relative(block.path, base)})")
        else:
            raise TypeError(f"not a document block: {block!r}")
        lines.append("")
    return "\n".join(lines)


def markdown_table(table: Table) -> str:
    """One table as Markdown, without a newline at the end."""
    headers = list(table.headers) or [""] * table.columns
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(MARKDOWN_RULES[a] for a in table.alignments()) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines)


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:  # a figure outside the document's folder
        return Path(path).as_posix()


# ---------------------------------------------------------------- HTML

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child,th{text-align:left}th{background:#f3f3f3}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"""


def html_page(blocks: Iterable[Block], title: str) -> str:
    """The blocks as one self-contained HTML page: every text escaped, figures embedded as
    base64 PNG, so the page can be mailed or archived on its own."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    parts += [html_block(block) for block in blocks]
    parts.append("</body></html>")
    return "\n".join(parts)


def html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(Path(block.path).read_bytes()).decode()
        caption = html.escape(block.caption)
        return (f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{caption}</figcaption></figure>")
    raise TypeError(f"not a document block: {block!r}")


def html_table(table: Table) -> str:
    # The style sheet aligns the first column left and the others right; only a column
    # aligned otherwise carries its own style.
    styles = ["" if a == default_alignment(i) else f" style='text-align:{a}'" for i, a in enumerate(table.alignments())]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td{style}>{html.escape(cell)}</td>" for style, cell in zip(styles, row))
                   + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- CSV


def csv_table(table: Table) -> str:
    """One table as CSV: the header row (where there is one), then the rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if table.headers:
        writer.writerow(table.headers)
    writer.writerows(table.rows)
    return buffer.getvalue()


def csv_records(records: Iterable[Mapping], fields: Sequence[str]) -> str:
    """Records (one mapping a row) as CSV with the columns ``fields``, in that order: keys
    not among them are left out, None is an empty cell and a list its items joined by
    spaces. Unlike ``csv_table`` the values keep their own text (full precision)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v))
                         for k, v in record.items()})
    return buffer.getvalue()


# ---------------------------------------------------------------- terminal


def terminal(blocks: Iterable[Block]) -> str:
    """The blocks as plain text for the command line, separated by blank lines: tables in
    aligned columns, figures by their caption and path."""
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(block.text + "\n" + ("=" if block.level == 1 else "-") * len(block.text))
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(terminal_table(block))
        elif isinstance(block, Figure):
            parts.append(f"[figure] {block.caption}: {Path(block.path).as_posix()}")
        else:
            raise TypeError(f"not a document block: {block!r}")
    return "\n\n".join(parts)


def terminal_table(table: Table, indent: str = "", widths: Sequence[int] = ()) -> str:
    """One table in columns one space apart, each as wide as its widest cell (or as
    ``widths`` asks, where that is wider); a table without headers shows only its rows."""
    alignments = table.alignments()
    lines = ([list(table.headers)] if table.headers else []) + [list(row) for row in table.rows]
    sizes = [max([len(line[i]) for line in lines if i < len(line)] + [widths[i] if i < len(widths) else 0])
             for i in range(table.columns)]
    pad = {"left": str.ljust, "right": str.rjust, "center": str.center}
    return "\n".join((indent + " ".join(pad[alignments[i]](cell, sizes[i]) for i, cell in enumerate(line))).rstrip()
                     for line in lines)
