"""Results tables: from evaluation records and training traces to the paper's tables.

Inputs are the files the rules write: one lm-eval record per checkpoint
(``qtbench.evaluate``; ``evals/...json``) and, per run, its checkpoint folder
(``train_summary.json`` and ``trace.jsonl``, whose rows carry the per-sample
decisions, see :mod:`qtbench.report.noise`).  Outputs, under
``results/<experiment>/tables/``, each as ``.csv`` (tidy), ``.md``, ``.tex``
(booktabs) and ``.html`` (for the Snakemake report):

* ``long``        one row per (run, task, metric): value and stderr - the raw data;
* ``comparison``  one row per run (and base model): each task's primary metric in
  percent, their average ``avg`` and the run's effective budget;
* ``main``        the paper's main table: one block per model x total budget, rows
  grouped (zero-shot, full data, sample-level, token-level, sample + token), columns
  the tasks, ``avg`` and the relative change vs full data; mean +- std over seeds;
* ``budget``      each method x budget: average score and the effective budget
  (samples and response tokens that carried loss, training FLOPs vs full data);
* ``noise_recall``, ``noise_quadrants`` (:mod:`qtbench.report.noise`) when the world's
  ground truth is given;
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
* effective budget (:func:`effective_budget_table`): from ``train_summary.json``
  when present (``effective_sample_fraction`` = samples that entered a backward pass
  / (records x epochs), ``effective_token_fraction`` = response tokens that carried
  loss / (response tokens x epochs), ``flops_relative`` = (2N x scored tokens +
  6N x trained tokens) / (6N x all tokens x epochs)); otherwise from ``trace.jsonl``
  (:func:`effective_budget_from_trace`), without FLOPs.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qtbench.io import read_json, write_text_atomic

log = logging.getLogger(__name__)

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

#: Row groups of the main table, in the paper's order: (key, label).  ``joint``
#: holds the (sample, token) pairs and Q-Tuning, as the paper's bottom block.
GROUPS = (("base", "Zero-shot"), ("full", "Full data"), ("sample", "Sample-level"),
          ("token", "Token-level"), ("joint", "Sample + token"), ("other", "Other"))
GROUP_LABEL = dict(GROUPS)
GROUP_RANK = {key: i for i, (key, _) in enumerate(GROUPS)}

#: Every table :func:`aggregate` writes, and the formats of each.
TABLE_STEMS = ("main", "budget", "comparison", "long", "noise_recall", "noise_quadrants", "paper_reference")
TABLE_FORMATS = ("csv", "md", "tex", "html")

EFFECTIVE_COLUMNS = ["eff_sample_fraction", "eff_token_fraction", "flops_relative", "optimizer_steps"]
REL_CHANGE = "rel_change"


def table_files() -> list[str]:
    """File names (relative to the tables folder) that :func:`aggregate` writes."""
    return [f"{stem}.{ext}" for stem in TABLE_STEMS for ext in TABLE_FORMATS]


# --------------------------------------------------------------------------- loading


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]


def read_jsonl(path: str | Path) -> pd.DataFrame:
    """A JSON-lines file as a frame (empty frame for an empty file); names the
    file and line of a corrupt row."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number} is not valid JSON (truncated?): {exc.msg}") from None
    return pd.DataFrame(rows)


