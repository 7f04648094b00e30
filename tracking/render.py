"""A report as a list of blocks, rendered to Markdown (figures as files) or to one
self-contained HTML page (figures inlined as data URIs). Knows nothing about cells.

A block is one of: ("h1" | "h2" | "h3" | "p" | "pre", text), a Table, or an Image.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

# a number, or a mean ± std (n=…) as benchmark.stats writes it: "−1.9", "71.9 ± 1.2 (n=3)"
NUMBER = re.compile(r"[+\-\u2212]?\d+(\.\d+)?( ± \d+(\.\d+)?)?( \(n=\d+\))?")

Cell = str | tuple[str, str]  # a table cell: text, or (text, css class) for HTML colouring


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass
class Image:
    name: str  # file name in figures/ beside report.md
    alt: str
    png: bytes


def _text(cell: Cell) -> str:
    return cell[0] if isinstance(cell, tuple) else str(cell)


def _md_cell(cell: Cell) -> str:
    # a "|" would end the Markdown cell early, a newline the row
    return _text(cell).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def to_markdown(blocks: list, figure_dir: Path) -> str:
    """Markdown text; every Image is written as figure_dir/<name> and linked relatively."""
    figure_dir = Path(figure_dir)
    out = []
    for b in blocks:
        if isinstance(b, Table):
            out.append(_md_table(b))
        elif isinstance(b, Image):
            figure_dir.mkdir(parents=True, exist_ok=True)
            (figure_dir / b.name).write_bytes(b.png)
            out.append(f"![{b.alt}]({figure_dir.name}/{b.name})")
        else:
            kind, text = b
            prefix = {"h1": "# ", "h2": "## ", "h3": "### "}.get(kind)
            out.append(f"{prefix}{text}" if prefix else
                       f"```\n{text}\n```" if kind == "pre" else text)
    return "\n\n".join(out) + "\n"


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4C72B0; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #2b4a7a; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13.5px; width: 100%; }
td:first-child { white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f0f3f8; font-weight: 600; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.missing, td.running { color: #888; font-style: italic; }
td.failed, td.killed, td.contradicted { color: #b22222; font-weight: 600; }
td.measured, td.holds { color: #2e7d32; font-weight: 600; }
td.inconclusive { color: #888; }
img { max-width: 100%; display: block; margin: 1em 0; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12.5px;
      white-space: pre-wrap; }
"""


def _html_cell(cell: Cell) -> str:
    text, cls = (cell if isinstance(cell, tuple) else (str(cell), ""))
    # numbers right-aligned, so a column of accuracies reads by its decimal points
    if not cls and (text == "—" or NUMBER.fullmatch(text)):
        cls = "num"
    attr = f' class="{html.escape(cls)}"' if cls else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_block(b) -> str:
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Image):
        data = base64.b64encode(b.png).decode("ascii")
        return f'<img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">'
    kind, text = b
    tag = "p" if kind not in ("h1", "h2", "h3", "pre") else kind
    return f"<{tag}>{html.escape(text)}</{tag}>"


def to_html(blocks: list, title: str) -> str:
    """One HTML page with no outside references: styles inline, figures as data URIs."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
