"""The results tables: from evaluation records and run artifacts to the paper's tables.

Inputs: the evaluation records and the runs' effective budgets
(:mod:`qtbench.report.runs`).  Tables (each written by
:mod:`qtbench.report.aggregate` as ``.csv`` (tidy), ``.md``, ``.tex`` and ``.html``):

* ``long``        one row per (run, task, metric): value and stderr - the raw data;
* ``comparison``  one row per run (and base model): each task's primary metric in
  percent, their average ``avg`` and the run's effective budget;
* ``main``        the paper's main table: one block per model x total budget, rows
  grouped (zero-shot, full data, sample-level, token-level, sample + token), columns
  the tasks, ``avg`` and the relative change vs full data; mean +- std over seeds;
* ``budget``      each method x budget: average score and the effective budget
  (samples and response tokens that carried loss, training FLOPs vs full data);
* ``paper_reference`` the paper's reported numbers, kept beside ours.

Definitions (written once, here):

* a run's score on a task is its primary metric x 100 (:func:`primary_metric`);
  ``avg`` is the unweighted mean over the configured tasks;
* mean and std over seeds: ``std`` is the sample standard deviation (``ddof=1``);
  with one seed it is undefined and left blank;
* relative change vs full data, in percent: ``(avg / avg_full - 1) * 100`` where
  both averages are means over seeds and ``avg_full`` is the ``full`` method of the
  same model (the paper's "+38%" is 12.87 / 9.31 - 1).  It has no std;
* best per column (bold in Markdown/LaTeX/HTML, ``best`` in the CSV): within a
  block, the highest mean as displayed (two decimals) among trained rows (zero-shot
  excluded); ties are all bold, except when every row ties (nothing is marked);
* the effective budget of a run: :mod:`qtbench.report.runs`.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from qtbench.io import write_text_atomic
from qtbench.report.naming import GROUP_LABEL, GROUP_RANK, budget_label, family_group, percent, row_family, split_budget
from qtbench.report.render import (
    TABLE_FORMATS,
    format_bold,
    format_change,
    format_mean_std,
    format_number,
    html_page,
    latex_escape,
    to_html,
    to_latex,
    to_markdown,
)
from qtbench.report.runs import EFFECTIVE_COLUMNS

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
REL_CHANGE = "rel_change"


# --------------------------------------------------------------------------- long and comparison tables


def long_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy rows from evaluation records (as ``qtbench.evaluate`` writes them)."""
    rows = []
    for record in records:
        meta = dict(record.get("meta", {}))
        parts = split_budget(meta.get("budget"))
        if parts is not None:
            meta.setdefault("r_s", parts[0])
            meta.setdefault("r_t", parts[1])
            meta["total_budget"] = meta.get("total_budget") or meta.get("total") or parts[2]
        for task, metrics in record["scores"].items():
            for metric, score in metrics.items():
                rows.append({**{c: meta.get(c) for c in RUN_COLUMNS}, "task": task, "metric": metric,
                             "value": score["value"], "stderr": score["stderr"]})
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "task", "metric", "value", "stderr"])
    for column in ("r_s", "r_t", "total_budget"):
        frame[column] = frame[column].map(lambda v: None if v is None or v != v else str(v)).astype(object)
    return frame.sort_values(["model", "method", "budget", "seed", "task", "metric"], na_position="first",
                             kind="stable").reset_index(drop=True)


def primary_metric(frame: pd.DataFrame, task: str, chosen: Mapping[str, str] | None = None) -> str:
    """The metric ``task`` is scored by: the config's choice (``chosen``), else the
    first of :data:`PRIMARY_METRICS` the results hold."""
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
    """One row per run: each task's primary metric x 100 and their mean (``avg``),
    in the order the records came."""
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


