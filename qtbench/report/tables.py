"""The results tables: from evaluation records and run artifacts to the paper's tables.

Inputs: the evaluation records and the runs' effective budgets
(:mod:`qtbench.report.runs`).  Tables (each written by
:mod:`qtbench.report.aggregate` as ``.csv`` (tidy), ``.md``, ``.tex`` and ``.html``):

* ``long``        one row per (run, task, metric): value and stderr - the raw data;
* ``comparison``  one row per run group (model x method x budget, seeds pooled):
  each task's primary metric in percent and their average ``avg``, each with its
  interval, the paired differences and the effective budget;
* ``main``        the paper's main table: one block per model x total budget, rows
  grouped (zero-shot, full data, sample-level, token-level, sample + token,
  controls), columns the nominal and effective budgets, the tasks, ``avg`` and the
  paired differences vs full data and vs random+random;
* ``budget``      each method x budget: average score with its interval, the paired
  differences and the effective budget (samples and response tokens that carried
  loss, training FLOPs vs full data);
* ``paper_reference`` the paper's reported numbers (main tables and ablations), kept beside ours.

Definitions (written once, here):

* a run's score on a task is its primary metric x 100 (:func:`primary_metric`);
  ``avg`` is the unweighted mean over the configured tasks;
* mean and std over seeds: ``std`` is the sample standard deviation (``ddof=1``);
  with one seed it is undefined and left blank (CSV only: the displays show intervals);
* intervals (:mod:`qtbench.report.intervals`, from each record's per-item file,
  :mod:`qtbench.items`): a score is the mean over seeds with a 95% bootstrap
  interval resampling seeds and, within each task, items; ``Δ vs full`` and ``Δ vs
  random+random`` are paired differences (same items on both sides) in points with
  95% intervals, marked ``*`` when the interval excludes 0.  The reference of
  ``Δ vs random+random`` is the ``random+random`` group of the same model at the
  same budget (``s<r_s>-t<r_t>``), else the only one at the same total budget
  (:func:`comparison_references`).  Every table's caption states the smallest
  resolvable difference: the half-width of the median paired interval on ``avg``;
* effective vs nominal budget: a row whose effective token share (response tokens
  that carried loss) deviates from the nominal ``r_s x r_t`` by more than
  :data:`BUDGET_TOLERANCE` (relative) is flagged ``†`` with a footnote saying by how much;
* relative change vs full data, in percent: ``(avg / avg_full - 1) * 100`` where
  both averages are means over seeds and ``avg_full`` is the ``full`` method of the
  same model (the paper's "+38%" is 12.87 / 9.31 - 1).  It has no std;
* best per column (bold in Markdown/LaTeX/HTML, ``best`` in the CSV): within a
  block, the highest mean as displayed (two decimals) among trained rows (zero-shot
  and controls excluded); ties are all bold, except when every row ties (nothing is marked);
* variants (config ``variants``) sit right under their base method, with the
  options that differ in the ``Options`` column, which also says which InfoBatch
  form a run used (:func:`qtbench.report.naming.row_options`);
* the effective budget of a run: :mod:`qtbench.report.runs`.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from qtbench.io import write_text_atomic
from qtbench.paper_numbers import ablation_reference
from qtbench.report.intervals import AVG, N_RESAMPLES, interval_table, resolvable_caption, resolvable_difference
from qtbench.items import record_item_scores
from qtbench.report.naming import (
    GROUP_LABEL,
    GROUP_RANK,
    NEVER_BEST,
    base_method,
    budget_label,
    percent,
    row_family,
    row_group,
    row_options,
    split_budget,
)
from qtbench.report.render import (
    TABLE_FORMATS,
    format_bold,
    format_delta,
    format_interval,
    format_mean_std,
    format_number,
    html_page,
    latex_escape,
    latex_float,
    markdown_block,
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

#: The paired comparisons of every table: name -> column title.  ``full``: the
#: full-data run group of the same model; ``random``: random+random at the same budget.
COMPARISONS = {"full": "Δ vs full", "random": "Δ vs random+random"}

#: The method whose run group is the "at the same budget" reference.
RANDOM_REFERENCE = "random+random"

#: Relative deviation of the effective token share from the nominal r_s x r_t beyond which a row is flagged.
BUDGET_TOLERANCE = 0.10

#: Per row, the interval and paired-difference columns (``interval_table``'s, per comparison).
INTERVAL_COLUMNS = ["low", "high", *[f"delta_{name}{suffix}" for name in COMPARISONS
                                     for suffix in ("", "_low", "_high", "_significant")]]

#: Per row, the effective budget (means over seeds, percent) and its flag.
EFFECTIVE_PCT = ["eff_samples_pct", "eff_tokens_pct", "flops_pct", "optimizer_steps", "nominal_pct",
                 "budget_deviation_pct", "budget_flag"]


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


def runs_table(comparison: pd.DataFrame, effective: pd.DataFrame | None = None,
               variants: Mapping[str, Any] | None = None, method_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The comparison table with the row group, exact budget strings, the base
    method and options of variants (config ``variants`` and ``method_options``)
    and (when given) the effective budget of each run: the input of the main and
    budget tables."""
    frame = comparison.copy()
    parts = [split_budget(b) for b in frame["budget"]]
    frame["r_s"] = [p[0] if p else None for p in parts]
    frame["r_t"] = [p[1] if p else None for p in parts]
    frame["total_budget"] = [p[2] if p else None for p in parts]
    for column in ("r_s", "r_t", "total_budget"):
        frame[column] = frame[column].astype(object)
    described = {m: (row_family(m, variants), row_group(m, variants), base_method(m, variants),
                     row_options(m, method_options, variants)) for m in dict.fromkeys(frame["method"])}
    frame["family"] = [described[m][0] for m in frame["method"]]
    frame["group"] = [described[m][1] for m in frame["method"]]
    frame["base_method"] = [described[m][2] for m in frame["method"]]
    frame["options"] = [described[m][3] for m in frame["method"]]
    if effective is not None and not effective.empty:
        frame = frame.merge(effective[["run_id", *EFFECTIVE_COLUMNS]], on="run_id", how="left")
    else:
        for column in EFFECTIVE_COLUMNS:
            frame[column] = math.nan
    return frame


