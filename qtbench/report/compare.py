"""``qtbench compare``: paired differences between finished run groups, as a table to paste.

A *selector* names a run group of one experiment: ``method[@budget][:model]``,
e.g. ``q_tuning@s0.25-t0.5``, ``random+random@s0.25-t0.5:tiny``, ``full`` or
``base`` (the model before fine-tuning).  The budget is the run folder name
(``s<r_s>-t<r_t>``, :func:`qtbench.config.run_id`); it and the model may be
left out when the experiment has only one.  All seeds of a group are pooled.

Only finished records are read - ``<results>/<experiment>/evals/<model>/<method>/
<budget>/seed<N>.json`` (``evals/<model>/base.json`` for ``base``) and the
per-item file beside each (:mod:`qtbench.items`); nothing is trained or
evaluated.  The first selector is the reference: every other group's
difference is taken against it (``other - reference``), paired on the items,
with the bootstrap of :mod:`qtbench.report.intervals`.

Scores are each task's primary metric x 100 - the metric the config's
``eval.tasks[].metric`` names, else the tables' default
(:func:`qtbench.report.tables.primary_metric`) - and ``avg`` is their unweighted mean,
as in the tables.  The items' mean must reproduce the record's score; a metric
that is not a mean over items (or an items file from another evaluation) is
refused with the file named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qtbench.config import BUDGET_PATTERN, METHOD_PATTERN, MODEL_PATTERN
from qtbench.io import read_json
from qtbench.report.intervals import AVG, N_RESAMPLES, group_interval, paired_difference, resolvable_caption
from qtbench.report.intervals import resolvable_difference, significance_mark
from qtbench.items import record_item_scores

#: A selector: ``method[@budget][:model]``.
SELECTOR = re.compile(rf"(?P<method>{METHOD_PATTERN})(?:@(?P<budget>{BUDGET_PATTERN}))?(?::(?P<model>{MODEL_PATTERN}))?")

#: The zero-shot base model's "method" (``evals/<model>/base.json``).
BASE = "base"


_RUN_FILE = re.compile(rf"(?P<model>{MODEL_PATTERN})/(?P<method>{METHOD_PATTERN})/(?P<budget>{BUDGET_PATTERN})/"
                       r"seed(?P<seed>[0-9]+)\.json")
_BASE_FILE = re.compile(rf"(?P<model>{MODEL_PATTERN})/base\.json")


class SelectorError(ValueError):
    """A selector that is malformed, matches nothing or matches several groups; the message lists what exists."""


@dataclass(frozen=True)
class Selector:
    """A run group: method, and optionally budget (``s<r_s>-t<r_t>``) and model."""

    method: str
    budget: str | None = None
    model: str | None = None

    @property
    def text(self) -> str:
        return self.method + (f"@{self.budget}" if self.budget else "") + (f":{self.model}" if self.model else "")


@dataclass
class Group:
    """A resolved run group: its label, model, budget and the evaluation records of its seeds."""

    label: str
    model: str
    method: str
    budget: str | None
    records: dict[Any, Path]  # seed (None for base) -> evaluation record


@dataclass
class Comparison:
    """What :func:`compare` found: each group's interval and each difference against the reference."""

    groups: list[Group]
    tasks: list[str]
    metrics: dict[str, str]
    scores: list[pd.DataFrame]  # group_interval per group
    differences: list[pd.DataFrame]  # paired_difference(group, reference) per non-reference group
    resolvable: float
    n_resamples: int
    confidence: float
    notes: list[str] = field(default_factory=list)

    def tidy(self) -> pd.DataFrame:
        """One row per (group, task or ``avg``): mean and interval, and the difference vs the reference."""
        rows = []
        reference = self.groups[0]
        for index, (group, score) in enumerate(zip(self.groups, self.scores)):
            diff = self.differences[index - 1] if index else None
            for task, row in score.iterrows():
                out = {"selector": group.label, "model": group.model, "method": group.method, "budget": group.budget,
                       "task": task, "metric": self.metrics.get(task, ""), "n_seeds": int(row["n_seeds"]),
                       "n_items": int(row["n_items"]), "mean": row["mean"], "low": row["low"], "high": row["high"],
                       "reference": reference.label if index else None}
                if diff is not None:
                    d = diff.loc[task]
                    out.update({"delta": d["delta"], "delta_low": d["low"], "delta_high": d["high"],
                                "significant": bool(d["significant"])})
                else:
                    out.update({"delta": None, "delta_low": None, "delta_high": None, "significant": None})
                rows.append(out)
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        """The table a researcher pastes: per task and on average, each group's mean [CI] and each Δ [CI]."""
        reference = self.groups[0]
        header = ["task", "items"] + [f"{g.label} ({_seeds_text(g)})" for g in self.groups]
        header += [f"Δ {g.label} − {reference.label}" for g in self.groups[1:]]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for task in [*self.tasks, AVG]:
            name = "average" if task == AVG else f"{task} ({self.metrics[task]})"
            cells = [name, str(int(self.scores[0].loc[task, "n_items"]))]
            for score in self.scores:
                row = score.loc[task]
                cells.append(f"{row['mean']:.2f} [{row['low']:.2f}, {row['high']:.2f}]")
            for diff in self.differences:
                row = diff.loc[task]
                mark = significance_mark(row["significant"])
                cells.append(f"{_signed(row['delta'])} [{_signed(row['low'])}, {_signed(row['high'])}]"
                             + (f" {mark}" if mark else ""))
            lines.append("| " + " | ".join(cells) + " |")
        caption = ("Scores: each task's primary metric x 100, mean over seeds [interval]; Δ: paired difference "
                   "against the reference (first column) [interval]. "
                   + resolvable_caption(self.resolvable, self.n_resamples, self.confidence))
        return "\n".join(lines + ["", caption, *self.notes]) + "\n"


