"""Formatting and writers: one table as CSV, GitHub Markdown, booktabs LaTeX and HTML.

Every writer goes through :func:`qtbench.io.write_text_atomic` (a killed job
leaves no half-written table).  Numbers are formatted here and only here:
:func:`format_mean_std` (``"45.00 ± 0.12"``), :func:`format_change`
(``"+38.24"``), :func:`format_number`, and :func:`format_bold` per output style.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qtbench.io import write_text_atomic

#: The formats every table is written in (:func:`write_table`).
TABLE_FORMATS = ("csv", "md", "tex", "html")


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".2f", align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table (no extra dependency).  ``align``: one of
    ``l``/``r`` per column (default: numeric columns right-aligned)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else format(value, floatfmt)
        return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value).replace("|", r"\|")

    align = align or ["r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in frame.columns]
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def latex_escape(text: Any) -> str:
    """``text`` with LaTeX's special characters escaped, and ``×``, ``Δ``, ``±``, ``−``, ``≥`` and a
    footnote mark ``†n`` (a superscript dagger and number) written in LaTeX."""
    text = re.sub(r"†(\d*)", "\x00\\1\x01", str(text))  # a footnote mark: superscript dagger and number
    return (text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            .replace("#", r"\#").replace("×", r"$\times$").replace("Δ", r"$\Delta$")
            .replace("\x00", r"\textsuperscript{\dag{}").replace("\x01", "}").replace("±", r"$\pm$").replace("−", "-").replace("≥", r"$\geq$"))


def to_latex(frame: pd.DataFrame, floatfmt: str = ".2f", bold: Mapping[str, Any] | None = None,
             raw: Iterable[str] = ()) -> str:
    """A booktabs table; ``bold`` maps a column to the value to set in bold;
    ``raw`` names string columns that already hold LaTeX (not escaped)."""
    raw = set(raw)

    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            if pd.isna(value):
                return ""
            text = format(value, floatfmt)
            return rf"\textbf{{{text}}}" if bold and column in bold and value == bold[column] else text
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return str(value) if column in raw else latex_escape(value)

    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) or c in raw else "l" for c in frame.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(latex_escape(c) for c in frame.columns) + r" \\",
             r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(cell(c, v) for c, v in zip(frame.columns, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(frame: pd.DataFrame, floatfmt: str = ".2f", raw: Iterable[str] = (), title: str | None = None) -> str:
    """A plain HTML table; ``raw`` columns already hold HTML (bold tags)."""
    raw = set(raw)

    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else format(value, floatfmt)
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return str(value) if column in raw else html.escape(str(value))

    numeric = {c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) or c in raw}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if c in numeric else ""}>{cell(c, v)}</td>' for c, v in zip(frame.columns, row))
        + "</tr>\n" for row in frame.itertuples(index=False))
    caption = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    return f"{caption}<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;font-size:13px}} table{{border-collapse:collapse;margin-bottom:1.5em}}
th,td{{padding:2px 8px;border-bottom:1px solid #ddd}} th{{border-bottom:2px solid #333;text-align:left}}
td.num{{text-align:right}} p.note{{color:#555;max-width:60em}}</style></head>
<body>
{body}</body></html>
"""


def html_page(title: str, body: str, note: str | None = None, footnotes: Sequence[str] = ()) -> str:
    """A standalone page around table ``body`` (the Snakemake report shows it as is);
    ``note`` above the table (its caption), ``footnotes`` below it."""
    note_html = f'<p class="note">{html.escape(note)}</p>\n' if note else ""
    foot_html = "".join(f'<p class="note">{html.escape(line)}</p>\n' for line in footnotes)
    return HTML_PAGE.format(title=html.escape(title), body=note_html + body + foot_html)


