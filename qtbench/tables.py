"""Collect evaluation records into tidy and comparison tables.

* the long table: one row per (run, task, metric) with run id, model, method,
  budget, seed, value and stderr - everything else is a pivot of it;
* the comparison table: one row per run (and per base model), one column per
  task holding its primary metric in percent, and their average.

Tables are written as CSV, Markdown and LaTeX (booktabs) under
``results/<experiment>/tables/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from qtbench.io import read_json, write_text_atomic

#: The metric a task is scored by when the config names none, in order of preference.
PRIMARY_METRICS = (
    "acc,none",
    "exact_match,strict-match",
    "f1,none",
    "exact_match,remove_whitespace",
    "exact_match,none",
    "exact,none",
    "contains,none",
)

RUN_COLUMNS = ["run_id", "model", "method", "budget", "r_s", "r_t", "total_budget", "seed"]


def long_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy rows from evaluation records (as ``qtbench.evaluate`` writes them)."""
    rows = []
    for record in records:
        meta = record.get("meta", {})
        for task, metrics in record["scores"].items():
            for metric, score in metrics.items():
                rows.append({**{c: meta.get(c) for c in RUN_COLUMNS}, "task": task, "metric": metric,
                             "value": score["value"], "stderr": score["stderr"]})
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "task", "metric", "value", "stderr"])
    return frame.sort_values(["model", "method", "budget", "seed", "task", "metric"], na_position="first",
                             kind="stable").reset_index(drop=True)


def primary_metric(frame: pd.DataFrame, task: str, chosen: Mapping[str, str] | None = None) -> str:
    available = set(frame.loc[frame["task"] == task, "metric"])
    if chosen and task in chosen:
        if chosen[task] not in available:
            raise KeyError(f"metric {chosen[task]!r} of task {task!r} not in the results ({sorted(available)})")
        return chosen[task]
    for metric in PRIMARY_METRICS:
        if metric in available:
            return metric
    raise KeyError(f"no primary metric for task {task!r}; available: {sorted(available)} (set eval.tasks[].metric)")


def comparison_table(frame: pd.DataFrame, tasks: list[str], chosen: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per run: each task's primary metric x 100 and their mean (``avg``)."""
    parts = []
    for task in tasks:
        metric = primary_metric(frame, task, chosen)
        rows = frame[(frame["task"] == task) & (frame["metric"] == metric)]
        parts.append(rows.set_index("run_id")["value"].rename(task) * 100.0)
    scores = pd.concat(parts, axis=1)
    runs = frame.drop_duplicates("run_id").set_index("run_id")[[c for c in RUN_COLUMNS if c != "run_id"]]
    wide = runs.join(scores, how="inner")
    wide["avg"] = wide[tasks].mean(axis=1)
    return wide.reset_index()


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table (no extra dependency)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else format(value, floatfmt)
        return "" if value is None else str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(frame: pd.DataFrame, floatfmt: str = ".2f", bold: Mapping[str, Any] | None = None) -> str:
    """A booktabs table; ``bold`` maps a column to the value to set in bold."""
    def esc(text: Any) -> str:
        return str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")

    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            if pd.isna(value):
                return ""
            text = format(value, floatfmt)
            return rf"\textbf{{{text}}}" if bold and column in bold and value == bold[column] else text
        return esc("" if value is None else value)

    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in frame.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(esc(c) for c in frame.columns) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(cell(c, v) for c, v in zip(frame.columns, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, stem: Path, bold_best: Iterable[str] = ()) -> list[Path]:
    """Write ``stem``.csv, .md and .tex; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    bold = {c: frame[c].max() for c in bold_best if c in frame and frame[c].notna().any()}
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    write_text_atomic(paths[1], to_markdown(frame))
    write_text_atomic(paths[2], to_latex(frame, bold=bold))
    return paths


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]


def aggregate(eval_paths: Iterable[str | Path], tasks: list[dict[str, Any]], out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write the long and the comparison tables of these evaluation records."""
    out_dir = Path(out_dir)
    frame = long_table(load_records(eval_paths))
    names = [t["name"] for t in tasks]
    chosen = {t["name"]: t["metric"] for t in tasks if t.get("metric")}
    wide = comparison_table(frame, names, chosen)
    write_table(frame, out_dir / "long")
    display = wide.drop(columns=["r_s", "r_t", "total_budget"])
    write_table(display, out_dir / "comparison", bold_best=[*names, "avg"])
    return {"long": frame, "comparison": wide}