def parse_selector(text: str) -> Selector:
    """``method[@budget][:model]`` -> :class:`Selector`; a clear error otherwise."""
    match = SELECTOR.fullmatch(text.strip())
    if not match:
        raise SelectorError(f"invalid selector {text!r}; expected method[@s<r_s>-t<r_t>][:model], "
                            f"e.g. q_tuning@s0.25-t0.5 or full:tiny")
    if match["method"] == BASE and match["budget"]:
        raise SelectorError(f"selector {text!r}: the base model has no budget (use base or base:<model>)")
    return Selector(match["method"], match["budget"], match["model"])


def find_records(evals_dir: str | Path) -> pd.DataFrame:
    """Every finished evaluation record under ``evals_dir``: columns model, method, budget, seed, path."""
    evals_dir = Path(evals_dir)
    if not evals_dir.is_dir():
        raise FileNotFoundError(f"{evals_dir} does not exist: no finished evaluations (check --results-dir and "
                                f"--experiment)")
    rows = []
    for path in sorted(evals_dir.rglob("*.json")):
        relative = path.relative_to(evals_dir).as_posix()
        if match := _RUN_FILE.fullmatch(relative):
            rows.append({"model": match["model"], "method": match["method"], "budget": match["budget"],
                         "seed": int(match["seed"]), "path": path})
        elif match := _BASE_FILE.fullmatch(relative):
            rows.append({"model": match["model"], "method": BASE, "budget": None, "seed": None, "path": path})
    return pd.DataFrame(rows, columns=["model", "method", "budget", "seed", "path"], dtype=object)  # seeds stay int


def available(records: pd.DataFrame) -> str:
    """The groups that exist, as selectors with their seed counts (for error messages)."""
    if records.empty:
        return "none"
    parts = []
    for (model, method, budget), rows in records.groupby(["model", "method", "budget"], dropna=False, sort=True):
        text = Selector(method, None if pd.isna(budget) else budget, model).text
        parts.append(text if method == BASE else f"{text} ({len(rows)} seed{'s' if len(rows) > 1 else ''})")
    return ", ".join(parts)


def resolve(selector: Selector, records: pd.DataFrame, where: str | Path = "") -> Group:
    """The one run group ``selector`` names among ``records`` (:func:`find_records`)."""
    mine = records[records["method"] == selector.method]
    if selector.budget is not None:
        mine = mine[mine["budget"] == selector.budget]
    if selector.model is not None:
        mine = mine[mine["model"] == selector.model]
    if mine.empty:
        raise SelectorError(f"no finished evaluation matches {selector.text!r} in {where}; available: "
                            f"{available(records)}")
    keys = mine[["model", "budget"]].drop_duplicates()
    if len(keys) > 1:
        options = available(mine)
        raise SelectorError(f"selector {selector.text!r} is ambiguous in {where} (add @budget and/or :model); "
                            f"it matches {options}")
    model, budget = keys.iloc[0]["model"], keys.iloc[0]["budget"]
    budget = None if pd.isna(budget) else budget
    return Group(label=selector.text, model=model, method=selector.method, budget=budget,
                 records={row["seed"]: Path(row["path"]) for _, row in mine.sort_values("seed").iterrows()})