@dataclass
class RunArtifacts:
    """What a training run left in its checkpoint folder."""

    run_dir: Path
    summary: dict[str, Any]
    trace: pd.DataFrame
    samples: pd.DataFrame | None = None

    @property
    def run_id(self) -> str:
        return str(self.summary["run_id"])

    @property
    def method(self) -> str:
        return str(self.summary["method"])

    @property
    def model(self) -> str:
        return str(self.summary["model"])

    @property
    def budget(self) -> str:
        return str(self.summary["budget"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read ``train_summary.json`` (required) and ``trace.jsonl`` (optional); the
    trace's per-sample decisions become :attr:`RunArtifacts.samples`
    (:func:`trace_samples`) and leave the trace frame."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "train_summary.json")
    trace = read_jsonl(run_dir / "trace.jsonl") if (run_dir / "trace.jsonl").exists() else pd.DataFrame()
    samples = trace_samples(trace)
    trace = trace.drop(columns=[c for c in ("samples", "epoch_plan") if c in trace.columns])
    return RunArtifacts(run_dir, summary, trace, samples)


#: Per-sample values every decision row has; methods add their own (Q-Tuning: ppl, entropy, quadrant).
SAMPLE_COLUMNS = ["epoch", "stage", "step", "micro_batch", "sample_id", "kept", "weight"]


def trace_samples(trace: pd.DataFrame) -> pd.DataFrame | None:
    """One row per decision about one sample, from the trace (``None`` when the
    trace carries none):

    * ``stage = "batch"``: each micro-batch row's column-wise ``samples``
      (``id``, ``kept``, ``weight`` and the method's own values, e.g. Q-Tuning's
      ``ppl``, ``entropy``, ``quadrant``);
    * ``stage = "epoch"``: an ``epoch_plan`` (``{"id": [kept ids], "n_records": N}``)
      on a row of an epoch that an epoch-level pruner planned: every record of
      the data set, ``kept`` when the plan holds it."""
    if trace is None or trace.empty or "samples" not in trace.columns:
        return None
    columns: dict[str, list] = {c: [] for c in SAMPLE_COLUMNS}
    extra: dict[str, list] = {}
    count = 0
    for row in trace.itertuples(index=False):
        block = getattr(row, "samples")
        if isinstance(block, dict) and block.get("id"):
            n = len(block["id"])
            columns["epoch"] += [int(row.epoch)] * n
            columns["stage"] += ["batch"] * n
            columns["step"] += [int(row.step)] * n
            columns["micro_batch"] += [int(getattr(row, "micro_batch", -1))] * n
            columns["sample_id"] += [int(i) for i in block["id"]]
            columns["kept"] += [bool(k) for k in block["kept"]]
            columns["weight"] += list(block.get("weight", [1.0] * n))
            for name, values in block.items():
                if name in ("id", "kept", "weight"):
                    continue
                extra.setdefault(name, [None] * count).extend(values)
            count += n
            for values in extra.values():
                values.extend([None] * (count - len(values)))
        plan = getattr(row, "epoch_plan", None)
        if isinstance(plan, dict):
            kept = set(int(i) for i in plan["id"])
            n = int(plan["n_records"])
            columns["epoch"] += [int(row.epoch)] * n
            columns["stage"] += ["epoch"] * n
            columns["step"] += [None] * n
            columns["micro_batch"] += [None] * n
            columns["sample_id"] += list(range(n))
            columns["kept"] += [i in kept for i in range(n)]
            columns["weight"] += [None] * n
            count += n
            for values in extra.values():
                values.extend([None] * n)
    if not count:
        return None
    frame = pd.DataFrame(columns)
    for name, values in extra.items():
        frame[name] = pd.Series(values, dtype=object)
    for name in ("ppl", "entropy"):
        if name in frame.columns:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def load_runs(run_dirs: Iterable[str | Path]) -> list[RunArtifacts]:
    return [load_run(d) for d in run_dirs]


# --------------------------------------------------------------------------- budgets and groups


def split_budget(budget: Any) -> tuple[str, str, str] | None:
    """``"s0.25-t0.5"`` -> ``("0.25", "0.5", "0.125")`` (decimal strings, exact);
    ``None`` for a base model's record."""
    if budget is None or (isinstance(budget, float) and math.isnan(budget)) or budget == "":
        return None
    from qtbench.config import multiply, parse_budget, ratio_str

    parse_budget(str(budget))  # validates
    r_s, _, r_t = str(budget)[1:].partition("-t")
    r_s, r_t = ratio_str(r_s), ratio_str(r_t)
    return r_s, r_t, multiply(r_s, r_t)


def percent(ratio: str | float | None) -> str:
    """``"0.125"`` -> ``"12.5%"`` (no float noise)."""
    if ratio is None or ratio == "":
        return ""
    text = format((Decimal(str(ratio)) * 100).normalize(), "f")
    return f"{text}%"


def budget_label(budget: Any) -> str:
    """``"s0.25-t0.5"`` -> ``"25%×50%"``; ``""`` for a base model."""
    parts = split_budget(budget)
    return "" if parts is None else f"{percent(parts[0])}×{percent(parts[1])}"


def method_family(method: str) -> str:
    """``base`` (a base model's record), ``full``, ``sample``, ``token``, ``pair``,
    ``joint`` - :func:`qtbench.pruning.parse_method`; ``other`` for a name the
    registry does not know (an old result)."""
    if method == "base":
        return "base"
    try:
        from qtbench.pruning import parse_method

        return parse_method(method).family
    except ValueError:
        return "other"


def method_group(method: str) -> str:
    """The main table's row group of a method (pairs and joint methods share one)."""
    family = method_family(method)
    return "joint" if family in ("pair", "joint") else family


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


# --------------------------------------------------------------------------- effective budget


def effective_budget_from_trace(trace: pd.DataFrame | Sequence[Mapping[str, Any]], *, n_records: int | None = None,
                                response_tokens: int | None = None, epochs: int | None = None) -> dict[str, float]:
    """Effective budget of a run from its per-micro-batch trace rows.

    ``sample_fraction`` = sum(samples_kept) / (records x epochs) and
    ``token_fraction`` = sum(response_tokens_kept) / (response tokens x epochs).
    Without ``n_records``/``response_tokens`` the denominators are what the trace
    saw (sum of ``batch_size`` / ``response_tokens``), which equals the data set
    times the epochs for per-micro-batch methods but not for epoch-level pruners
    (they never show the samples they dropped): pass the data set's sizes then.
    ``epochs`` defaults to the number of distinct epochs in the trace."""
    rows = trace if isinstance(trace, pd.DataFrame) else pd.DataFrame(list(trace))
    if rows.empty:
        return {"sample_fraction": math.nan, "token_fraction": math.nan, "micro_batches": 0, "steps": 0}
    n_epochs = int(epochs) if epochs is not None else int(rows["epoch"].nunique())
    samples_den = n_records * n_epochs if n_records is not None else rows["batch_size"].sum()
    tokens_den = response_tokens * n_epochs if response_tokens is not None else rows["response_tokens"].sum()
    return {
        "sample_fraction": float(rows["samples_kept"].sum()) / max(1, float(samples_den)),
        "token_fraction": float(rows["response_tokens_kept"].sum()) / max(1, float(tokens_den)),
        "micro_batches": int(len(rows)),
        "steps": int(rows["step"].nunique()),
    }


def effective_budget_table(runs: Iterable[RunArtifacts]) -> pd.DataFrame:
    """One row per run: effective sample and token fractions, FLOPs relative to
    full data, optimizer steps, and where the numbers came from."""
    rows = []
    for run in runs:
        s = run.summary
        if "effective_sample_fraction" in s:
            row = {"eff_sample_fraction": s["effective_sample_fraction"], "eff_token_fraction": s["effective_token_fraction"],
                   "flops_relative": s.get("flops_relative", math.nan), "optimizer_steps": s.get("optimizer_steps"),
                   "source": "train_summary"}
        else:
            eff = effective_budget_from_trace(run.trace, n_records=s.get("n_records"), epochs=s.get("epochs"))
            row = {"eff_sample_fraction": eff["sample_fraction"], "eff_token_fraction": eff["token_fraction"],
                   "flops_relative": math.nan, "optimizer_steps": eff["steps"], "source": "trace"}
        rows.append({"run_id": run.run_id, **row})
    return pd.DataFrame(rows, columns=["run_id", *EFFECTIVE_COLUMNS, "source"])


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
    frame["family"] = [method_family(m) for m in frame["method"]]
    frame["group"] = ["joint" if f in ("pair", "joint") else f for f in frame["family"]]
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


def format_mean_std(mean: float, std: float, fmt: str = ".2f", pm: str = " ± ") -> str:
    """``"45.00 ± 0.12"``; ``"45.00"`` when std is undefined (one seed); ``""`` for NaN."""
    if mean is None or pd.isna(mean):
        return ""
    text = format(float(mean), fmt)
    return text if std is None or pd.isna(std) else f"{text}{pm}{format(float(std), fmt)}"


def format_change(value: float) -> str:
    return "" if value is None or pd.isna(value) else f"{value:+.2f}"


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
                cells[_column_title(column)] = _bold(text, bool(r["best"]), style)
            out.append(cells)
        blocks.append((title, pd.DataFrame(out)))
    return blocks


def _column_title(column: str) -> str:
    return {"avg": "Avg", REL_CHANGE: "Δ vs full (%)"}.get(column, column)


def _bold(text: str, bold: bool, style: str) -> str:
    if not bold or not text:
        return text
    return {"markdown": f"**{text}**", "latex": rf"\textbf{{{text}}}", "html": f"<b>{html.escape(text)}</b>"}.get(style, text)


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
    pm = r" $\pm$ " if style == "latex" else " ± "
    rows = []
    for _, r in budget.iterrows():
        rows.append({
            "Model": r["model"], "Group": GROUP_LABEL[r["group"]], "Method": r["method"],
            "Budget": budget_label(r["budget"]), "Total": percent(r["total_budget"]), "Seeds": int(r["n_seeds"]),
            "Avg": format_mean_std(r["avg_mean"], r["avg_std"], pm=pm),
            "Samples %": _num(r["eff_samples_pct"]), "Tokens %": _num(r["eff_tokens_pct"]),
            "FLOPs %": _num(r["flops_pct"]), "Steps": _num(r["optimizer_steps"], ".0f"),
        })
    return pd.DataFrame(rows, columns=["Model", "Group", "Method", "Budget", "Total", "Seeds", "Avg", "Samples %",
                                       "Tokens %", "FLOPs %", "Steps"])


def _num(value: Any, fmt: str = ".1f") -> str:
    return "" if value is None or pd.isna(value) else format(float(value), fmt)


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
    return (str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            .replace("#", r"\#").replace("×", r"$\times$").replace("Δ", r"$\Delta$"))


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


def html_page(title: str, body: str, note: str | None = None) -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>\n' if note else ""
    return HTML_PAGE.format(title=html.escape(title), body=note_html + body)


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


# --------------------------------------------------------------------------- aggregate


def aggregate(eval_paths: Iterable[str | Path], tasks: list[dict[str, Any]], out_dir: str | Path, *,
              run_dirs: Iterable[str | Path] = (), world_meta: str | Path | None = None,
              plots_dir: str | Path | None = None, eu_epoch: int = -1) -> dict[str, pd.DataFrame]:
    """Write every table (:data:`TABLE_STEMS` x :data:`TABLE_FORMATS`) under
    ``out_dir`` and, with ``plots_dir``, every plot (:mod:`qtbench.report.plots`).

    ``run_dirs`` are checkpoint folders (effective budget, traces, per-sample
    decisions); ``world_meta`` the world's ``sft_meta.jsonl`` (noise recall,
    ground-truth markers); ``eu_epoch`` the epoch drawn on the EU plane (negative:
    counted from the last, -1 = the last epoch of the trace).
    Returns the tables by stem (``runs`` too: one row per run with its effective budget)."""
    from qtbench.report import noise

    out_dir = Path(out_dir)
    records = load_records(eval_paths)
    frame = long_table(records)
    names = [t["name"] for t in tasks]
    chosen = {t["name"]: t["metric"] for t in tasks if t.get("metric")}
    wide = comparison_table(frame, names, chosen)
    artifacts = load_runs(run_dirs)
    effective = effective_budget_table(artifacts)
    runs = runs_table(wide, effective)
    main = main_table(runs, names)
    budget = budget_table(runs)
    meta = noise.load_meta(world_meta) if world_meta else None
    recall = noise.noise_recall_table(artifacts, meta) if meta is not None else noise.empty_recall()
    quadrants = noise.quadrant_table(artifacts, meta) if meta is not None else noise.empty_quadrants()

    write_table(frame, out_dir / "long")
    display = runs.drop(columns=["r_s", "r_t", "total_budget", "family", "group"])
    write_table(display, out_dir / "comparison", bold_best=[*names, "avg"])
    write_main_table(main, names, out_dir / "main", MAIN_NOTE)
    write_budget_table(budget, out_dir / "budget", BUDGET_NOTE)
    noise.write_recall_table(recall, out_dir / "noise_recall", has_truth=meta is not None,
                             has_samples=any(a.samples is not None for a in artifacts))
    noise.write_quadrant_table(quadrants, out_dir / "noise_quadrants")
    reference = paper_reference_table()
    write_table(reference, out_dir / "paper_reference",
                note="The paper's reported numbers (OpenCompass, real models): a reference, not comparable in absolute terms.")
    tables = {"long": frame, "comparison": wide, "runs": runs, "main": main, "budget": budget,
              "noise_recall": recall, "noise_quadrants": quadrants, "paper_reference": reference}
    if plots_dir is not None:
        from qtbench.report import plots

        plots.plot_all(runs, artifacts, plots_dir, meta=meta, recall=recall, eu_epoch=eu_epoch)
    return tables


def log_results(tracker: Any, tables: Mapping[str, pd.DataFrame], plot_files: Iterable[str | Path] = ()) -> None:
    """Log the tables and plots to a W&B summary run (``qtbench.tracking.Tracker``):
    ``tables/<stem>`` as ``wandb.Table`` (the main table wide: one row per block
    and method, ``mean ± std`` cells), ``plots/<name>`` as images (PNG only), and
    per block and method the average score as a summary value
    ``avg/<model>/<total budget>/<method>/<budget>``."""
    for stem, frame in tables.items():
        if stem == "main" and not frame.empty:
            frame = main_wide(frame)
        if frame is not None and not frame.empty:
            tracker.log_table(f"tables/{stem}", frame)
    for path in plot_files:
        path = Path(path)
        if path.suffix == ".png" and path.exists():
            tracker.log_image(f"plots/{path.stem}", path)
    main = tables.get("main")
    if main is not None and not main.empty:
        avg = main[main["column"] == "avg"]
        tracker.summary({f"avg/{r.model}/{r.total_budget}/{r.method}/{r.budget or '-'}": float(r.mean)
                         for r in avg.itertuples() if not pd.isna(r.mean)})


def main_wide(main: pd.DataFrame) -> pd.DataFrame:
    """The tidy main table as one row per (block, method): ``<column>`` means and
    ``<column>_std`` stds (plain numbers, for W&B and notebooks)."""
    keys = ["model", "total_budget", "group", "method", "budget", "n_seeds"]
    columns = list(dict.fromkeys(main["column"]))
    rows = []
    for key, part in main.groupby(keys, sort=False, dropna=False):
        values = part.set_index("column")
        row = dict(zip(keys, key))
        row.update({c: float(values.loc[c, "mean"]) for c in columns})
        row.update({f"{c}_std": float(values.loc[c, "std"]) for c in columns if c != REL_CHANGE})
        rows.append(row)
    return pd.DataFrame(rows)
