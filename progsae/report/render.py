"""report.md and a self-contained report.html (figures embedded) from a finished run folder."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from progsae.report.findings import VERDICT_RULE, Finding, comparison_label, fmt_diff
from progsae.sae.io import atomic_write_bytes

RESULT_COLUMNS = ("seed", "method", "size", "mode", "fvu", "l0", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl",
                  "rsa", "cka", "interp")
KEY_COLUMNS = ("seed", "method", "size", "mode")
SEED_METRICS = ("fvu", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "rsa", "interp")


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_ci(v, ci) -> str:
    """A value with its interval: "value [lo, hi]" (just the value when there is no interval)."""
    if v is None:
        return "–"
    if not ci or None in ci:
        return fmt(v)
    return f"{fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _cell(v) -> str:
    return fmt(v).replace("|", "/").replace("\n", " ")


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def findings_table(findings: list[Finding]) -> str:
    return md_table(["claim (docs/method.md)", "this run", "w / t / l", "numbers"],
                    [[f.claim, f"**{f.verdict}**" + (" (seed-dependent)" if f.seed_dependent else ""),
                      f"{f.wins} / {f.ties} / {f.losses}", f.evidence] for f in findings])


def comparisons_section(findings: list[Finding]) -> list[str]:
    """One table per finding built from paired comparisons: each comparison's diff [lo, hi] and outcome per seed."""
    parts = []
    for f in findings:
        comps = [c for c in f.comparisons if isinstance(c.get("seeds"), dict)]
        if not comps:
            continue
        seeds = sorted({s for c in comps for s in c["seeds"]}, key=lambda s: (len(s), s))
        rows = []
        for c in comps:
            cells = [f"{fmt_diff(c['seeds'].get(s))} {c['seeds'][s]['outcome']}" if c["seeds"].get(s) else "not measured"
                     for s in seeds]
            counted = c["outcome"] if c.get("counted", True) else f"({c['outcome']}, not counted)"
            rows.append([comparison_label(c), f"{c.get('better', 'higher')} is better", *cells, counted])
        parts += [f"### {f.claim}", "", f"{f.wins} win / {f.ties} tie / {f.losses} loss: **{f.verdict}**", "",
                  md_table(["comparison (a − b)", "", *(f"seed {s}: a − b [95% interval]" for s in seeds), "counted as"], rows), ""]
    return parts


def _sort_key(v):
    return (v is None, str(type(v)), v if v is not None else 0)


def results_table(records: list[dict]) -> str:
    """Every evaluated SAE once (the plot-only full_size_copy rows left out), cells "value [lo, hi]"."""
    rows = sorted((r for r in records if not r.get("full_size_copy")),
                  key=lambda r: tuple(_sort_key(r.get(c)) for c in ("method", "mode", "size", "seed")))
    cols = [c for c in RESULT_COLUMNS if c in KEY_COLUMNS or any(r.get(c) is not None for r in rows)]
    return md_table(cols, [[r.get(c) if c in KEY_COLUMNS else fmt_ci(r.get(c), r.get(f"{c}_ci")) for c in cols] for r in rows])


def seeds_section(records: list[dict]) -> list[str]:
    """The seeds of the run and the across-seed spread (min–max) of each main metric per method, size and mode."""
    rows = [r for r in records if not r.get("full_size_copy")]
    seeds = sorted({r.get("seed", 0) for r in rows}, key=_sort_key)
    if len(seeds) < 2:
        return [f"Seeds: {', '.join(map(str, seeds)) or 'none'} (one seed: no across-seed spread).", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["size"], r["mode"]), []).append(r)
    metrics = [m for m in SEED_METRICS if any(r.get(m) is not None for r in rows)]
    table = []
    for (method, size, mode), rs in sorted(groups.items(), key=lambda kv: tuple(_sort_key(k) for k in kv[0])):
        cells = []
        for m in metrics:
            vals = [r[m] for r in rs if r.get(m) is not None]
            cells.append("–" if not vals else fmt(vals[0]) if len(vals) == 1 else f"{fmt(min(vals))}–{fmt(max(vals))}")
        table.append([method, size, mode, len(rs), *cells])
    return [f"Seeds: {', '.join(map(str, seeds))}. Across-seed spread (min–max over seeds) of each main metric:", "",
            md_table(["method", "size", "mode", "seeds", *metrics], table), ""]