def latex_float(tabular: str, caption: str | None = None, footnotes: Sequence[str] = ()) -> str:
    """A ``table`` float around a tabular: ``caption`` (escaped) above, ``footnotes``
    (escaped, one paragraph each, small type) below."""
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines.append(tabular.rstrip("\n"))
    if footnotes:
        lines.append(r"\par\smallskip{\footnotesize " + r" \\ ".join(latex_escape(f) for f in footnotes) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def markdown_block(table: str, caption: str | None = None, footnotes: Sequence[str] = ()) -> str:
    """A Markdown table with its caption above and footnotes below (blank-line separated)."""
    parts = [caption] if caption else []
    parts.append(table.rstrip("\n"))
    if footnotes:
        parts.append("\n".join(f"{line}  " for line in footnotes).rstrip())
    return "\n\n".join(parts) + "\n"


def write_table(frame: pd.DataFrame, stem: Path, bold_best: Iterable[str] = (), note: str | None = None) -> list[Path]:
    """Write ``stem``.csv, .md, .tex and .html of one flat table; ``bold_best``
    columns have their maximum in bold (md: none, tex and html: bold)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    bold = {c: frame[c].max() for c in bold_best if c in frame and frame[c].notna().any()}
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    md = to_markdown(frame)
    write_text_atomic(paths[1], (f"{note}\n\n" if note else "") + md)
    write_text_atomic(paths[2], to_latex(frame, bold=bold))
    styled = frame.copy()
    raw = []
    for column, best in bold.items():
        styled[column] = [("" if pd.isna(v) else (f"<b>{v:.2f}</b>" if v == best else f"{v:.2f}")) for v in frame[column]]
        raw.append(column)
    write_text_atomic(paths[3], html_page(stem.name, to_html(styled, raw=raw), note))
    return paths


def format_mean_std(mean: float, std: float, fmt: str = ".2f", pm: str = " ± ") -> str:
    """``"45.00 ± 0.12"``; ``"45.00"`` when std is undefined (one seed); ``""`` for NaN."""
    if mean is None or pd.isna(mean):
        return ""
    text = format(float(mean), fmt)
    return text if std is None or pd.isna(std) else f"{text}{pm}{format(float(std), fmt)}"


def format_interval(mean: float, low: float, high: float, fmt: str = ".2f", bound_fmt: str = ".1f") -> str:
    """``"12.34 [11.0, 13.6]"``: a mean and its interval; the mean alone when the
    interval is missing, ``""`` for a missing mean."""
    if mean is None or pd.isna(mean):
        return ""
    text = format(float(mean), fmt)
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return text
    return f"{text} [{format(float(low), bound_fmt)}, {format(float(high), bound_fmt)}]"


def format_signed(value: float, fmt: str = ".2f") -> str:
    """``"+1.25"`` / ``"-1.25"``; a value that rounds to zero reads ``+0.00``, never ``-0.00``."""
    digits = int(fmt.strip(".f") or 0)
    return format(round(float(value), digits) + 0.0, "+" + fmt)


def format_delta(delta: float, low: float, high: float, significant: Any, fmt: str = ".2f", bound_fmt: str = ".1f",
                 mark: str = "*") -> str:
    """``"+1.23 [-0.4, +2.9] *"``: a paired difference, its interval and ``mark`` when
    the interval excludes 0; ``""`` for a missing difference."""
    if delta is None or pd.isna(delta):
        return ""
    text = format_signed(delta, fmt)
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        text += f" [{format_signed(low, bound_fmt)}, {format_signed(high, bound_fmt)}]"
    flagged = isinstance(significant, (bool,)) or type(significant).__name__ == "bool_"
    return text + (f" {mark}" if flagged and bool(significant) else "")


def format_change(value: float) -> str:
    """``"+38.24"`` (signed, two decimals); ``""`` for NaN."""
    return "" if value is None or pd.isna(value) else f"{value:+.2f}"


def format_number(value: Any, fmt: str = ".1f") -> str:
    """``value`` formatted with ``fmt``; ``""`` for a missing value."""
    return "" if value is None or pd.isna(value) else format(float(value), fmt)


def format_bold(text: str, bold: bool, style: str) -> str:
    """``text`` in bold for ``style`` (``markdown``, ``latex``, ``html``; any
    other style, or an empty cell, is left as it is)."""
    if not bold or not text:
        return text
    return {"markdown": f"**{text}**", "latex": rf"\textbf{{{text}}}", "html": f"<b>{html.escape(text)}</b>"}.get(style, text)