# --------------------------------------------------------------------------- intervals and paired differences


def group_key(model: Any, method: Any, budget: Any) -> tuple[str, str, str]:
    """A run group's key: (model, method, budget), the budget ``""`` for a base model."""
    return str(model), str(method), "" if budget is None or (not isinstance(budget, str) and pd.isna(budget)) else str(budget)


def task_metrics(frame: pd.DataFrame, tasks: list[str], chosen: Mapping[str, str] | None = None) -> dict[str, str]:
    """Task -> the metric it is scored by (:func:`primary_metric`), for the per-item outcomes."""
    return {task: primary_metric(frame, task, chosen) for task in tasks}


def item_groups(runs: pd.DataFrame, record_paths: Mapping[str, str | Path],
                metrics: Mapping[str, str]) -> dict[tuple[str, str, str], dict[str, pd.DataFrame]]:
    """Per run group (:func:`group_key`), per task, the (seeds x doc ids) per-item
    scores in points, the input of :mod:`qtbench.report.intervals`.

    ``record_paths`` maps a run id to its evaluation record; each record's items
    file is read (:func:`record_item_scores`).  A record without its items file
    raises :class:`qtbench.items.MissingItemsError` naming the file and
    the command that rebuilds it: no row leaves a table silently.  The seeds of a
    group must have been scored on the same items."""
    out: dict[tuple[str, str, str], dict[str, pd.DataFrame]] = {}
    for (model, method, budget), part in runs.groupby(["model", "method", "group_budget"], sort=False):
        key = group_key(model, method, budget)
        per_seed: dict[int, dict[str, pd.Series]] = {}
        paths: dict[int, Path] = {}
        for run_id, seed in zip(part["run_id"], part["seed"]):
            if run_id not in record_paths:
                raise KeyError(f"run {run_id!r} has no evaluation record path")
            seed = 0 if seed is None or pd.isna(seed) else int(seed)
            if seed in paths:
                raise ValueError(f"run group {key}: seed {seed} has two evaluation records, {paths[seed]} and "
                                 f"{record_paths[run_id]}")
            paths[seed] = Path(record_paths[run_id])
            per_seed[seed] = record_item_scores(paths[seed], metrics)
        scores = {}
        for task in metrics:
            frame = pd.DataFrame({seed: items[task] for seed, items in per_seed.items()}).T
            if frame.isna().any().any():
                counts = {str(paths[seed]): len(items[task]) for seed, items in per_seed.items()}
                raise ValueError(f"run group {method}@{budget or 'base'}:{model}: its seeds' records were not scored "
                                 f"on the same items of task {task!r} (items per record: {counts})")
            scores[task] = frame
        out[key] = scores
    return out


