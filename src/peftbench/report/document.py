"""Documents: headings, paragraphs, lists, tables and figures, rendered as Markdown or as one self-contained HTML
page (inline CSS, figures embedded as base64 PNG data URIs, no scripts, no external files)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from peftbench.store.rundir import REPORT_FILES as FILES_DIR  # where Markdown expects figures, beside the .md file


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str
    strong: bool = False  # the answer: set in bold


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    """Numbers (right-aligned, after a left-aligned label column) or prose (wide, wrapped, left-aligned)."""

    header: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of each column's marked best value
    prose: bool = False
    verdict_row: bool = False  # the last row judges the columns (set apart in HTML)


@dataclass
class Figure:
    """A PNG image: a file under FILES_DIR for Markdown, embedded in HTML."""

    name: str  # file name under FILES_DIR, beside report.md
    png: bytes
    caption: str


Block = Heading | Paragraph | Bullets | Table | Figure


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def _markdown_table(table: Table) -> str:
    rows = [
        [f"**{_markdown_cell(text)}**" if (r, c) in table.best else _markdown_cell(text) for c, text in enumerate(row)]
        for r, row in enumerate(table.rows)
    ]
    align = "|" + "---|" * len(table.header) if table.prose else "|---|" + "---:|" * (len(table.header) - 1)
    lines = ["| " + " | ".join(map(_markdown_cell, table.header)) + " |", align]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def to_markdown(blocks: list[Block]) -> str:
    """Markdown; figures are referenced as FILES_DIR/<name>."""
    parts = []
    for block in blocks:
        match block:
            case Heading(level, text):
                parts.append("#" * level + " " + text)
            case Paragraph(text, strong):
                parts.append(f"**{text}**" if strong else text)
            case Bullets(items):
                parts.append("\n".join(f"- {item}" for item in items))
            case Table():
                parts.append(_markdown_table(block))
            case Figure(name, _, caption):
                parts.append(f"![{caption}]({FILES_DIR}/{name})")
    return "\n\n".join(parts) + "\n"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1400px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.scroll { overflow-x: auto; margin: 1em 0; }
p.answer { font-weight: 600; background: #eef4fb; border-left: 4px solid #3b73b9; padding: .5em .8em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
table.numbers td { text-align: right; white-space: nowrap; } table.numbers td:first-child { text-align: left; }
table.prose td { min-width: 14em; max-width: 30em; }
td.best { font-weight: bold; background: #dff0d8 !important; }
tr.verdict td { font-style: italic; background: #f3f3f3; white-space: normal; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
"""


def _html_table(table: Table) -> str:
    def row_html(r: int, row: list[str]) -> str:
        verdict = ' class="verdict"' if table.verdict_row and r == len(table.rows) - 1 else ""
        cells = "".join(
            f'<td class="best">{html.escape(text)}</td>' if (r, c) in table.best else f"<td>{html.escape(text)}</td>"
            for c, text in enumerate(row)
        )
        return f"<tr{verdict}>{cells}</tr>"

    head = "".join(f"<th>{html.escape(text)}</th>" for text in table.header)
    body = "\n".join(row_html(r, row) for r, row in enumerate(table.rows))
    kind = "prose" if table.prose else "numbers"
    return (
        f'<div class="scroll"><table class="{kind}">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table></div>"
    )


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained HTML page: inline CSS, figures embedded as base64 PNG data URIs, no scripts."""
    parts = []
    for block in blocks:
        match block:
            case Heading(level, text):
                parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
            case Paragraph(text, strong):
                parts.append(f'<p class="answer">{html.escape(text)}</p>' if strong else f"<p>{html.escape(text)}</p>")
            case Bullets(items):
                parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>")
            case Table():
                parts.append(_html_table(block))
            case Figure(_, png, caption):
                data = base64.b64encode(png).decode("ascii")
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
