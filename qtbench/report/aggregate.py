"""The aggregate step: every table and plot of an experiment, and its W&B summary run.

Inputs are the files the rules write: one lm-eval record per checkpoint
(``qtbench.evaluate``; ``evals/...json``) and, per run, its checkpoint folder
(``train_summary.json`` and ``trace.jsonl``, whose rows carry the per-sample
decisions; :mod:`qtbench.report.runs`).  Outputs, under
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

and, under ``results/<experiment>/plots/``, :mod:`qtbench.report.plots`.  The
definitions behind the numbers are in :mod:`qtbench.report.tables`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from qtbench.report import noise, plots
from qtbench.report.render import TABLE_FORMATS, write_table
from qtbench.report.runs import effective_budget_table, load_eval_records, load_runs
from qtbench.report.tables import (
    BUDGET_NOTE,
    MAIN_NOTE,
    REL_CHANGE,
    budget_table,
    comparison_table,
    long_table,
    main_table,
    paper_reference_table,
    runs_table,
    write_budget_table,
    write_main_table,
)

#: Every table :func:`aggregate` writes (each in :data:`~qtbench.report.render.TABLE_FORMATS`).
TABLE_STEMS = ("main", "budget", "comparison", "long", "noise_recall", "noise_quadrants", "paper_reference")


def table_files() -> list[str]:
    """File names (relative to the tables folder) that :func:`aggregate` writes."""
    return [f"{stem}.{ext}" for stem in TABLE_STEMS for ext in TABLE_FORMATS]


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
    out_dir = Path(out_dir)
    records = load_eval_records(eval_paths)
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