def comparison_references(runs: pd.DataFrame) -> dict[str, dict[tuple[str, str, str], tuple[str, str, str] | None]]:
    """Each group's reference of each paired comparison (:data:`COMPARISONS`).

    ``full``: the ``full`` group of the same model (every group but full itself);
    ``random``: the ``random+random`` group of the same model at the same budget
    string, else the only one at the same total budget ``r_s x r_t``; none for
    the base model, full data and when there is no such group (or several)."""
    groups = runs.drop_duplicates(["model", "method", "group_budget"])
    full_of: dict[str, tuple[str, str, str]] = {}
    for row in groups[groups["group"] == "full"].itertuples():
        full_of.setdefault(row.model, group_key(row.model, row.method, row.group_budget))
    randoms = groups[groups["method"] == RANDOM_REFERENCE]
    refs: dict[str, dict] = {name: {} for name in COMPARISONS}
    for row in groups.itertuples():
        key = group_key(row.model, row.method, row.group_budget)
        refs["full"][key] = full_of.get(row.model) if row.group != "full" else None
        reference = None
        if row.group not in ("base", "full"):
            mine = randoms[randoms["model"] == row.model]
            same = mine[mine["group_budget"] == row.group_budget]
            if same.empty:
                same = mine[mine["total_budget"] == row.total_budget]
            if len(same) == 1:
                reference = group_key(row.model, RANDOM_REFERENCE, same["group_budget"].iloc[0])
        refs["random"][key] = reference
    return refs


