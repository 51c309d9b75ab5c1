"""The aggregate step: every table and plot of an experiment, and its W&B summary run.

Inputs are the files the rules write: one lm-eval record per checkpoint
(``qtbench.evaluate``; ``evals/...json``) and, per run, its checkpoint folder
(``train_summary.json`` and ``trace.jsonl``, whose rows carry the per-sample
decisions; :mod:`qtbench.report.runs`).  Outputs, under
``results/<experiment>/tables/``, each as ``.csv`` (tidy), ``.md``, ``.tex``
(booktabs) and ``.html`` (for the Snakemake report):

* ``long``        one row per (run, task, metric): value and stderr - the raw data;
* ``comparison``  one row per run group (and base model): each task's primary
  metric in percent and their average ``avg`` with intervals, the paired
  differences vs full data and vs random+random, the effective budget;
* ``main``        the paper's main table: one block per model x total budget, rows
  grouped (zero-shot, full data, sample-level, token-level, sample + token,
  controls), columns the nominal and effective budgets, the tasks and ``avg``
  (mean over seeds [95% interval]) and the paired differences;
* ``budget``      each method x budget: average score with its interval, the paired
  differences and the effective budget (samples and response tokens that carried
  loss, training FLOPs vs full data), flagged where it strays from the nominal one;
* ``noise_recall``, ``noise_quadrants`` (:mod:`qtbench.report.noise`) when the world's
  ground truth is given;
* ``paper_reference`` the paper's reported numbers, kept beside ours.

and, under ``results/<experiment>/plots/``, :mod:`qtbench.report.plots`.  The
definitions behind the numbers are in :mod:`qtbench.report.tables`.

Every evaluation record needs its per-item file (``<record>.items.jsonl``,
:mod:`qtbench.items`): the intervals and paired differences are computed
from the items.  A record without one stops the step with an error that names
the file and the command that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from qtbench.report import noise, plots
from qtbench.report.intervals import N_RESAMPLES
from qtbench.report.render import TABLE_FORMATS, write_table
from qtbench.report.runs import effective_budget_table, load_eval_records, load_runs
from qtbench.report.tables import (
    COMPARISONS,
    EFFECTIVE_PCT,
    REL_CHANGE,
    budget_table,
    comparison_table,
    group_table,
    intervals_table,
    long_table,
    main_table,
    paper_reference_table,
    resolvable,
    runs_table,
    table_note,
    task_metrics,
    write_budget_table,
    write_comparison_table,
    write_main_table,
)

#: Every table :func:`aggregate` writes (each in :data:`~qtbench.report.render.TABLE_FORMATS`).
TABLE_STEMS = ("main", "budget", "comparison", "long", "noise_recall", "noise_quadrants", "paper_reference")


def table_files() -> list[str]:
    """File names (relative to the tables folder) that :func:`aggregate` writes."""
    return [f"{stem}.{ext}" for stem in TABLE_STEMS for ext in TABLE_FORMATS]


def aggregate(eval_paths: Iterable[str | Path], tasks: list[dict[str, Any]], out_dir: str | Path, *,
              run_dirs: Iterable[str | Path] = (), world_meta: str | Path | None = None,
              plots_dir: str | Path | None = None, eu_epoch: int = -1, variants: Mapping[str, Any] | None = None,
              method_options: Mapping[str, Any] | None = None, n_resamples: int = N_RESAMPLES,
              bootstrap_seed: int = 0) -> dict[str, pd.DataFrame]:
    """Write every table (:data:`TABLE_STEMS` x :data:`TABLE_FORMATS`) under
    ``out_dir`` and, with ``plots_dir``, every plot (:mod:`qtbench.report.plots`).

    ``variants`` and ``method_options`` are the config's sections of those names:
    they resolve variants to their base methods and fill the tables' options
    column (the options that differ, which InfoBatch form).  ``n_resamples`` and
    ``bootstrap_seed`` fix the bootstrap of every interval (config
    ``report.bootstrap_resamples``), so a rerun writes the same tables.

    ``run_dirs`` are checkpoint folders (effective budget, traces, per-sample
    decisions); ``world_meta`` the world's ``sft_meta.jsonl`` (noise recall,
    ground-truth markers); ``eu_epoch`` the epoch drawn on the EU plane (negative:
    counted from the last, -1 = the last epoch of the trace).
    Returns the tables by stem (``runs`` too: one row per run with its effective
    budget; ``intervals``: every interval, one row per run group and task)."""
    out_dir = Path(out_dir)
    eval_paths = [Path(p) for p in eval_paths]
    records = load_eval_records(eval_paths)
    record_paths = _record_paths(records, eval_paths)
    frame = long_table(records)
    names = [t["name"] for t in tasks]
    chosen = {t["name"]: t["metric"] for t in tasks if t.get("metric")}
    wide = comparison_table(frame, names, chosen)
    artifacts = load_runs(run_dirs)
    effective = effective_budget_table(artifacts)
    runs = runs_table(wide, effective, variants=variants, method_options=method_options)
    intervals = intervals_table(runs, record_paths, task_metrics(frame, names, chosen), n_resamples=n_resamples,
                                seed=bootstrap_seed)
    main = main_table(runs, names, intervals)
    budget = budget_table(runs, intervals)
    groups = group_table(runs, names, intervals)
    note = {kind: table_note(kind, resolvable(intervals), n_resamples) for kind in ("main", "budget", "comparison")}
    meta = noise.load_meta(world_meta) if world_meta else None
    recall = noise.noise_recall_table(artifacts, meta, variants) if meta is not None else noise.empty_recall()
    quadrants = noise.quadrant_table(artifacts, meta, variants) if meta is not None else noise.empty_quadrants()

    write_table(frame, out_dir / "long")
    write_comparison_table(groups, names, out_dir / "comparison", note["comparison"])
    write_main_table(main, names, out_dir / "main", note["main"])
    write_budget_table(budget, out_dir / "budget", note["budget"])
    noise.write_recall_table(recall, out_dir / "noise_recall", has_truth=meta is not None,
                             has_samples=any(a.samples is not None for a in artifacts))
    noise.write_quadrant_table(quadrants, out_dir / "noise_quadrants")
    reference = paper_reference_table()
    write_table(reference, out_dir / "paper_reference",
                note="The paper's reported numbers (OpenCompass, real models): its main and reasoning tables "
                     "(source main) and its ablations' averages (source ablation; method = the variant in "
                     "config/paper_ablations.yaml that reproduces the row). A reference, not comparable in "
                     "absolute terms.")
    tables = {"long": frame, "comparison": groups, "runs": runs, "intervals": intervals, "main": main, "budget": budget,
              "noise_recall": recall, "noise_quadrants": quadrants, "paper_reference": reference}
    if plots_dir is not None:
        plots.plot_all(runs, artifacts, plots_dir, meta=meta, recall=recall, eu_epoch=eu_epoch)
    return tables


def _record_paths(records: list[Mapping[str, Any]], paths: list[Path]) -> dict[str, Path]:
    """Run id -> its evaluation record's path (a run id given twice is an error naming both files)."""
    out: dict[str, Path] = {}
    for record, path in zip(records, paths):
        run_id = (record.get("meta") or {}).get("run_id")
        if run_id is None:
            raise ValueError(f"{path}: the evaluation record has no meta.run_id")
        if run_id in out:
            raise ValueError(f"run {run_id!r} has two evaluation records: {out[run_id]} and {path}")
        out[str(run_id)] = path
    return out