def runs_table(comparison: pd.DataFrame, effective: pd.DataFrame | None = None) -> pd.DataFrame:
    """The comparison table with the row group, exact budget strings and (when
    given) the effective budget of each run: the input of the main and budget tables."""
    frame = comparison.copy()
    parts = [split_budget(b) for b in frame["budget"]]
    frame["r_s"] = [p[0] if p else None for p in parts]
    frame["r_t"] = [p[1] if p else None for p in parts]
    frame["total_budget"] = [p[2] if p else None for p in parts]
    for column in ("r_s", "r_t", "total_budget"):
        frame[column] = frame[column].astype(object)
    frame["family"] = [row_family(m) for m in frame["method"]]
    frame["group"] = [family_group(f) for f in frame["family"]]
    if effective is not None and not effective.empty:
        frame = frame.merge(effective[["run_id", *EFFECTIVE_COLUMNS]], on="run_id", how="left")
    else:
        for column in EFFECTIVE_COLUMNS:
            frame[column] = math.nan
    return frame


# --------------------------------------------------------------------------- main table


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the paper's order: group, then (joint group) pairs before joint
    methods, then first appearance (the config's method order), then budget."""
    frame = frame.copy()
    first = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    frame["_g"] = frame["group"].map(GROUP_RANK)
    frame["_j"] = (frame["family"] == "joint").astype(int)
    frame["_m"] = frame["method"].map(first)
    frame["_b"] = frame["budget"].fillna("")
    return frame.sort_values(["_g", "_j", "_m", "_b"], kind="stable").drop(columns=["_g", "_j", "_m", "_b"])


def _seed_stats(runs: pd.DataFrame, columns: list[str], keys: list[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed) and count over seeds per key."""
    grouped = runs.groupby(keys, sort=False, dropna=False)
    mean = grouped[columns].mean()
    std = grouped[columns].std(ddof=1)
    count = grouped.size().rename("n_seeds")
    out = mean.add_suffix("_mean").join(std.add_suffix("_std")).join(count)
    return out.reset_index()


def main_table(runs: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """The paper's main table, tidy: one row per (block, method row, column).

    ``runs`` is :func:`runs_table`.  Blocks: per model, per nominal total budget
    ``r_s x r_t`` of the pruned runs (ascending); each block repeats the model's
    zero-shot and full-data rows.  Columns of the result: ``model``,
    ``total_budget``, ``group`` (key), ``group_label``, ``method``, ``family``,
    ``budget``, ``n_seeds``, ``column`` (a task, ``avg`` or ``rel_change``),
    ``mean``, ``std``, ``best``."""
    columns = [*tasks, "avg"]
    out_columns = ["model", "total_budget", "group", "group_label", "method", "family", "budget", "n_seeds",
                   "column", "mean", "std", "best"]
    if runs.empty:
        return pd.DataFrame(columns=out_columns)
    frame = runs.copy()
    frame["budget"] = frame["budget"].fillna("").astype(object)
    keys = ["model", "group", "family", "method", "budget", "total_budget"]
    frame["total_budget"] = frame["total_budget"].astype(object).where(frame["total_budget"].notna(), "")
    stats = _seed_stats(frame, columns, keys)
    rows = []
    for model in dict.fromkeys(frame["model"]):
        mine = _order(stats[stats["model"] == model])
        full = mine[mine["group"] == "full"]
        avg_full = float(full["avg_mean"].mean()) if len(full) else math.nan
        pruned = mine[~mine["group"].isin(["base", "full"])]
        totals = sorted(set(pruned["total_budget"]), key=lambda t: Decimal(t)) or ["1"]
        for total in totals:
            block = mine[mine["group"].isin(["base", "full"]) | (mine["total_budget"] == total)]
            block_rows = []
            for _, r in block.iterrows():
                base = {"model": model, "total_budget": total, "group": r["group"], "group_label": GROUP_LABEL[r["group"]],
                        "method": r["method"], "family": r["family"], "budget": r["budget"], "n_seeds": int(r["n_seeds"])}
                for column in columns:
                    block_rows.append({**base, "column": column, "mean": r[f"{column}_mean"], "std": r[f"{column}_std"]})
                rel = (r["avg_mean"] / avg_full - 1.0) * 100.0 if avg_full and not math.isnan(avg_full) else math.nan
                block_rows.append({**base, "column": REL_CHANGE, "mean": rel, "std": math.nan})
            _mark_best(block_rows)
            rows.extend(block_rows)
    return pd.DataFrame(rows, columns=out_columns)


def _mark_best(rows: list[dict[str, Any]], decimals: int = 2) -> None:
    """``best`` = highest mean as displayed (rounded) per column among trained rows;
    none when every row shows the same value."""
    for row in rows:
        row["best"] = False
    by_column: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["group"] != "base" and not pd.isna(row["mean"]):
            by_column.setdefault(row["column"], []).append(row)
    for candidates in by_column.values():
        shown = [round(float(r["mean"]), decimals) for r in candidates]
        top = max(shown)
        if len(candidates) > 1 and min(shown) == top:
            continue  # every row ties: nothing to mark
        for r, value in zip(candidates, shown):
            r["best"] = value == top


def main_display(main: pd.DataFrame, tasks: list[str], style: str = "markdown") -> list[tuple[str, pd.DataFrame]]:
    """One display frame (strings, bold applied) per block: ``[(title, frame)]``.
    ``style`` is ``markdown``, ``latex``, ``html`` or ``plain`` (no bold)."""
    pm = {"latex": r" $\pm$ ", "markdown": " ± ", "html": " ± ", "plain": " ± "}[style]
    blocks = []
    for (model, total), block in main.groupby(["model", "total_budget"], sort=False):
        title = f"{model}, total budget {percent(total)}" + (" (r_s × r_t)" if total != "1" else "")
        out = []
        seen_groups: set[str] = set()
        for (group, method, budget), row in block.groupby(["group", "method", "budget"], sort=False):
            cells = {"Group": "" if group in seen_groups else GROUP_LABEL[group], "Method": method,
                     "Budget": budget_label(budget) if budget else ""}
            seen_groups.add(group)
            values = row.set_index("column")
            for column in [*tasks, "avg", REL_CHANGE]:
                r = values.loc[column]
                text = format_change(r["mean"]) if column == REL_CHANGE else format_mean_std(r["mean"], r["std"], pm=pm)
                cells[_column_title(column)] = format_bold(text, bool(r["best"]), style)
            out.append(cells)
        blocks.append((title, pd.DataFrame(out)))
    return blocks


def _column_title(column: str) -> str:
    return {"avg": "Avg", REL_CHANGE: "Δ vs full (%)"}.get(column, column)


# --------------------------------------------------------------------------- budget table


def budget_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each method x budget (per model): mean and std of ``avg`` over seeds and
    the mean effective budget (fractions in percent), sorted by model, total
    budget, group and method.  Base models are left out (no training)."""
    columns = ["model", "group", "method", "budget", "r_s", "r_t", "total_budget", "n_seeds", "avg_mean", "avg_std",
               "eff_samples_pct", "eff_tokens_pct", "flops_pct", "optimizer_steps"]
    frame = runs[runs["group"] != "base"].copy()
    if frame.empty:
        return pd.DataFrame(columns=columns)
    keys = ["model", "group", "family", "method", "budget", "r_s", "r_t", "total_budget"]
    stats = _seed_stats(frame, ["avg", *EFFECTIVE_COLUMNS], keys)
    stats["eff_samples_pct"] = stats["eff_sample_fraction_mean"] * 100.0
    stats["eff_tokens_pct"] = stats["eff_token_fraction_mean"] * 100.0
    stats["flops_pct"] = stats["flops_relative_mean"] * 100.0
    stats["optimizer_steps"] = stats["optimizer_steps_mean"]
    stats["_t"] = stats["total_budget"].map(Decimal)
    ordered = []
    for model in dict.fromkeys(stats["model"]):
        mine = _order(stats[stats["model"] == model])
        ordered.append(mine.sort_values("_t", kind="stable"))
    return pd.concat(ordered)[columns].reset_index(drop=True)


def budget_display(budget: pd.DataFrame, style: str = "markdown") -> pd.DataFrame:
    """:func:`budget_table` as strings for ``style`` (``latex``: ``$\\pm$``), percentages labelled."""
    pm = r" $\pm$ " if style == "latex" else " ± "
    rows = []
    for _, r in budget.iterrows():
        rows.append({
            "Model": r["model"], "Group": GROUP_LABEL[r["group"]], "Method": r["method"],
            "Budget": budget_label(r["budget"]), "Total": percent(r["total_budget"]), "Seeds": int(r["n_seeds"]),
            "Avg": format_mean_std(r["avg_mean"], r["avg_std"], pm=pm),
            "Samples %": format_number(r["eff_samples_pct"]), "Tokens %": format_number(r["eff_tokens_pct"]),
            "FLOPs %": format_number(r["flops_pct"]), "Steps": format_number(r["optimizer_steps"], ".0f"),
        })
    return pd.DataFrame(rows, columns=["Model", "Group", "Method", "Budget", "Total", "Seeds", "Avg", "Samples %",
                                       "Tokens %", "FLOPs %", "Steps"])


# --------------------------------------------------------------------------- the paper's numbers

#: paper.md, "Reported numbers": the main table (WizardLM, 12.5% x 50%) and the
#: reasoning table (MathInstruct, 25% x 50%), as published.
PAPER_REFERENCE: tuple[dict[str, Any], ...] = tuple(
    {"setting": setting, "model": model, "budget": budget, "method": method,
     **dict(zip(tasks, scores)), "avg": avg}
    for setting, tasks, budget, rows in (
        ("WizardLM", ("ARC-E", "ARC-C", "GSM8K", "SQuAD", "TriviaQA"), "12.5%×50%", (
            ("LLaMA2-7B", "zero-shot", (53.44, 38.98, 5.31, 12.18, 43.00), 30.58),
            ("LLaMA2-7B", "random+random", (59.25, 41.02, 8.11, 12.75, 48.75), 33.98),
            ("LLaMA2-7B", "full", (61.55, 42.37, 8.64, 13.80, 50.45), 35.36),
            ("LLaMA2-7B", "longest+ppl", (), 35.24),
            ("LLaMA2-7B", "q_tuning", (64.20, 42.03, 10.54, 18.79, 53.12), 37.74),
            ("Mistral-7B", "zero-shot", (66.67, 46.10, 18.35, 10.01, 43.77), 36.98),
            ("Mistral-7B", "random+random", (70.55, 48.14, 22.74, 19.57, 52.63), 42.73),
            ("Mistral-7B", "full", (71.25, 45.76, 26.68, 31.81, 53.67), 45.84),
            ("Mistral-7B", "longest+ppl", (), 46.33),
            ("Mistral-7B", "q_tuning", (71.60, 48.14, 29.34, 27.75, 57.78), 46.92),
        )),
        ("MathInstruct", ("GSM8K", "MATH"), "25%×50%", (
            ("LLaMA3-8B", "full", (32.90, 3.02), 17.96),
            ("LLaMA3-8B", "q_tuning", (36.32, 5.54), 20.93),
            ("Mistral-7B", "full", (42.08, 3.08), 22.58),
            ("Mistral-7B", "q_tuning", (41.47, 4.00), 22.74),
            ("SmolLM2-1.7B", "zero-shot", (15.47, 2.20), 8.83),
            ("SmolLM2-1.7B", "full", (16.53, 2.10), 9.31),
            ("SmolLM2-1.7B", "q_tuning", (21.83, 3.90), 12.87),
        )),
    )
    for model, method, scores, avg in rows
)


def paper_reference_table() -> pd.DataFrame:
    """The paper's reported numbers with the relative change vs its full-data row."""
    frame = pd.DataFrame(list(PAPER_REFERENCE))
    full = frame[frame["method"] == "full"].set_index(["setting", "model"])["avg"]
    frame[REL_CHANGE] = [
        (r["avg"] / full[(r["setting"], r["model"])] - 1.0) * 100.0 if (r["setting"], r["model"]) in full.index else math.nan
        for _, r in frame.iterrows()
    ]
    task_cols = [c for c in frame.columns if c not in ("setting", "model", "budget", "method", "avg", REL_CHANGE)]
    return frame[["setting", "model", "budget", "method", *task_cols, "avg", REL_CHANGE]]


# --------------------------------------------------------------------------- writers


def write_main_table(main: pd.DataFrame, tasks: list[str], stem: Path, note: str | None = None) -> list[Path]:
    """``main.csv`` (tidy, :func:`main_table`), and the blocked ``.md``/``.tex``/``.html``."""
    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    write_text_atomic(paths[0], main.to_csv(index=False))
    value_columns = [*tasks, "Avg", "Δ vs full (%)"]
    md_parts = [f"{note}\n"] if note else []
    for title, frame in main_display(main, tasks, "markdown"):
        align = ["l", "l", "l", *["r"] * len(value_columns)]
        md_parts.append(f"### {title}\n\n{to_markdown(frame, align=align)}")
    if len(md_parts) == (1 if note else 0):
        md_parts.append("(no evaluation records)\n")
    write_text_atomic(paths[1], "\n".join(md_parts))
    write_text_atomic(paths[2], main_latex(main, tasks))
    bodies = [to_html(frame, raw=value_columns, title=title) for title, frame in main_display(main, tasks, "html")]
    write_text_atomic(paths[3], html_page("Main table", "".join(bodies) or "<p>(no evaluation records)</p>", note))
    return paths


def main_latex(main: pd.DataFrame, tasks: list[str]) -> str:
    """One booktabs tabular with a header row per block and a rule between groups."""
    blocks = main_display(main, tasks, "latex")
    n_cols = 3 + len(tasks) + 2
    head = ["Group", "Method", "Budget", *tasks, "Avg", "Δ vs full (%)"]
    lines = [rf"\begin{{tabular}}{{lll{'r' * (len(tasks) + 2)}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in head) + r" \\"]
    for title, frame in blocks:
        lines += [r"\midrule", rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{{latex_escape(title)}}}}} \\", r"\midrule"]
        for i, row in enumerate(frame.itertuples(index=False)):
            values = list(row)
            if i and values[0]:
                lines.append(r"\cmidrule(lr){1-%d}" % n_cols)
            lines.append(" & ".join([latex_escape(v) for v in values[:3]] + [str(v) for v in values[3:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_budget_table(budget: pd.DataFrame, stem: Path, note: str | None = None) -> list[Path]:
    """``budget.csv`` (tidy, :func:`budget_table`) and the displayed ``.md``/``.tex``/``.html``."""
    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    write_text_atomic(paths[0], budget.to_csv(index=False))
    shown = budget_display(budget, "markdown")
    align = ["l", "l", "l", "l", "r", "r", "r", "r", "r", "r", "r"]
    write_text_atomic(paths[1], (f"{note}\n\n" if note else "") + to_markdown(shown, align=align))
    write_text_atomic(paths[2], to_latex(budget_display(budget, "latex"), raw=["Avg"]))
    write_text_atomic(paths[3], html_page("Budget table", to_html(shown), note))
    return paths


MAIN_NOTE = ("Scores: each task's primary metric x 100, mean ± std over seeds (std with ddof=1; blank for one seed). "
             "Δ vs full (%) = (avg / avg of full data − 1) × 100, both means over seeds. Bold: best per column "
             "within a block (zero-shot excluded).")
BUDGET_NOTE = ("Avg: mean ± std over seeds. Effective budget (means over seeds): Samples % = samples that entered a "
               "backward pass / (records × epochs); Tokens % = response tokens that carried loss / (response tokens × "
               "epochs); FLOPs % = training FLOPs (stats pass 2N, update 6N per token) / full data's 6N per token.")