def intervals_table(runs: pd.DataFrame, record_paths: Mapping[str, str | Path], metrics: Mapping[str, str], *,
                    n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """Every interval the tables show, tidy: one row per (run group, task or ``avg``).

    Columns ``model``, ``method``, ``budget`` (``""`` for a base model),
    ``task``, ``mean``, ``low``, ``high``, ``n_seeds``, ``n_items`` and per
    comparison ``delta_<name>``, ``_low``, ``_high``, ``_significant``
    (:func:`qtbench.report.intervals.interval_table`; the same ``n_resamples`` and
    ``seed`` everywhere, so the tables are reproducible)."""
    frame = _with_group_budget(runs)
    groups = item_groups(frame, record_paths, metrics)
    refs = comparison_references(frame)
    with _one_blas_thread():
        table = interval_table(groups, refs, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if table.empty:
        return pd.DataFrame(columns=["model", "method", "budget", "task", "mean", "n_seeds", "n_items",
                                     *INTERVAL_COLUMNS])
    keys = pd.DataFrame(table.pop("group").tolist(), columns=["model", "method", "budget"])
    return pd.concat([keys, table], axis=1)


def _one_blas_thread() -> Any:
    """One BLAS thread for the bootstrap: its products are (replicates x seeds) by
    (seeds x items), far too small for a thread pool, whose start-up then dominates
    (measured 100x slower on a busy 2-core machine).  ``threadpoolctl`` comes with
    scikit-learn (an lm-eval dependency); without it nothing changes."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def resolvable(intervals: pd.DataFrame | None) -> float:
    """The smallest difference the tables can resolve: half-width of the median paired
    interval on ``avg`` over every comparison (:func:`~qtbench.report.intervals.resolvable_difference`)."""
    if intervals is None or intervals.empty:
        return math.nan
    frames = [intervals[["task", f"delta_{name}_low", f"delta_{name}_high"]].set_axis(["task", "low", "high"], axis=1)
              for name in COMPARISONS]
    return resolvable_difference(frames, AVG)


def _with_group_budget(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``group_budget``: the budget string, ``""`` for a base model (a groupable key)."""
    frame = runs.copy()
    frame["group_budget"] = [group_key("", "", b)[2] for b in frame["budget"]]
    return frame


# --------------------------------------------------------------------------- effective budget and its flag


def _effective(stats: pd.DataFrame) -> pd.DataFrame:
    """Per group row (:func:`_seed_stats` with the effective columns): effective shares in
    percent, the nominal total, the token share's relative deviation and its flag."""
    out = pd.DataFrame(index=stats.index)
    out["eff_samples_pct"] = stats["eff_sample_fraction_mean"] * 100.0
    out["eff_tokens_pct"] = stats["eff_token_fraction_mean"] * 100.0
    out["flops_pct"] = stats["flops_relative_mean"] * 100.0
    out["optimizer_steps"] = stats["optimizer_steps_mean"]
    nominal = [float(Decimal(t)) * 100.0 if t not in (None, "") and t == t else math.nan for t in stats["total_budget"]]
    out["nominal_pct"] = nominal
    deviation = (out["eff_tokens_pct"] / out["nominal_pct"] - 1.0) * 100.0
    out["budget_deviation_pct"] = deviation
    # rounded first: 13.75% of a nominal 12.5% is +10% exactly, not flagged
    out["budget_flag"] = [bool(abs(round(d, 9)) > BUDGET_TOLERANCE * 100) if np.isfinite(d) else False
                          for d in deviation.to_numpy(dtype=float)]
    return out


def flag_text(model: str, method: str, budget: str, row: Mapping[str, Any]) -> str:
    """A flagged row's footnote: how far its effective token share is from the nominal budget."""
    where = f"{model}, {method} {budget_label(budget)}".rstrip()
    others = [f"{name} {format_number(row[column])}%" for name, column in (("samples", "eff_samples_pct"),
                                                                       ("FLOPs", "flops_pct"))
              if not pd.isna(row[column])]
    return (f"{where}: effective token share {row['eff_tokens_pct']:.1f}% vs nominal {percent_number(row['nominal_pct'])} "
            f"({row['budget_deviation_pct']:+.0f}%" + "".join(f"; {o}" for o in others) + ").")


def percent_number(value: float) -> str:
    """``12.5`` -> ``"12.5%"``, ``100.0`` -> ``"100%"``."""
    return f"{float(value):g}%"


def effective_cell(row: Mapping[str, Any], mark: str = "") -> str:
    """``"26.0 / 13.0 / 41.0"`` (samples / tokens / FLOPs, percent) plus a flag mark."""
    values = [row.get("eff_samples_pct"), row.get("eff_tokens_pct"), row.get("flops_pct")]
    if all(v is None or pd.isna(v) for v in values):
        return ""
    text = " / ".join(format_number(v) or "–" for v in values)
    return f"{text} {mark}" if mark else text


def footnote_marks(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Group key -> (mark ``†1``, ``†2``..., footnote text) for each flagged row, numbered in order."""
    marks: dict[tuple[str, str, str], tuple[str, str]] = {}
    for row in rows:
        if not bool(row.get("budget_flag")):
            continue
        key = group_key(row["model"], row["method"], row["budget"])
        if key not in marks:
            mark = f"†{len(marks) + 1}"
            marks[key] = (mark, f"{mark} {flag_text(*key, row)}")
    return marks


# --------------------------------------------------------------------------- main table


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the paper's order: group, then (joint group) pairs before joint
    methods, then the base method's first appearance (the config's method
    order), the base method before its variants, then the method's first
    appearance, then budget."""
    frame = frame.copy()
    first = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    bases = frame["base_method"] if "base_method" in frame.columns else frame["method"]
    first_base = {m: i for i, m in enumerate(dict.fromkeys(bases))}
    frame["_g"] = frame["group"].map(GROUP_RANK)
    frame["_j"] = (frame["family"] == "joint").astype(int)
    frame["_mb"] = bases.map(first_base)
    frame["_v"] = (bases != frame["method"]).astype(int)
    frame["_m"] = frame["method"].map(first)
    frame["_b"] = frame["budget"].fillna("")
    columns = ["_g", "_j", "_mb", "_v", "_m", "_b"]
    return frame.sort_values(columns, kind="stable").drop(columns=columns)


def _seed_stats(runs: pd.DataFrame, columns: list[str], keys: list[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed) and count over seeds per key."""
    grouped = runs.groupby(keys, sort=False, dropna=False)
    mean = grouped[columns].mean()
    std = grouped[columns].std(ddof=1)
    count = grouped.size().rename("n_seeds")
    out = mean.add_suffix("_mean").join(std.add_suffix("_std")).join(count)
    return out.reset_index()


def group_table(runs: pd.DataFrame, tasks: list[str], intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run group (model x method x budget, seeds pooled), in the main
    table's order per model: ``<column>`` (mean over seeds), ``<column>_std``,
    ``<column>_low``, ``<column>_high`` for each task and ``avg``; the paired
    differences ``delta_<name>[_low|_high|_significant]`` on ``avg``; the
    effective budget (:data:`EFFECTIVE_PCT`) and the row's ``options``."""
    columns = [*tasks, "avg"]
    keys = ["model", "group", "family", "method", "base_method", "options", "budget", "r_s", "r_t", "total_budget"]
    frame = runs.copy()
    for column in ("base_method", "options"):
        if column not in frame.columns:
            frame[column] = frame["method"] if column == "base_method" else ""
    for column in ("budget", "r_s", "r_t", "total_budget"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
    stats = _seed_stats(frame, [*columns, *EFFECTIVE_COLUMNS], keys)
    out = stats[keys + ["n_seeds"]].copy()
    for column in columns:
        out[column] = stats[f"{column}_mean"]
        out[f"{column}_std"] = stats[f"{column}_std"]
        out[f"{column}_low"] = math.nan
        out[f"{column}_high"] = math.nan
    for name in COMPARISONS:
        for suffix in ("", "_low", "_high"):
            out[f"delta_{name}{suffix}"] = math.nan
        out[f"delta_{name}_significant"] = None
    if intervals is not None and not intervals.empty:
        lookup = intervals.set_index(["model", "method", "budget", "task"])
        for i, row in out.iterrows():
            for column in columns:
                where = (row["model"], row["method"], row["budget"], column)
                if where not in lookup.index:
                    continue
                found = lookup.loc[where]
                out.at[i, f"{column}_low"] = found["low"]
                out.at[i, f"{column}_high"] = found["high"]
                if column == "avg":
                    for name in COMPARISONS:
                        for suffix in ("", "_low", "_high", "_significant"):
                            out.at[i, f"delta_{name}{suffix}"] = found[f"delta_{name}{suffix}"]
    out = out.join(_effective(stats))
    ordered = [_order(out[out["model"] == model]) for model in dict.fromkeys(out["model"])]
    return pd.concat(ordered).reset_index(drop=True) if ordered else out


def main_table(runs: pd.DataFrame, tasks: list[str], intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's main table, tidy: one row per (block, method row, column).

    ``runs`` is :func:`runs_table`, ``intervals`` :func:`intervals_table`.
    Blocks: per model, per nominal total budget ``r_s x r_t`` of the pruned runs
    (ascending); each block repeats the model's zero-shot and full-data rows.
    Columns of the result: ``model``, ``total_budget``, ``group`` (key),
    ``group_label``, ``method``, ``base_method``, ``options``, ``family``,
    ``budget``, ``n_seeds``, ``column`` (a task, ``avg`` or ``rel_change``),
    ``mean``, ``std``, ``best``, ``low``, ``high`` (the score's interval) and the
    paired differences of that column ``delta_<name>[_low|_high|_significant]``
    (every task and ``avg``), then the row's effective budget (:data:`EFFECTIVE_PCT`)."""
    columns = [*tasks, "avg"]
    out_columns = ["model", "total_budget", "group", "group_label", "method", "base_method", "options", "family",
                   "budget", "n_seeds", "column", "mean", "std", "best", *INTERVAL_COLUMNS, *EFFECTIVE_PCT]
    if runs.empty:
        return pd.DataFrame(columns=out_columns)
    groups = group_table(runs, tasks)
    lookup = (intervals.set_index(["model", "method", "budget", "task"])
              if intervals is not None and not intervals.empty else None)
    rows = []
    for model in dict.fromkeys(groups["model"]):
        mine = groups[groups["model"] == model]
        full = mine[mine["group"] == "full"]
        avg_full = float(full["avg"].mean()) if len(full) else math.nan
        pruned = mine[~mine["group"].isin(["base", "full"])]
        totals = sorted(set(pruned["total_budget"]), key=lambda t: Decimal(t)) or ["1"]
        for total in totals:
            block = mine[mine["group"].isin(["base", "full"]) | (mine["total_budget"] == total)]
            block_rows = []
            for _, r in block.iterrows():
                base = {"model": model, "total_budget": total, "group": r["group"], "group_label": GROUP_LABEL[r["group"]],
                        "method": r["method"], "base_method": r["base_method"], "options": r["options"],
                        "family": r["family"], "budget": r["budget"], "n_seeds": int(r["n_seeds"]),
                        **{c: r[c] for c in EFFECTIVE_PCT}}
                for column in columns:
                    cell = {**base, "column": column, "mean": r[column], "std": r[f"{column}_std"]}
                    where = (model, r["method"], r["budget"], column)
                    if lookup is not None and where in lookup.index:
                        found = lookup.loc[where]
                        cell.update({c: found[c] for c in INTERVAL_COLUMNS})
                    block_rows.append(cell)
                rel = (r["avg"] / avg_full - 1.0) * 100.0 if avg_full and not math.isnan(avg_full) else math.nan
                block_rows.append({**base, "column": REL_CHANGE, "mean": rel, "std": math.nan})
            _mark_best(block_rows)
            rows.extend(block_rows)
    return pd.DataFrame(rows, columns=out_columns)


def _mark_best(rows: list[dict[str, Any]], decimals: int = 2) -> None:
    """``best`` = highest mean as displayed (rounded) per column among trained
    rows that are not controls; none when every row shows the same value."""
    for row in rows:
        row["best"] = False
    by_column: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["group"] not in NEVER_BEST and not pd.isna(row["mean"]):
            by_column.setdefault(row["column"], []).append(row)
    for candidates in by_column.values():
        shown = [round(float(r["mean"]), decimals) for r in candidates]
        top = max(shown)
        if len(candidates) > 1 and min(shown) == top:
            continue  # every row ties: nothing to mark
        for r, value in zip(candidates, shown):
            r["best"] = value == top


def main_footnotes(main: pd.DataFrame) -> dict[tuple[str, str, str], tuple[str, str]]:
    """:func:`footnote_marks` of the main table's rows (one per method row, first appearance)."""
    if main.empty:
        return {}
    rows = main[main["column"] == "avg"].drop_duplicates(["model", "method", "budget"])
    return footnote_marks(rows.to_dict("records"))


def main_display(main: pd.DataFrame, tasks: list[str], style: str = "markdown") -> list[tuple[str, pd.DataFrame]]:
    """One display frame (strings, bold applied) per block: ``[(title, frame)]``.
    ``style`` is ``markdown``, ``latex``, ``html`` or ``plain`` (no bold).

    Columns: Group, Method, Options (only when a row has some), Budget (nominal
    ``r_s×r_t``), Effective % (samples / tokens / FLOPs, ``†n`` when flagged:
    :func:`main_footnotes`), each task and Avg as ``mean [low, high]``, and the
    paired differences on Avg (:data:`COMPARISONS`)."""
    marks = main_footnotes(main)
    with_options = bool(main["options"].fillna("").astype(str).str.len().gt(0).any()) if not main.empty else False
    blocks = []
    for (model, total), block in main.groupby(["model", "total_budget"], sort=False):
        title = f"{model}, total budget {percent(total)}" + (" (r_s × r_t)" if total != "1" else "")
        out = []
        seen_groups: set[str] = set()
        for (group, method, budget), row in block.groupby(["group", "method", "budget"], sort=False):
            first = row.iloc[0]
            cells = {"Group": "" if group in seen_groups else GROUP_LABEL[group], "Method": method}
            if with_options:
                cells["Options"] = first["options"] or ""
            cells["Budget"] = budget_label(budget) if budget else ""
            mark = marks.get(group_key(model, method, budget), ("", ""))[0]
            cells[EFFECTIVE_TITLE] = effective_cell(first, mark)
            seen_groups.add(group)
            values = row.set_index("column")
            for column in [*tasks, "avg"]:
                r = values.loc[column]
                text = format_interval(r["mean"], r["low"], r["high"])
                cells[_column_title(column)] = format_bold(text, bool(r["best"]), style)
            avg = values.loc["avg"]
            for name, title_ in COMPARISONS.items():
                cells[title_] = format_delta(avg[f"delta_{name}"], avg[f"delta_{name}_low"], avg[f"delta_{name}_high"],
                                             avg[f"delta_{name}_significant"])
            out.append(cells)
        blocks.append((title, pd.DataFrame(out)))
    return blocks


#: The effective-budget column's title in the displays.
EFFECTIVE_TITLE = "Effective % (samples / tokens / FLOPs)"


def _column_title(column: str) -> str:
    return {"avg": "Avg", REL_CHANGE: "Δ vs full (%)"}.get(column, column)


# --------------------------------------------------------------------------- budget and comparison tables


def budget_table(runs: pd.DataFrame, intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each method x budget (per model): mean, std and interval of ``avg`` over
    seeds, the paired differences on ``avg`` and the mean effective budget
    (percent) with its flag, sorted by model, total budget, group and method.
    Base models are left out (no training)."""
    columns = ["model", "group", "method", "base_method", "options", "budget", "r_s", "r_t", "total_budget", "n_seeds",
               "avg_mean", "avg_std", "avg_low", "avg_high",
               *[f"delta_{n}{s}" for n in COMPARISONS for s in ("", "_low", "_high", "_significant")], *EFFECTIVE_PCT]
    frame = runs[runs["group"] != "base"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    stats = group_table(frame, [], intervals).rename(columns={"avg": "avg_mean"})
    stats["_t"] = stats["total_budget"].map(Decimal)
    ordered = [stats[stats["model"] == model].sort_values("_t", kind="stable") for model in dict.fromkeys(stats["model"])]
    return pd.concat(ordered)[columns].reset_index(drop=True)


def budget_display(budget: pd.DataFrame, style: str = "markdown") -> pd.DataFrame:
    """:func:`budget_table` as strings (``style`` is kept for the writers' symmetry;
    the LaTeX writer escapes), percentages labelled, flagged token shares marked ``†n``."""
    marks = footnote_marks(budget.to_dict("records"))
    with_options = bool(budget["options"].fillna("").astype(str).str.len().gt(0).any()) if not budget.empty else False
    rows = []
    for _, r in budget.iterrows():
        mark = marks.get(group_key(r["model"], r["method"], r["budget"]), ("", ""))[0]
        row = {"Model": r["model"], "Group": GROUP_LABEL[r["group"]], "Method": r["method"]}
        if with_options:
            row["Options"] = r["options"] or ""
        row.update({
            "Budget": budget_label(r["budget"]), "Total": percent(r["total_budget"]), "Seeds": int(r["n_seeds"]),
            "Avg": format_interval(r["avg_mean"], r["avg_low"], r["avg_high"]),
            **{title: format_delta(r[f"delta_{name}"], r[f"delta_{name}_low"], r[f"delta_{name}_high"],
                                   r[f"delta_{name}_significant"]) for name, title in COMPARISONS.items()},
            "Samples %": format_number(r["eff_samples_pct"]),
            "Tokens %": (format_number(r["eff_tokens_pct"]) + (f" {mark}" if mark else "")),
            "FLOPs %": format_number(r["flops_pct"]), "Steps": format_number(r["optimizer_steps"], ".0f"),
        })
        rows.append(row)
    head = ["Model", "Group", "Method", *(["Options"] if with_options else []), "Budget", "Total", "Seeds", "Avg",
            *COMPARISONS.values(), "Samples %", "Tokens %", "FLOPs %", "Steps"]
    return pd.DataFrame(rows, columns=head)


def comparison_display(groups: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """:func:`group_table` as strings: one row per run group, each task and Avg as
    ``mean [low, high]``, the paired differences, the effective budget."""
    marks = footnote_marks(groups.to_dict("records"))
    with_options = bool(groups["options"].fillna("").astype(str).str.len().gt(0).any()) if not groups.empty else False
    rows = []
    for _, r in groups.iterrows():
        mark = marks.get(group_key(r["model"], r["method"], r["budget"]), ("", ""))[0]
        row = {"Model": r["model"], "Group": GROUP_LABEL[r["group"]], "Method": r["method"]}
        if with_options:
            row["Options"] = r["options"] or ""
        row.update({"Budget": budget_label(r["budget"]) if r["budget"] else "", "Seeds": int(r["n_seeds"])})
        for column in [*tasks, "avg"]:
            row[_column_title(column)] = format_interval(r[column], r[f"{column}_low"], r[f"{column}_high"])
        for name, title in COMPARISONS.items():
            row[title] = format_delta(r[f"delta_{name}"], r[f"delta_{name}_low"], r[f"delta_{name}_high"],
                                      r[f"delta_{name}_significant"])
        row[EFFECTIVE_TITLE] = effective_cell(r, mark)
        rows.append(row)
    return pd.DataFrame(rows)


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
    """The paper's reported numbers - its main and reasoning tables (``source``
    ``main``) and its ablations (``source`` ``ablation``,
    :func:`qtbench.paper_numbers.ablation_reference`, averages only) - with the
    relative change vs its full-data row of the same setting and model."""
    main = pd.DataFrame(list(PAPER_REFERENCE)).assign(source="main")
    ablation = pd.DataFrame(ablation_reference()).assign(source="ablation")
    frame = pd.concat([main, ablation], ignore_index=True)
    full = main[main["method"] == "full"].set_index(["setting", "model"])["avg"]
    frame[REL_CHANGE] = [
        (r["avg"] / full[(r["setting"], r["model"])] - 1.0) * 100.0 if (r["setting"], r["model"]) in full.index else math.nan
        for _, r in frame.iterrows()
    ]
    fixed = ("source", "setting", "model", "budget", "method", "avg", REL_CHANGE)
    task_cols = [c for c in frame.columns if c not in fixed]
    return frame[["source", "setting", "model", "budget", "method", *task_cols, "avg", REL_CHANGE]]


# --------------------------------------------------------------------------- captions and writers

#: What the score and difference columns mean (the start of every results table's caption).
SCORES_NOTE = ("Scores: each task's primary metric x 100, mean over seeds [95% interval]; Avg: unweighted mean over "
               "tasks. Δ vs full and Δ vs random+random: paired differences of Avg in points against the full-data "
               "run group of the same model and against random+random at the same budget [95% interval].")

#: What the effective-budget columns mean.
EFFECTIVE_NOTE = ("Effective budget (means over seeds, percent): samples that entered a backward pass / (records × "
                  "epochs); response tokens that carried loss / (response tokens × epochs); training FLOPs (stats "
                  "pass 2N, update 6N per token) / full data's 6N per token. † marks a row whose effective token share "
                  "deviates from the nominal r_s × r_t by more than 10% (relative); its footnote says by how much.")


def table_note(kind: str, resolvable_points: float, n_resamples: int = N_RESAMPLES, confidence: float = 0.95) -> str:
    """The caption of the ``main``, ``budget`` or ``comparison`` table: what the
    columns mean, the bootstrap procedure and the smallest resolvable difference."""
    best = (" Bold: best per column within a block (zero-shot and controls excluded; controls use the data's "
            "ground-truth labels)." if kind == "main" else "")
    return f"{SCORES_NOTE} {EFFECTIVE_NOTE}{best} {resolvable_caption(resolvable_points, n_resamples, confidence)}"


def write_main_table(main: pd.DataFrame, tasks: list[str], stem: Path, note: str | None = None) -> list[Path]:
    """``main.csv`` (tidy, :func:`main_table`), and the blocked ``.md``/``.tex``/``.html``
    with ``note`` as caption and the effective-budget footnotes below."""
    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    write_text_atomic(paths[0], main.to_csv(index=False))
    footnotes = [text for _, text in main_footnotes(main).values()]
    md_parts = []
    for title, frame in main_display(main, tasks, "markdown"):
        align = ["r" if c in _value_titles(tasks) or c == EFFECTIVE_TITLE else "l" for c in frame.columns]
        md_parts.append(f"### {title}\n\n{to_markdown(frame, align=align)}")
    body = "\n".join(md_parts) if md_parts else "(no evaluation records)\n"
    write_text_atomic(paths[1], markdown_block(body, note, footnotes))
    write_text_atomic(paths[2], latex_float(main_latex(main, tasks), note, footnotes))
    bodies = [to_html(frame, raw=_value_titles(tasks), title=title) for title, frame in main_display(main, tasks, "html")]
    write_text_atomic(paths[3], html_page("Main table", "".join(bodies) or "<p>(no evaluation records)</p>", note,
                                          footnotes))
    return paths


def _value_titles(tasks: list[str]) -> list[str]:
    """Display columns holding formatted numbers (bold already applied: not escaped)."""
    return [*tasks, "Avg", *COMPARISONS.values()]


def main_latex(main: pd.DataFrame, tasks: list[str]) -> str:
    """One booktabs tabular with a header row per block and a rule between groups."""
    blocks = main_display(main, tasks, "latex")
    if not blocks:
        return "\\begin{tabular}{l}\n\\toprule\n(no evaluation records) \\\\\n\\bottomrule\n\\end{tabular}\n"
    head = list(blocks[0][1].columns)
    raw = set(_value_titles(tasks))
    n_cols = len(head)
    align = "".join("r" if c in raw or c == EFFECTIVE_TITLE else "l" for c in head)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(latex_escape(c) for c in head) + r" \\"]
    for title, frame in blocks:
        lines += [r"\midrule", rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{{latex_escape(title)}}}}} \\", r"\midrule"]
        for i, row in enumerate(frame.itertuples(index=False)):
            values = list(row)
            if i and values[0]:
                lines.append(r"\cmidrule(lr){1-%d}" % n_cols)
            lines.append(" & ".join(str(v) if c in raw else latex_escape(v) for c, v in zip(head, values)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _write_flat(shown: pd.DataFrame, tidy: pd.DataFrame, stem: Path, title: str, note: str | None,
                footnotes: list[str], left: Iterable[str]) -> list[Path]:
    """A flat display table (strings) in every format, the tidy frame as the CSV."""
    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    left = set(left)
    write_text_atomic(paths[0], tidy.to_csv(index=False))
    align = ["l" if c in left else "r" for c in shown.columns]
    write_text_atomic(paths[1], markdown_block(to_markdown(shown, align=align), note, footnotes))
    write_text_atomic(paths[2], latex_float(to_latex(shown), note, footnotes))
    write_text_atomic(paths[3], html_page(title, to_html(shown), note, footnotes))
    return paths


def write_budget_table(budget: pd.DataFrame, stem: Path, note: str | None = None) -> list[Path]:
    """``budget.csv`` (tidy, :func:`budget_table`) and the displayed ``.md``/``.tex``/``.html``."""
    footnotes = [text for _, text in footnote_marks(budget.to_dict("records")).values()]
    return _write_flat(budget_display(budget), budget, stem, "Budget table", note, footnotes,
                       ["Model", "Group", "Method", "Options", "Budget"])


def write_comparison_table(groups: pd.DataFrame, tasks: list[str], stem: Path, note: str | None = None) -> list[Path]:
    """``comparison.csv`` (tidy, :func:`group_table`) and the displayed ``.md``/``.tex``/``.html``."""
    footnotes = [text for _, text in footnote_marks(groups.to_dict("records")).values()]
    return _write_flat(comparison_display(groups, tasks), groups, stem, "Comparison table", note, footnotes,
                       ["Model", "Group", "Method", "Options", "Budget"])


MAIN_NOTE = f"{SCORES_NOTE} {EFFECTIVE_NOTE}"
BUDGET_NOTE = MAIN_NOTE
