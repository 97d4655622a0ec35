"""report.md and a self-contained report.html (figures embedded) from a finished run folder."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from progsae.report.findings import Finding
from progsae.sae.io import atomic_write_bytes

RESULT_COLUMNS = ("method", "size", "mode", "fvu", "l0", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "cka", "interp")


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def findings_table(findings: list[Finding]) -> str:
    return md_table(["claim (PAPER.md §7)", "this run", "numbers"], [[f.claim, f"**{f.verdict}**", f.evidence] for f in findings])


def render_markdown(title: str, summary: list[str], findings: list[Finding], figures: list[tuple[str, str]],
                    records: list[dict], timings_rows: list[list]) -> str:
    """The report as markdown; figures are referenced by relative path."""
    parts = [f"# {title}", "", *summary, "", "## Findings", "", findings_table(findings), ""]
    parts += ["## Figures", ""]
    for caption, rel in figures:
        parts += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    parts += ["## Training time", "", md_table(["SAE", "seconds", "ratio to vanilla of size n"], timings_rows), ""]
    rows = sorted(records, key=lambda r: (r["method"], r["mode"], r["size"]))
    parts += ["## All results", "", md_table(list(RESULT_COLUMNS), [[r.get(c) for c in RESULT_COLUMNS] for r in rows]), ""]
    return "\n".join(parts)


def markdown_to_html(md: str, base: Path) -> str:
    """A small converter for the markdown this module writes (headings, tables, images, paragraphs)."""
    out = ['<!doctype html><html><head><meta charset="utf-8"><title>progsae report</title><style>',
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
           "img{max-width:100%}code{background:#f4f4f4}</style></head><body>"]
    table: list[str] = []

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def flush_table():
        if not table:
            return
        cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table if not re.fullmatch(r"\|(-+\|)+", row.strip())]
        out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
        out.append("</table>")
        table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if m := re.match(r"(#+) (.*)", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
        elif m := re.match(r"!\[(.*)\]\((.*)\)", line):
            data = base64.b64encode((base / m.group(2)).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out: Path, md: str) -> tuple[Path, Path]:
    """Write report.md and the self-contained report.html into the run folder."""
    atomic_write_bytes(out / "report.md", md.encode())
    atomic_write_bytes(out / "report.html", markdown_to_html(md, out).encode())
    return out / "report.md", out / "report.html"