def task_metrics(record: Mapping[str, Any], path: str | Path, tasks: Sequence[str] | None = None) -> dict[str, str]:
    """Task -> metric key for a record: the config's ``eval.tasks[].metric`` when set, else the primary metric.

    Tasks in the order of the record's ``eval_config.tasks`` (else its scores), or ``tasks``."""
    from qtbench.report.tables import primary_metric

    configured = [t for t in (record.get("eval_config") or {}).get("tasks", []) if isinstance(t, Mapping)]
    chosen = {t["name"]: t["metric"] for t in configured if t.get("metric")}
    scores = record.get("scores")
    if not isinstance(scores, Mapping):
        raise ValueError(f"{path}: no 'scores' in the evaluation record")
    names = list(tasks) if tasks else ([t["name"] for t in configured if "name" in t] or sorted(scores))
    frame = pd.DataFrame([(task, metric) for task, ms in scores.items() for metric in ms], columns=["task", "metric"])
    out = {}
    for task in names:
        if task not in scores:
            raise ValueError(f"{path}: task {task!r} not in the record's scores ({sorted(scores)})")
        try:
            out[task] = primary_metric(frame, task, chosen)
        except KeyError as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from None
    return out


def item_scores(records: Mapping[Any, str | Path], metrics: Mapping[str, str], label: str = "") -> dict[str, pd.DataFrame]:
    """Per task, a (seeds x doc ids) frame in points, the input of :mod:`qtbench.report.intervals`.

    ``records`` maps each seed of one run group to its evaluation record;
    ``metrics`` maps each task to its metric key (:func:`task_metrics`).  The
    seeds must have been scored on the same items."""
    per_seed = {seed: record_item_scores(path, metrics) for seed, path in records.items()}
    out = {}
    for task in metrics:
        frame = pd.DataFrame({seed: items[task] for seed, items in per_seed.items()}).T
        if frame.isna().any().any():
            counts = {str(records[seed]): len(items[task]) for seed, items in per_seed.items()}
            raise ValueError(f"{label or 'run group'}: the seeds' records were not scored on the same items of task "
                             f"{task!r} (items per record: {counts})")
        out[task] = frame
    return out


def load_group(group: Group, metrics: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """:func:`item_scores` of a resolved group."""
    return item_scores(group.records, metrics, group.label)


def compare(results_dir: str | Path, experiment: str, selectors: Sequence[str], *, tasks: Sequence[str] | None = None,
            n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = 0.95, pair_seeds: bool = False,
            method: str = "percentile") -> Comparison:
    """Mean and interval of each selected group, and each group's paired difference against the first.

    Reads ``<results_dir>/<experiment>/evals``; the tasks and metrics are the
    reference group's (first record), or ``tasks``."""
    if len(selectors) < 2:
        raise SelectorError("compare needs at least two selectors (the first is the reference)")
    evals_dir = Path(results_dir) / experiment / "evals"
    records = find_records(evals_dir)
    parsed = [parse_selector(text) for text in selectors]
    groups = [resolve(selector, records, evals_dir) for selector in parsed]
    labels = [g.label for g in groups]
    if len(set(labels)) != len(labels):
        raise SelectorError(f"a selector is given twice: {labels}")
    first = next(iter(groups[0].records.values()))
    metrics = task_metrics(read_json(first), first, tasks)
    scores = [load_group(group, metrics) for group in groups]
    options = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence, "method": method}
    intervals = [group_interval(s, **options) for s in scores]
    differences = [paired_difference(s, scores[0], pair_seeds=pair_seeds, **options) for s in scores[1:]]
    notes = [f"Records: {evals_dir} ({seed_list(groups)})."]
    if any(len(g.records) == 1 for g in groups):
        single = [g.label for g in groups if len(g.records) == 1]
        notes.append(f"One seed for {', '.join(single)}: those intervals cover test-item noise only, not training noise.")
    return Comparison(groups=groups, tasks=list(metrics), metrics=dict(metrics), scores=intervals,
                      differences=differences, resolvable=resolvable_difference(differences), n_resamples=n_resamples,
                      confidence=confidence, notes=notes)


def _signed(value: float) -> str:
    """``+1.25`` / ``-1.25``; a value that rounds to zero prints ``+0.00``, never ``-0.00``."""
    return f"{round(float(value), 2) + 0.0:+.2f}"


def _seeds_text(group: Group) -> str:
    if group.method == BASE:
        return "zero-shot"
    n = len(group.records)
    return f"{n} seed{'s' if n > 1 else ''}"


def seed_list(groups: Iterable[Group]) -> str:
    """``label: seeds 0, 1, 2`` per group (for a caption)."""
    return "; ".join(f"{g.label}: base model" if g.method == BASE else
                     f"{g.label}: seed{'s' if len(g.records) > 1 else ''} {', '.join(str(s) for s in g.records)}"
                     for g in groups)