def _positions(pos: dict, shown: int = 12) -> str:
    if not pos:
        return "–"
    items = list(pos.items())
    text = ", ".join(f"{p}: {c}" for p, c in items[:shown])
    return text + (f", … {len(items) - shown} more" if len(items) > shown else "")


def _rule(rule: dict | None) -> str:
    if not rule:
        return "none (outliers kept)"
    threshold = rule.get("threshold")
    if threshold is None and rule.get("factor") is not None and rule.get("median_norm") is not None:
        threshold = rule["factor"] * rule["median_norm"]
    text = f"norm > {fmt(rule.get('factor'))} × median norm {fmt(rule.get('median_norm'))} = {fmt(threshold)}"
    if rule.get("reference_split"):
        text += f" (median of the {rule['reference_split']} split)"
    return text


def outliers_section(outliers: dict | None) -> list[str]:
    """Rows dropped as outliers, per split: rows, dropped, context positions (position: count), variance share, rule."""
    parts = ["## Rows dropped as outliers", ""]
    if not outliers:
        return parts + ["Not recorded for this run.", ""]
    rows = []
    for split, o in outliers.items():
        share = o.get("variance_share")
        rows.append([split, o.get("rows"), o.get("dropped"), _positions(o.get("positions") or {}),
                     "–" if share is None else f"{100 * share:.2f}%", _rule(o.get("rule"))])
    return parts + [md_table(["split", "rows", "dropped", "positions (position: count)", "variance share", "rule"], rows), ""]


def render_markdown(title: str, summary: list[str], findings: list[Finding], figures: list[tuple[str, str]],
                    records: list[dict], timings_rows: list[list], outliers: dict | None = None,
                    extra: list[str] | None = None) -> str:
    """The report as markdown; figures are referenced by relative path (markdown_to_html embeds them).

    findings: from compute_findings; timings_rows: [[SAE, seconds, ratio to vanilla-n], ...];
    outliers: {split: {rows, dropped, positions, variance_share, rule}} (rows.json); extra: markdown lines placed
    after the findings (the sufficiency checks of a study)."""
    parts = [f"# {title}", "", *[s for s in summary if s], "", "## Findings", "", findings_table(findings), "",
             VERDICT_RULE, "", *(extra or [])]
    parts += ["## Figures", ""]
    for caption, rel in figures:
        parts += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    parts += ["## Training time", "", md_table(["SAE", "seconds", "ratio to vanilla of size n"], timings_rows), ""]
    parts += ["## Seeds", "", *seeds_section(records)]
    parts += outliers_section(outliers)
    parts += ["## Comparisons", "", "Each paired comparison behind the findings: a − b per seed with its 95% bootstrap "
              "interval, and how it was counted.", "", *comparisons_section(findings)]
    parts += ["## All results", "", "Each cell is value [95% interval]; the G = n SAEs appear once, under mode full.", "",
              results_table(records), ""]
    return "\n".join(parts)


def markdown_to_html(md: str, base: Path) -> str:
    """A small converter for the markdown this module writes (headings, tables, images, paragraphs)."""
    out = ['<!doctype html><html><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1"><title>progsae report</title><style>',
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
           ".scroll{overflow-x:auto;max-width:100%;margin:0.5em 0}"
           "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
           "td{min-width:4em;max-width:40em}img{max-width:100%;height:auto}code{background:#f4f4f4}</style></head><body>"]
    table: list[str] = []

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def flush_table():
        if not table:
            return
        cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table if not re.fullmatch(r"\|(-+\|)+", row.strip())]
        out.append('<div class="scroll" style="overflow-x:auto"><table><tr>'
                   + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
        out.append("</table></div>")
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