def log_results(tracker: Any, tables: Mapping[str, pd.DataFrame], plot_files: Iterable[str | Path] = ()) -> None:
    """Log the tables and plots to a W&B summary run (``qtbench.tracking.Tracker``):
    ``tables/<stem>`` as ``wandb.Table`` (the main table wide, :func:`main_wide`:
    one row per block and method with the means, intervals, paired differences
    and effective budgets; the budget and comparison tables carry the same
    columns), ``plots/<name>`` as images (PNG only), and per block and method the
    average score as a summary value ``avg/<model>/<total budget>/<method>/<budget>``."""
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
    """The tidy main table as one row per (block, method), plain numbers for W&B
    and notebooks: ``<column>`` means, ``<column>_std`` stds and
    ``<column>_low`` / ``<column>_high`` intervals (tasks and ``avg``), the paired
    differences of ``avg`` (``delta_<name>``, ``_low``, ``_high``,
    ``_significant``), the options and the effective budget with its flag."""
    keys = ["model", "total_budget", "group", "method", "options", "budget", "n_seeds"]
    columns = list(dict.fromkeys(main["column"]))
    rows = []
    for key, part in main.groupby(keys, sort=False, dropna=False):
        values = part.set_index("column")
        row = dict(zip(keys, key))
        row.update({c: float(values.loc[c, "mean"]) for c in columns})
        for c in columns:
            if c == REL_CHANGE:
                continue
            row[f"{c}_std"] = float(values.loc[c, "std"])
            row[f"{c}_low"] = float(values.loc[c, "low"])
            row[f"{c}_high"] = float(values.loc[c, "high"])
        if "avg" in values.index:
            avg = values.loc["avg"]
            for name in COMPARISONS:
                for suffix in ("", "_low", "_high"):
                    row[f"delta_{name}{suffix}"] = float(avg[f"delta_{name}{suffix}"])
                flag = avg[f"delta_{name}_significant"]
                row[f"delta_{name}_significant"] = None if flag is None or pd.isna(flag) else bool(flag)
            for c in EFFECTIVE_PCT:
                row[c] = bool(avg[c]) if c == "budget_flag" else float(avg[c])
        rows.append(row)
    return pd.DataFrame(rows)
